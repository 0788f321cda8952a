"""Compare a student's serialised outputs with the reference's, with messages that say what to fix.

Both sides arrive as ``(tensors, meta)`` from ``exercises.program.serialise_outputs``: plain
CPU tensors plus, per key, the Python type, device and dtype that the code really returned.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

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
        return f"index {tuple(index)}"
    names = list(dims)
    if len(names) < len(index):  # leading batch dimensions the description did not name
        names = [f"batch dim {i}" for i in range(len(index) - len(names))] + names
    names = names[-len(index):] if index else names
    pretty = {"query": "query row", "key": "key column", "feature": "feature"}
    return ", ".join(f"{pretty.get(n, n)} {i}" for n, i in zip(names, index, strict=False))


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
            f"`{key}`: {len(wrong)} of {expected.numel()} entries are wrong; the first is at "
            f"{describe_index(first, expected.shape, dims)}: expected {bool(expected[first])}, "
            f"got {bool(actual[first])}",
            {"index": first, "count": len(wrong)},
        )
    a, e = actual.double(), expected.double()
    abs_err = (a - e).abs()
    rel_err = abs_err / e.abs().clamp_min(1e-12)
    flat = int(abs_err.argmax())
    index = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), expected.shape)) if expected.dim() else ()
    n_bad = int((abs_err > atol + rtol * e.abs()).sum())
    msg = (
        f"`{key}`: {n_bad} of {expected.numel()} values differ beyond rtol={rtol:g}, atol={atol:g} "
        f"({judged_as}{'' if judged_as == expected.dtype else ' computation'}); "
        f"largest absolute error {float(abs_err.max()):.3g} "
        f"(relative {float(rel_err.reshape(-1)[flat]):.3g}) at {describe_index(index, expected.shape, dims)}"
    )
    return Mismatch(key, "values", msg, {"index": index, "max_abs": float(abs_err.max()), "count": n_bad})


def tensor_mismatch(
    key: str, student: Outputs, reference: Outputs, expected_device: str, dims: Sequence[str] | None = None,
    scale: float = 1.0,
) -> Mismatch | None:
    """Check one tensor output in the order the spec fixes: type, shape, dtype, device, finite, values."""
    meta = student.meta.get(key)
    ref_meta = reference.meta[key]
    if meta is None:
        return Mismatch(key, "missing", f"`{key}` was not returned")
    if ref_meta.get("pytype") == "Tensor" and meta.get("pytype") != "Tensor":
        kind = meta.get("pytype")
        hint = " (a subclass is not accepted: return a plain torch.Tensor)" if str(kind).startswith("Tensor subclass") \
            else ""
        return Mismatch(key, "type", f"`{key}` should be a torch.Tensor, got {kind}{hint}")
    actual, expected = student.tensors.get(key), reference.tensors[key]
    if actual is None:
        return Mismatch(key, "missing", f"`{key}` could not be read back from the worker")
    if tuple(actual.shape) != tuple(expected.shape):
        return Mismatch(key, "shape", f"`{key}` should have shape {tuple(expected.shape)}, got {tuple(actual.shape)}",
                        {"expected": tuple(expected.shape), "actual": tuple(actual.shape)})
    if actual.dtype != expected.dtype:
        return Mismatch(key, "dtype", f"`{key}` should have dtype {expected.dtype} (the input's dtype), got "
                        f"{actual.dtype}: create new tensors with `dtype=x.dtype` or use `torch.*_like`")
    if ref_meta.get("pytype") == "Tensor" and not same_device(str(meta.get("device")), expected_device):
        return Mismatch(key, "device", f"`{key}` is on {meta.get('device')}, expected {expected_device}: a tensor "
                        "made inside your code is on the wrong device; register it as a buffer or use `x.device`")
    if actual.is_floating_point() and not bool(torch.isfinite(actual).all()) and bool(torch.isfinite(expected).all()):
        bad = (~torch.isfinite(actual)).nonzero()[0].tolist()
        return Mismatch(key, "nonfinite", f"`{key}` contains NaN or inf (first at "
                        f"{describe_index(bad, expected.shape, dims)}); the reference is finite there")
    return value_mismatch(key, actual, expected, dims, scale=scale)


def compare_outputs(
    student: Outputs, reference: Outputs, expected_device: str, dims: dict[str, Sequence[str]] | None = None,
    scale: float = 1.0,
) -> list[Mismatch]:
    """Compare every reference output with the student's: the key set first, then each value."""
    problems: list[Mismatch] = []
    dims = dims or {}
    for key, ref_meta in reference.meta.items():
        kind = ref_meta.get("pytype")
        got = student.meta.get(key)
        if got is None:
            if "." not in key or key.rsplit(".", 1)[0] not in student.meta:
                problems.append(Mismatch(key, "missing", f"`{key}` was not returned"))
            continue
        if kind in ("tuple", "list"):
            if got.get("pytype") not in ("tuple", "list") or got.get("length") != ref_meta.get("length"):
                problems.append(Mismatch(
                    key, "type", f"`{key}` should be a {kind} of length {ref_meta.get('length')}, got "
                    f"{got.get('pytype')}" + (f" of length {got['length']}" if "length" in got else "")))
                continue
            if ref_meta.get("numbers"):
                found = value_mismatch(key, student.tensors[key], reference.tensors[key], None,
                                       number_dtype(ref_meta)) \
                    if key in student.tensors else Mismatch(key, "type", f"`{key}` should hold numbers")
                if found:
                    problems.append(found)
        elif kind == "dict":
            continue
        elif kind in ("int", "float", "bool"):
            if got.get("pytype") not in ("int", "float", "bool") or key not in student.tensors:
                problems.append(Mismatch(key, "type", f"`{key}` should be a Python {kind}, got {got.get('pytype')}"))
                continue
            actual, expected = student.tensors[key], reference.tensors[key]
            if kind == "float" or got.get("pytype") == "float":
                found = value_mismatch(key, actual.double(), expected.double(), None, number_dtype(ref_meta))
            else:
                found = None if int(actual) == int(expected) else Mismatch(
                    key, "values", f"`{key}` should be {int(expected)}, got {int(actual)}")
            if found:
                problems.append(found)
        elif kind == "Tensor":
            key_dims = dims.get(key) or dims.get(key.split(".")[0])
            found = tensor_mismatch(key, student, reference, expected_device, key_dims, scale)
            if found:
                problems.append(found)
    return problems
