"""Name the known mistake behind a failed case: buggy variants of the reference, compared with the student's outputs.

When a student's output fails a case, the grader asks :func:`diagnose` which known mistake explains it:

* for a case judged by comparison with the reference (``Case.compare``), the same case is run against
  the reference namespace with one name replaced by the mistake's buggy variant; the mistake matches
  when the variant fails the case too and the student's outputs equal the variant's (same comparison,
  same tolerances as grading);
* for a case judged by invariants only (training, plotting, dropout in train mode), or for any
  mistake that has one, the mistake's ``predicate(student, reference)`` decides; a mistake without a
  predicate matches such a case only if the variant's outputs hold something comparable (tensors or
  numbers) and the student's equal them.

Errors are not outputs: :func:`explain_error` maps the text of an exception raised by the student's
code on a case to a known mistake (e.g. a causal mask that was not cut to the sequence length).

Everything here runs in the grader's process, on the reference's code; the variants live in the lesson
modules of ``exercises/lessons/`` (``exercises.mistake_bank``, imported here, imports them all: importing
a lesson registers its mistakes in ``exercises.mistakes``).
"""

from __future__ import annotations

import re

import torch

from exercises import mistake_bank  # noqa: F401 - registers the course's mistakes
from exercises.cases import Case
from exercises.compare import Outputs, compare_outputs
from exercises.i18n import tr
from exercises.judge import REFERENCE_LOCK, judge, reference_namespace, reference_outputs, run_on
from exercises.mistakes import ERROR_HINTS, MISTAKES, ErrorHint, Mistake
from exercises.tolerances import tolerance

MAX_NAMED = 3  # at most this many mistakes are named in one message
COMPARABLE = ("Tensor", "int", "float", "bool")


def all_mistakes() -> list[Mistake]:
    return list(MISTAKES)


def all_error_hints() -> list[ErrorHint]:
    return list(ERROR_HINTS)


def mistakes_for(item: str) -> list[Mistake]:
    return [m for m in MISTAKES if m.item == item]


def has_comparable(outputs: Outputs) -> bool:
    """Whether ``outputs`` hold anything ``compare_outputs`` really compares (not only figures or strings)."""
    return any(meta.get("pytype") in COMPARABLE or meta.get("numbers") for meta in outputs.meta.values())


def run_variant(known: Mistake, case: Case, device: str, dtype: str | None) -> Outputs | None:
    """The outputs of ``known``'s buggy variant on ``case`` (None if the variant cannot run it)."""
    namespace = dict(reference_namespace())
    namespace.update(known.variant())
    with REFERENCE_LOCK:  # the global RNG is seeded: take turns
        try:
            torch.manual_seed(0)  # as the worker and the kernel do before every call
            return run_on(namespace, case, device, dtype)
        except Exception:  # noqa: BLE001 - a variant that cannot run on this case simply does not match
            return None


def matching_mistakes(item: str, case: Case, student: Outputs, device: str, dtype: str | None, *,
                      reference: Outputs | None = None) -> list[Mistake]:
    """Every known mistake of ``item`` that explains the student's outputs on ``case``.

    ``reference``: the reference's outputs on ``case`` if the caller has them (predicates need them).
    """
    found = []
    for known in mistakes_for(item):
        if reference is None:
            reference = reference_outputs(case, device, dtype)
        if known.predicate is not None:
            try:
                hit = bool(known.predicate(student, reference))
            except Exception:  # noqa: BLE001 - a predicate that cannot read these outputs does not match
                hit = False
            if hit:
                found.append(known)
            continue
        buggy = run_variant(known, case, device, dtype)
        if buggy is None or not buggy.meta:
            continue
        if not case.compare and not has_comparable(buggy):
            continue  # nothing to compare: without a predicate this case cannot recognise the mistake
        if clearly_different(student, buggy) or compare_outputs(student, buggy, device, case.dims,
                                                                 case.tolerance_scale):
            continue
        if judge(case, buggy, reference, device).passed:
            continue  # the mistake does not show on this case, so it cannot explain a failure here
        found.append(known)
    return found


def clearly_different(student: Outputs, buggy: Outputs) -> bool:
    """A quick necessary test: some tensor output differs beyond tolerance (``compare_outputs`` would say so)."""
    for key, meta in buggy.meta.items():
        if meta.get("pytype") != "Tensor" or student.meta.get(key, {}).get("pytype") != "Tensor":
            continue
        a, b = student.tensors.get(key), buggy.tensors.get(key)
        if a is None or b is None or a.shape != b.shape or a.dtype != b.dtype:
            continue
        rtol, atol = tolerance(b.dtype)
        if not (torch.allclose(a, b, rtol=rtol, atol=atol, equal_nan=True) if b.is_floating_point()
                else torch.equal(a, b)):
            return True
    return False


def describe(found: list[Mistake] | list[ErrorHint], also: str | None = None) -> str | None:
    """One message naming the mistakes found: the first, then the others it cannot be told from
    (``also``: how they are alike; default: the same outputs on this case). In the current language."""
    if not found:
        return None
    shown = [m.text for m in found[:MAX_NAMED]]
    if len(shown) == 1:
        return shown[0]
    also = also if also is not None else tr("with the same outputs on this case")
    return shown[0] + tr(". Or, {also}: ").format(also=also) + tr("; ").join(shown[1:])


def diagnose(item: str, case: Case, student: Outputs, device: str, dtype: str | None, *,
             reference: Outputs | None = None) -> str | None:
    """The message naming the known mistakes that reproduce the student's outputs, if any."""
    return describe(matching_mistakes(item, case, student, device, dtype, reference=reference))


def explain_error(item: str, error: str) -> str | None:
    """The message naming the known mistakes whose typical exception text matches ``error``, if any."""
    found = [h for h in all_error_hints() if h.item == item and re.search(h.pattern, error)]
    return describe(found, also=tr("with the same error"))
