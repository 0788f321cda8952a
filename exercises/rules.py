"""Built-ins an item may not call: where they live, how to record calls to them, what to tell the student.

One definition for the three places that enforce the rule: the worker records calls at run time
(it receives ``RECORDED`` in its plan: it cannot import this package), the grader reads the answer
cell's syntax tree (``static_forbidden_calls``), and ``exercises.kernel.check``
records calls inside the student's kernel.
"""

from __future__ import annotations

import ast
import contextlib
import threading
from collections.abc import Iterator

from exercises.program import resolve_owner

# (owner, attribute, name reported): the owner is a dotted path to a module or class.
RECORDED: tuple[tuple[str, str, str], ...] = (
    ("torch", "softmax", "torch.softmax"),
    ("torch", "log_softmax", "torch.log_softmax"),
    ("torch.nn.functional", "softmax", "torch.nn.functional.softmax"),
    ("torch.nn.functional", "log_softmax", "torch.nn.functional.log_softmax"),
    ("torch.special", "softmax", "torch.special.softmax"),
    ("torch.Tensor", "softmax", "torch.Tensor.softmax"),
    ("torch.Tensor", "log_softmax", "torch.Tensor.log_softmax"),
    ("torch.nn.functional", "scaled_dot_product_attention", "torch.nn.functional.scaled_dot_product_attention"),
    ("torch.nn.functional", "multi_head_attention_forward", "torch.nn.functional.multi_head_attention_forward"),
    ("torch.nn.MultiheadAttention", "forward", "torch.nn.MultiheadAttention"),
)

# The family names that ``static_forbidden_calls`` reports for an attribute or name in the code.
FAMILY = {"softmax": "softmax", "log_softmax": "softmax",
          "scaled_dot_product_attention": "scaled_dot_product_attention",
          "MultiheadAttention": "MultiheadAttention", "multi_head_attention_forward": "MultiheadAttention"}


@contextlib.contextmanager
def recording(used: set[str]) -> Iterator[set[str]]:
    """Within the block, calls to the built-ins of ``RECORDED`` add their names to ``used``."""
    originals = []
    for owner_path, attr, name in RECORDED:
        owner = resolve_owner(owner_path)
        original = getattr(owner, attr, None)
        if original is None:
            continue
        own = attr in vars(owner)  # Tensor.softmax is inherited from TensorBase: restore by deleting

        def wrapper(*args, __original=original, __name=name, **kwargs):
            used.add(__name)
            return __original(*args, **kwargs)

        setattr(owner, attr, wrapper)
        originals.append((owner, attr, original if own else None))
    try:
        yield used
    finally:
        for owner, attr, original in reversed(originals):
            if original is None:
                delattr(owner, attr)
            else:
                setattr(owner, attr, original)


def forbidden_message(item_name: str, forbidden: tuple[str, ...], static: set[str], used: set[str]) -> str | None:
    """The message for an item that used a built-in it may not call, found statically or at run time."""
    families = {FAMILY[name.rsplit(".", 1)[-1]] for name in forbidden if name.rsplit(".", 1)[-1] in FAMILY}
    hit_static = sorted(static & families)
    hit_runtime = sorted(u for u in used if u in forbidden)
    if not hit_static and not hit_runtime:
        return None
    what = ", ".join(hit_runtime or hit_static)
    return (f"`{item_name}` may not use {what}: this exercise is about building that mechanism yourself "
            f"(detected {'while running' if hit_runtime else 'in the answer cell'})")


# CPython 3.11's ast.parse is not safe to call from two threads at once ("AST constructor recursion
# depth mismatch"); notebooks are prepared in parallel threads.
_AST_LOCK = threading.Lock()


def parse(code: str) -> ast.Module:
    """``ast.parse`` under a lock (see above)."""
    with _AST_LOCK:
        return ast.parse(code)


def static_forbidden_calls(code: str) -> set[str]:
    """Names of built-ins the code refers to (``torch.softmax``, ``x.softmax``, ``F.scaled_dot_product_attention``).

    Returns the family names of ``FAMILY``; a syntax error yields nothing (reported elsewhere).
    """
    try:
        tree = parse(code)
    except SyntaxError:
        return set()
    found: set[str] = set()
    for node in ast.walk(tree):
        name = node.attr if isinstance(node, ast.Attribute) else node.id if isinstance(node, ast.Name) else None
        if isinstance(node, ast.alias):
            name = node.name.rsplit(".", 1)[-1]
        if name in FAMILY:
            found.add(FAMILY[name])
    return found
