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
import inspect
import threading
from collections.abc import Iterable
from typing import Any

import solutions
from exercises.i18n import tr, translate_made
from exercises.op_guard import OPERATOR_ROUTE, SCALARS_READ, TAMPER_NAMES, TAMPER_REASONS, TAMPERED, family_of


def guarded(forbidden: tuple[str, ...], max_numel: int | None, span: dict[str, Any] | None = None
            ) -> dict[str, Any] | None:
    """What the worker is asked to watch in one call: None (no rule: the monitor stays off) or its settings
    (``span``: the tiled algorithm's rule, ``span_rule``)."""
    if not forbidden and max_numel is None and span is None:
        return None
    return {"max_numel": max_numel, "span": span}


# --- the tiled algorithm's rule (lessons 9-10): its sizes, read from a case ------------------------------------
BLOCK_NAMES = {"block_q": "block_q", "block_k": "block_k", "block_size": "block_k"}


def _target_signature(fn: str, program: list[dict[str, Any]]) -> inspect.Signature | None:
    """The reference's signature for a program's call of ``fn`` (``FlashAttentionFunction.apply`` -> its forward
    without ``ctx``); None when the reference has no such function."""
    target = getattr(solutions, fn, None)
    if target is None:  # a name an earlier step fetched: ``apply = FlashAttentionFunction.apply``
        source = next((s for s in program if s.get("op") == "attr" and s.get("out") == fn), None)
        owner = getattr(solutions, source["obj"], None) if source else None
        forward = getattr(owner, "forward", None) if source and source.get("name") == "apply" else None
        if forward is None:
            return None
        parameters = list(inspect.signature(forward).parameters.values())[1:]  # apply(*args) is forward(ctx, *args)
        return inspect.Signature(parameters)
    try:
        return inspect.signature(target)
    except (TypeError, ValueError):
        return None


def span_rule(case: Any) -> dict[str, Any] | None:
    """The sizes of the tiled algorithm's rule (``op_guard.spans_keys``) for a case that calls a function with block
    sizes (``block_q``/``block_k``, or ``block_size`` for both) on inputs ``q``, ``k``, ``v``; else None."""
    if not all(key in case.inputs for key in "qkv"):
        return None
    q, k, v = (case.inputs[key] for key in "qkv")
    for step in case.program:
        if step.get("op") != "call":
            continue
        signature = _target_signature(step["fn"], case.program)
        if signature is None or not any(name in signature.parameters for name in BLOCK_NAMES):
            continue
        args = [a.get("lit") if "lit" in a else a for a in step.get("args", [])]
        kwargs = {key: a.get("lit") if "lit" in a else a for key, a in step.get("kwargs", {}).items()}
        try:
            bound = signature.bind(*args, **kwargs)
        except TypeError:
            continue
        bound.apply_defaults()
        blocks = {BLOCK_NAMES[name]: value for name, value in bound.arguments.items() if name in BLOCK_NAMES}
        if not all(isinstance(value, int) for value in blocks.values()):
            continue
        block_k = blocks.get("block_k")
        if block_k is None:
            continue
        return {"n_q": int(q.shape[-2]), "n_k": int(k.shape[-2]), "block_q": blocks.get("block_q", block_k),
                "block_k": block_k, "features": sorted({int(q.shape[-1]), int(v.shape[-1])})}
    return None


def case_guard(item: Any, case: Any) -> dict[str, Any] | None:
    """The monitor's settings for one call of ``case`` of ``item`` (both graders use this)."""
    return guarded(item.forbidden, case.max_numel, span_rule(case) if item.forbidden else None)


def forbidden_message(item_name: str, forbidden: tuple[str, ...], static: set[str], used: dict[str, str],
                      tampered: str | None = None) -> str | None:
    """The message for an item that broke its rule: a forbidden family seen at run time (``used``: family ->
    the route it was reached by) or named in the answer cell (``static``), or the monitor switched off (``tampered``:
    why, as the monitor said it in English in the worker, ``op_guard.TAMPER_REASONS``, or already translated)."""
    if tampered:
        return tr("`{item}` broke the grading rules: {tampered} ({why}); its points for this part are withheld").format(
            item=item_name, tampered=tr(TAMPERED), why=translate_made(tampered, TAMPER_REASONS))
    runtime = {family: route for family, route in used.items() if family in forbidden}
    hit_static = sorted(static & set(forbidden))
    if not runtime and not hit_static:
        return None
    if runtime:
        reached = tr("{family} (reached through {route})")
        what = ", ".join(reached.format(family=family, route=translate_made(route, (OPERATOR_ROUTE,)))
                         for family, route in sorted(runtime.items()))
    else:
        what = ", ".join(hit_static)
    return tr("`{item}` may not use the built-in {what}: this exercise is about building that mechanism yourself "
              "(detected {when})").format(item=item_name, what=what,
                                          when=tr("while running") if runtime else tr("in the answer cell"))


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
    tampered = wide = exported = None
    for report in reports:
        if report is None:
            continue
        for family, route in report["used"].items():
            used.setdefault(family, route)
        tampered = tampered or report["tampered"]
        wide = wide or report.get("wide")
        exported = exported or report.get("exported")
    switches = _names(answer) & TAMPER_NAMES
    if switches and not tampered:
        tampered = tr("the answer cell names {names}").format(names=", ".join(sorted(switches)))
    found = forbidden_message(item_name, forbidden, static_forbidden_calls(answer), used, tampered)
    return found or not_tiled_message(item_name, wide, exported)


