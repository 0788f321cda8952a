"""Compare a student's serialised outputs with the reference's, with messages that say what to fix.

Both sides arrive as ``(tensors, meta)`` from ``exercises.program.serialise_outputs``: plain
CPU tensors plus, per key, the Python type, device and dtype that the code really returned.

What must be there is decided from the reference's outputs alone: every part of them (``out``, ``out.0``,
``params.W_query``) must come back with an accepted kind (``ACCEPTED_KINDS``), whatever the student's side
claims. The student's metadata comes from the student's process: a malformed record is a wrong answer,
never a crash of the grader.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from exercises.i18n import tr
from exercises.tolerances import tolerance


@dataclass
class Outputs:
    """A program's serialised results: tensors by key and per-key metadata."""

    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any]

    def tensor(self, key: str) -> torch.Tensor | None:
        return self.tensors.get(key)


@dataclass
class Mismatch:
    """Why one output key is wrong; ``kind`` is ``missing``, ``type``, ``shape``, ``dtype``, ``device``,
    ``nonfinite`` or ``values``."""

    key: str
    kind: str
    message: str
    details: dict[str, Any] = field(default_factory=dict)


def same_device(actual: str, expected: str) -> bool:
    """Whether a tensor on ``actual`` (as ``str(tensor.device)`` says, e.g. ``cuda:0``) is on ``expected``.

    Devices are compared as devices, not as strings: the grader asks for a device *type* (``cuda``),
    while a tensor always reports its index (``cuda:0``). An index in ``expected`` must match too.
    """
    try:
        got, want = torch.device(actual), torch.device(expected)
    except (RuntimeError, TypeError):  # not a device name at all (e.g. missing metadata)
        return False
    if got.type != want.type:
        return False
    return want.index is None or got.index == want.index


def describe_index(index: Sequence[int], shape: Sequence[int], dims: Sequence[str] | None) -> str:
    """``(1, 0, 3, 2)`` with dims ``(batch, head, query, key)`` -> ``batch 1, head 0, query row 3, key column 2``."""
    if not dims:
        return tr("index {index}").format(index=tuple(index))
    names = list(dims)
    if len(names) < len(index):  # leading batch dimensions the description did not name
        names = [tr("batch dim {i}").format(i=i) for i in range(len(index) - len(names))] + names
    names = names[-len(index):] if index else names
    pretty = {"query": tr("query row"), "key": tr("key column"), "feature": tr("feature"), "batch": tr("batch"),
              "head": tr("head"), "position": tr("position")}
    return tr(", ").join(f"{pretty.get(n, n)} {i}" for n, i in zip(names, index, strict=False))


def number_dtype(meta: dict[str, Any]) -> torch.dtype:
    """The dtype that the Python numbers of an output were computed in (float64 when not recorded).

    Read from the *reference's* metadata: the grader's own run says what the numbers were computed
    in; the student's side cannot loosen its tolerance by claiming a coarser dtype.
    """
    name = meta.get("computed_in")
    dtype = getattr(torch, name, None) if isinstance(name, str) else None
    return dtype if isinstance(dtype, torch.dtype) and dtype.is_floating_point else torch.float64


def value_mismatch(
    key: str, actual: torch.Tensor, expected: torch.Tensor, dims: Sequence[str] | None = None,
    computed_in: torch.dtype | None = None, scale: float = 1.0,
) -> Mismatch | None:
    """Compare values with the per-dtype tolerance; locate and describe the largest error.

    The tolerance is that of ``computed_in`` when given (numbers computed in float32 but carried as
    float64, see ``number_dtype``), else that of ``expected``'s own dtype; times ``scale`` for a case
    whose inputs carry rounding error of their own (``Case.tolerance_scale``).
    """
    judged_as = computed_in or expected.dtype
    rtol, atol = (t * scale for t in tolerance(judged_as))
    same_kind = actual.shape == expected.shape and actual.dtype == expected.dtype
    if same_kind and expected.is_floating_point() and torch.allclose(actual, expected, rtol=rtol, atol=atol,
                                                                     equal_nan=True):
        return None  # the common case, without assert_close building a long message for nothing
    try:
        torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol, equal_nan=True)
        return None
    except AssertionError:
        pass
    if expected.dtype == torch.bool:
        wrong = (actual != expected).nonzero()
        first = tuple(int(i) for i in wrong[0])
        return Mismatch(
            key, "values",
            tr("`{key}`: {count} of {total} entries are wrong; the first is at {where}: expected {expected}, got "
               "{got}").format(key=key, count=len(wrong), total=expected.numel(),
                               where=describe_index(first, expected.shape, dims), expected=bool(expected[first]),
                               got=bool(actual[first])),
            {"index": first, "count": len(wrong)},
        )
    a, e = actual.double(), expected.double()
    abs_err = (a - e).abs()
    rel_err = abs_err / e.abs().clamp_min(1e-12)
    flat = int(abs_err.argmax())
    index = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), expected.shape)) if expected.dim() else ()
    n_bad = int((abs_err > atol + rtol * e.abs()).sum())
    judged = str(judged_as) if judged_as == expected.dtype else tr("{dtype} computation").format(dtype=judged_as)
    msg = tr("`{key}`: {count} of {total} values differ beyond rtol={rtol:g}, atol={atol:g} ({judged}); largest "
             "absolute error {max_abs:.3g} (relative {rel:.3g}) at {where}").format(
        key=key, count=n_bad, total=expected.numel(), rtol=rtol, atol=atol, judged=judged,
        max_abs=float(abs_err.max()), rel=float(rel_err.reshape(-1)[flat]),
        where=describe_index(index, expected.shape, dims))
    return Mismatch(key, "values", msg, {"index": index, "max_abs": float(abs_err.max()), "count": n_bad})


