"""The no-shortcut rules: which built-ins an item may not use, what a call may not build, what to tell the student.

One mechanism enforces them, ``exercises/op_guard.py`` (the operation monitor): it watches every
graded call of an item that has a rule, at torch's Python API and at the operator level, and maps what
it sees to families (``softmax``, ``scaled_dot_product_attention``, ``MultiheadAttention``) with one
table. The worker runs it (a copy of that file) around each call of such an item, and
``exercises.kernel.check`` runs it in the student's kernel. This module turns its findings into
messages, and reads the answer cell's syntax tree as a second line (``static_forbidden_calls``:
code paths that no case runs; ``static_tampering``: names of torch's switches for the monitor).
"""

from __future__ import annotations

import ast
import threading
from collections.abc import Iterable
from typing import Any

from exercises.op_guard import TAMPER_NAMES, TAMPERED, family_of, too_big_message


def guarded(forbidden: tuple[str, ...], max_numel: int | None) -> dict[str, Any] | None:
    """What the worker is asked to watch in one call: None (no rule: the monitor stays off) or its settings."""
    if not forbidden and max_numel is None:
        return None
    return {"max_numel": max_numel}


def forbidden_message(item_name: str, forbidden: tuple[str, ...], static: set[str], used: dict[str, str],
                      tampered: str | None = None) -> str | None:
    """The message for an item that broke its rule: a forbidden family seen at run time (``used``: family ->
    the route it was reached by) or named in the answer cell (``static``), or the monitor switched off."""
    if tampered:
        return (f"`{item_name}` broke the grading rules: {TAMPERED} ({tampered}); its points for this part are "
                f"withheld")
    runtime = {family: route for family, route in used.items() if family in forbidden}
    hit_static = sorted(static & set(forbidden))
    if not runtime and not hit_static:
        return None
    if runtime:
        what = ", ".join(f"{family} (reached through {route})" for family, route in sorted(runtime.items()))
    else:
        what = ", ".join(hit_static)
    return (f"`{item_name}` may not use the built-in {what}: this exercise is about building that mechanism "
            f"yourself (detected {'while running' if runtime else 'in the answer cell'})")


def shortcut_message(item_name: str, forbidden: tuple[str, ...], cases: Iterable[Any],
                     reports: Iterable[dict[str, Any] | None], answer: str) -> str | None:
    """The verdict on an item's rule, the same for both graders (the worker's calls, ``exercises.kernel.check``).

    ``cases``: the item's cases that ran (a ``max_numel`` on one of them is a rule too); ``reports``: the operation
    monitor's report of each call (None where it did not watch); ``answer``: the answer cell's text, read as the
    second line (forbidden families it names, switches of the monitor it names). None when the rule held.
    """
    if not forbidden and all(case.max_numel is None for case in cases):
        return None
    used: dict[str, str] = {}
    tampered = None
    for report in reports:
        if report is None:
            continue
        for family, route in report["used"].items():
            used.setdefault(family, route)
        tampered = tampered or report["tampered"]
    names = _names(answer)
    switches = names & TAMPER_NAMES
    if switches and not tampered:
        tampered = f"the answer cell names {', '.join(sorted(switches))}"
    return forbidden_message(item_name, forbidden, _families(names), used, tampered)


def too_big(item_name: str, report: dict[str, Any] | None, max_numel: int | None) -> str | None:
    """The failure of one case whose call created a tensor larger than its ``max_numel``, else None."""
    if max_numel is None or not report or not report.get("too_big"):
        return None
    return too_big_message(item_name, report["too_big"], max_numel)


# CPython 3.11's ast.parse is not safe to call from two threads at once ("AST constructor recursion
# depth mismatch"); notebooks are prepared in parallel threads.
_AST_LOCK = threading.Lock()


def parse(code: str) -> ast.Module:
    """``ast.parse`` under a lock (see above)."""
    with _AST_LOCK:
        return ast.parse(code)


def _names(code: str) -> set[str]:
    """Every attribute, name and imported name in ``code`` (nothing for a syntax error: reported elsewhere)."""
    try:
        tree = parse(code)
    except SyntaxError:
        return set()
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            found.add(node.attr)
        elif isinstance(node, ast.Name):
            found.add(node.id)
        elif isinstance(node, ast.alias):
            found.add(node.name.rsplit(".", 1)[-1])
    return found


def _families(names: set[str]) -> set[str]:
    return {family for name in names if (family := family_of(name)) is not None}


def static_forbidden_calls(code: str) -> set[str]:
    """Families of the built-ins the code names (``torch.softmax``, ``x.softmax``, ``F.scaled_dot_product_attention``,
    ``nn.MultiheadAttention``): the monitor's own table (``op_guard.family_of``) read on the syntax tree."""
    return _families(_names(code))


def static_tampering(code: str) -> set[str]:
    """Names of torch's switches for the operation monitor that the code names (``DisableTorchFunction``, ...)."""
    return _names(code) & TAMPER_NAMES