def not_tiled_message(item_name: str, wide: dict[str, Any] | None, exported: str | None) -> str | None:
    """The message for a call that is not the tiled algorithm: a tensor over more keys than a block per query row
    (``op_guard.spans_keys``), or the data taken out of torch (NumPy, Python lists, numbers one by one: the monitor's
    ``op_guard.SCALARS_READ``, in English, translated here; ``Tensor.numpy`` and its kind are code, shown as is)."""
    if wide:
        shape = "(" + ", ".join(str(s) for s in wide["shape"]) + ")"
        return tr("`{item}` built a tensor of shape {shape} (in {op}) that holds more keys for a query row than one "
                  "key block: this exercise is the tiled algorithm, where every query row meets the keys block by "
                  "block (an exact softmax over a whole row, one query at a time, is not it); its points for this "
                  "part are withheld").format(item=item_name, shape=shape, op=wide["op"])
    if exported:
        return tr("`{item}` took the tensors' data out of torch ({exported}): this exercise computes in torch "
                  "tensors, block by block (NumPy arrays or Python lists are not the tiled algorithm); its points "
                  "for this part are withheld").format(item=item_name,
                                                       exported=translate_made(exported, (SCALARS_READ,)))
    return None


def too_big(item_name: str, report: dict[str, Any] | None, max_numel: int | None) -> str | None:
    """The failure of one case whose call created a tensor larger than its ``max_numel``, else None."""
    if max_numel is None or not report or not report.get("too_big"):
        return None
    found = report["too_big"]  # the message of op_guard.too_big_message, in the current language
    shape = "(" + ", ".join(str(s) for s in found["shape"]) + ")"
    return tr("`{item}` created a tensor of shape {shape} ({numel} elements, more than the {max_numel} this case "
              "allows, in {op}): this lesson's functions must never build the full (n_q, n_k) score matrix; work "
              "block by block").format(item=item_name, shape=shape, numel=found["numel"], max_numel=max_numel,
                                       op=found["op"])


# CPython 3.11's ast.parse is not safe to call from two threads at once ("AST constructor recursion
# depth mismatch"); notebooks are prepared in parallel threads.
_AST_LOCK = threading.Lock()


def parse(code: str) -> ast.Module:
    """``ast.parse`` under a lock (see above)."""
    with _AST_LOCK:
        return ast.parse(code)


def _names(code: str) -> set[str]:
    """Every attribute, name and imported name in ``code`` (nothing for a syntax error: reported elsewhere)."""
    tree = _tree(code)
    found: set[str] = set()
    for node in ast.walk(tree) if tree is not None else ():
        if isinstance(node, ast.Attribute):
            found.add(node.attr)
        elif isinstance(node, ast.Name):
            found.add(node.id)
        elif isinstance(node, ast.alias):
            found.add(node.name.rsplit(".", 1)[-1])
    return found


def _tree(code: str) -> ast.Module | None:
    try:
        return parse(code)
    except SyntaxError:
        return None


def _builtin_names(code: str) -> set[str]:
    """Names in ``code`` that can be torch's: attributes read (``torch.softmax``, ``x.softmax``, ``nn.Softmax``)
    that the cell does not define itself (``self.softmax = ...``, a method ``softmax``), and names imported from
    torch. A bare name (``softmax(x)``, ``_flash_attention_forward.apply``) is the student's own, or imported:
    the import is what names torch's."""
    tree = _tree(code)
    if tree is None:
        return set()
    own_attributes = {node.attr for node in ast.walk(tree)
                      if isinstance(node, ast.Attribute) and isinstance(node.ctx, (ast.Store, ast.Del))}
    own_attributes |= {item.name for node in ast.walk(tree) if isinstance(node, ast.ClassDef) for item in node.body
                       if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef))}  # methods
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load) and node.attr not in own_attributes:
            found.add(node.attr)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "torch":
            found |= {alias.name for alias in node.names}
    return found


def _families(names: set[str]) -> set[str]:
    return {family for name in names if (family := family_of(name)) is not None}


def static_forbidden_calls(code: str) -> set[str]:
    """Families of the built-ins the code names (``torch.softmax``, ``x.softmax``, ``F.scaled_dot_product_attention``,
    ``nn.MultiheadAttention``, ``from torch.nn.functional import softmax``): the monitor's own table
    (``op_guard.family_of``) read on the syntax tree, for names that can be torch's (``_builtin_names``)."""
    return _families(_builtin_names(code))


def static_tampering(code: str) -> set[str]:
    """Names of torch's switches for the operation monitor that the code names (``DisableTorchFunction``, ...)."""
    return _names(code) & TAMPER_NAMES