# The kinds a student's output may have where the reference's has kind K. Why each is fair:
# - ``int`` (a count, a size in bytes): exact; a float, a bool or a tensor is another kind of thing, even when
#   equal. A NumPy integer arrives as ``int`` (``program.is_number``): it is an integer and compares equal.
# - ``float``: any Python number (an ``int`` too), judged with the tolerance of the reference's computation.
# - ``tuple`` and ``list`` stand for each other: the spec writes a result as ``(context, weights)``, and
#   unpacking, indexing and ``len`` behave the same on both; the length and every element's kind must match.
# - a tensor is never a number and a number never a tensor (``tensor_mismatch``).
# Kinds not listed here (a ``grad_fn`` node, another object) must be present; the case's checks judge them.
ACCEPTED_KINDS: dict[str, tuple[str, ...]] = {
    "int": ("int",),
    "float": ("float", "int"),
    "bool": ("bool",),
    "NoneType": ("NoneType",),
    "str": ("str",),
    "Figure": ("Figure",),
    "tuple": ("tuple", "list"),
    "list": ("tuple", "list"),
    "dict": ("dict",),
}
def kind_name(kind: str) -> str:
    """A kind of output in words, in the current language: ``a torch.Tensor``, ``a Python int``, ..."""
    names = {"Tensor": tr("a torch.Tensor"), "int": tr("a Python int"), "float": tr("a Python float"),
             "bool": tr("a Python bool"), "NoneType": "None", "str": tr("a string"),
             "Figure": tr("a matplotlib Figure")}
    return names.get(kind) or tr("a {kind}").format(kind=kind)


def _entry(meta: dict[str, Any], key: str) -> dict[str, Any] | None:
    """``meta[key]`` if it is a record at all: the student's metadata comes from the student's process."""
    value = meta.get(key)
    return value if isinstance(value, dict) else None


def _keys(info: dict[str, Any]) -> list[str] | None:
    """A dict record's keys, or None if the record holds no list of them."""
    keys = info.get("keys")
    return [str(k) for k in keys] if isinstance(keys, list) else None


def expected_kind(meta: dict[str, Any], key: str) -> str:
    """The reference's output ``key`` in words: ``a tuple of 3 tensors``, ``a Python int``, ``a dict with keys ...``."""
    info = meta[key]
    kind = info.get("pytype")
    if kind in ("tuple", "list"):
        n = info.get("length", 0)
        if info.get("numbers"):
            return tr("a {kind} of {n} Python numbers").format(kind=kind, n=n)
        parts = {(_entry(meta, f"{key}.{i}") or {}).get("pytype") for i in range(n)}
        return (tr("a {kind} of {n} tensors") if n and parts == {"Tensor"} else
                tr("a {kind} of length {n}")).format(kind=kind, n=n)
    if kind == "dict":
        return tr("a dict with keys {keys}").format(keys=sorted(_keys(info) or []))
    return kind_name(kind)


def actual_kind(info: dict[str, Any]) -> str:
    """The student's output in words (every string in it is the student's: cut short)."""
    kind = str(info.get("pytype"))[:80]
    if kind in ("tuple", "list"):
        length = str(info.get("length"))[:20]
        return (tr("a {kind} of {n} Python numbers") if info.get("numbers") else
                tr("a {kind} of length {n}")).format(kind=kind, n=length)
    if kind == "dict":
        keys = _keys(info)
        return tr("a dict with keys {keys}").format(keys=sorted(keys)[:8] if keys is not None else tr("(unreadable)"))
    if kind == "int" and info.get("from"):
        return tr("an integer ({origin})").format(origin=str(info["from"])[:40])
    return kind_name(kind)


def _container(meta: dict[str, Any], key: str) -> str | None:
    """The reference output that holds ``key`` (``out`` for ``out.0``; dict keys may contain dots)."""
    head = key
    while "." in head:
        head = head.rsplit(".", 1)[0]
        if head in meta:
            return head
    return None


def tensor_mismatch(
    key: str, student: Outputs, reference: Outputs, expected_device: str, dims: Sequence[str] | None = None,
    scale: float = 1.0,
) -> Mismatch | None:
    """Check one tensor output in the order the spec fixes: type, shape, dtype, device, finite, values."""
    meta = _entry(student.meta, key)
    ref_meta = reference.meta[key]
    if meta is None:
        return Mismatch(key, "missing", tr("`{key}` was not returned").format(key=key))
    if ref_meta.get("pytype") == "Tensor" and meta.get("pytype") != "Tensor":
        kind = str(meta.get("pytype"))[:80]
        hint = tr(" (a subclass is not accepted: return a plain torch.Tensor)") if kind.startswith("Tensor subclass") \
            else tr(" (a number is never a tensor)") if kind in ("int", "float", "bool") else ""
        parent = _container(reference.meta, key)
        where = tr("`{parent}` should be {expected}; `{key}` is {actual}").format(
            parent=parent, expected=expected_kind(reference.meta, parent), key=key, actual=actual_kind(meta)) \
            if parent else tr("`{key}` should be a torch.Tensor, got {actual}").format(key=key,
                                                                                         actual=actual_kind(meta))
        return Mismatch(key, "type", f"{where}{hint}")
    actual, expected = student.tensors.get(key), reference.tensors[key]
    if not isinstance(actual, torch.Tensor):
        if not same_device(str(meta.get("device")), expected_device):  # a tensor without data (meta) is on no device
            return Mismatch(key, "device", tr("`{key}` is on {device}, expected {expected}: its values cannot be "
                                              "read; compute it from the inputs, on their device").format(
                key=key, device=str(meta.get("device"))[:40], expected=expected_device))
        why = tr(" ({why}): return a dense tensor").format(why=str(meta["unreadable"])[:120]) \
            if meta.get("unreadable") else ""
        return Mismatch(key, "missing", tr("`{key}` could not be read back from the worker{why}").format(key=key,
                                                                                                         why=why))
    if tuple(actual.shape) != tuple(expected.shape):
        return Mismatch(key, "shape", tr("`{key}` should have shape {expected}, got {got}").format(
            key=key, expected=tuple(expected.shape), got=tuple(actual.shape)),
                        {"expected": tuple(expected.shape), "actual": tuple(actual.shape)})
    if actual.dtype != expected.dtype:
        return Mismatch(key, "dtype", tr("`{key}` should have dtype {expected} (the input's dtype), got {got}: create "
                                         "new tensors with `dtype=x.dtype` or use `torch.*_like`").format(
            key=key, expected=expected.dtype, got=actual.dtype))
    if ref_meta.get("pytype") == "Tensor" and not same_device(str(meta.get("device")), expected_device):
        return Mismatch(key, "device", tr("`{key}` is on {device}, expected {expected}: a tensor made inside your code "
                                          "is on the wrong device; register it as a buffer or use `x.device`").format(
            key=key, device=meta.get("device"), expected=expected_device))
    if actual.is_floating_point() and not bool(torch.isfinite(actual).all()) and bool(torch.isfinite(expected).all()):
        bad = (~torch.isfinite(actual)).nonzero()[0].tolist()
        return Mismatch(key, "nonfinite", tr("`{key}` contains NaN or inf (first at {where}); the reference is finite "
                                             "there").format(key=key, where=describe_index(bad, expected.shape, dims)))
    return value_mismatch(key, actual, expected, dims, scale=scale)


def kind_mismatch(key: str, student: Outputs, reference: Outputs) -> Mismatch | None:
    """Whether the student's output ``key`` is the kind of thing the reference's is (decided from the reference)."""
    ref = reference.meta[key]
    got = _entry(student.meta, key)
    if got is None:
        return Mismatch(key, "missing", tr("`{key}` was not returned").format(key=key))
    want, have = ref.get("pytype"), got.get("pytype")
    accepted = ACCEPTED_KINDS.get(want)
    if want == "Tensor" or accepted is None:
        return None  # tensors: ``tensor_mismatch`` checks the type first (a subclass gets its own hint)
    fits = have in accepted
    extra = ""
    if fits and want in ("tuple", "list"):
        fits = got.get("length") == ref.get("length") and bool(got.get("numbers")) == bool(ref.get("numbers"))
        if fits is False and ref.get("numbers") and not got.get("numbers"):
            extra = tr(" (use `.item()` on each tensor)")
    elif fits and want == "dict":
        theirs, ours = _keys(got), set(_keys(ref) or [])
        fits = theirs is not None and set(theirs) == ours
        if not fits and theirs is not None:
            missing, unexpected = sorted(ours - set(theirs)), sorted(set(theirs) - ours)[:8]
            extra = "".join([tr("; missing {keys}").format(keys=missing) if missing else "",
                             tr("; unexpected {keys}").format(keys=unexpected) if unexpected else ""])
    if fits:
        return None
    if want == "int" and have in ("float", "bool", "Tensor"):
        extra = tr(" (`int(...)` makes one, as does `.item()` of an integer tensor)")
    elif want == "float" and have == "Tensor":
        extra = tr(" (`.item()` makes a 0-d tensor a number)")
    parent = _container(reference.meta, key)
    if parent is not None:
        message = tr("`{parent}` should be {expected}; `{key}` is {actual}").format(
            parent=parent, expected=expected_kind(reference.meta, parent), key=key, actual=actual_kind(got))
    else:
        message = tr("`{key}` should be {expected}, got {actual}").format(
            key=key, expected=expected_kind(reference.meta, key), actual=actual_kind(got))
    return Mismatch(key, "type", message + extra, {"expected": want, "actual": str(have)[:80]})


def _readable(key: str, student: Outputs, reference: Outputs) -> torch.Tensor | None:
    """The student's tensor behind a number (or list of numbers) if it has the reference's shape and dtype."""
    actual, expected = student.tensors.get(key), reference.tensors.get(key)
    if not isinstance(actual, torch.Tensor) or expected is None or actual.shape != expected.shape:
        return None
    return actual if actual.dtype == expected.dtype or (actual.dtype == torch.int64 and expected.dtype ==
                                                        torch.float64) else None


def value_problem(key: str, student: Outputs, reference: Outputs) -> Mismatch | None:
    """Compare the values of a number, a list of numbers or a string whose kind already fits."""
    ref = reference.meta[key]
    kind = ref.get("pytype")
    if kind == "str":
        got, want = (_entry(student.meta, key) or {}).get("value"), ref.get("value")
        if got == want:
            return None
        return Mismatch(key, "values", tr("`{key}` should be {expected!r}, got {got!r}").format(
            key=key, expected=want, got=str(got)[:80]))
    if kind not in ("int", "float", "bool") and not (kind in ("tuple", "list") and ref.get("numbers")):
        return None
    actual = _readable(key, student, reference)
    if actual is None:
        return Mismatch(key, "type", tr("`{key}` could not be read back as {expected}").format(
            key=key, expected=expected_kind(reference.meta, key)))
    expected = reference.tensors[key]
    if kind in ("int", "bool"):
        if torch.equal(actual, expected):
            return None
        return Mismatch(key, "values", tr("`{key}` should be {expected}, got {got}").format(
            key=key, expected=expected.item(), got=actual.item()))
    actual = actual.double()
    if not bool(torch.isfinite(actual).all()) and bool(torch.isfinite(expected).all()):
        where = f"{actual.item()}" if actual.dim() == 0 else tr("in {count} places").format(
            count=int((~torch.isfinite(actual)).sum()))
        return Mismatch(key, "nonfinite", tr("`{key}` is NaN or inf ({where}); the reference is finite").format(
            key=key, where=where))
    return value_mismatch(key, actual, expected, None, number_dtype(ref))


def compare_outputs(
    student: Outputs, reference: Outputs, expected_device: str, dims: dict[str, Sequence[str]] | None = None,
    scale: float = 1.0,
) -> list[Mismatch]:
    """Compare every part of the reference's outputs with the student's, decided from the reference alone.

    Every reference key (``out``, ``out.0``, ``params.W_query``) must be present in the student's outputs with an
    accepted kind (``ACCEPTED_KINDS``; tensors exactly ``torch.Tensor``), tuples and lists of the same length,
    dicts with the same keys; then values. A part whose kind is wrong is reported once: what it holds is not
    looked at (``out`` as three numbers where three tensors belong is one message, not three).
    """
    problems: list[Mismatch] = []
    dims = dims or {}
    wrong: list[str] = []  # keys reported as the wrong kind: their parts are not compared
    for key, ref_meta in reference.meta.items():
        if any(key.startswith(w + ".") for w in wrong):
            continue
        found = kind_mismatch(key, student, reference)
        if found is None and ref_meta.get("pytype") == "Tensor":
            key_dims = dims.get(key) or dims.get(key.split(".")[0])
            found = tensor_mismatch(key, student, reference, expected_device, key_dims, scale)
        elif found is None:
            found = value_problem(key, student, reference)
        if found is not None:
            problems.append(found)
            if found.kind in ("missing", "type"):
                wrong.append(key)
    return problems
