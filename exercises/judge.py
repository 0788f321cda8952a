"""Judge one case: run the reference, compare the student's outputs, apply the invariants.

Used in the grader's process (with outputs read back from the worker) and in the student's kernel
(nbgrader hidden tests). Nothing here runs student code except ``kernel.check``'s caller.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import torch

from exercises.cases import Case
from exercises.compare import Outputs, compare_outputs
from exercises.i18n import tr
from exercises.program import compute_dtype, run_program, serialise_outputs


@dataclass
class Verdict:
    """The outcome of one case: passed or not, and a message that says what to fix."""

    passed: bool
    message: str = ""


def reference_namespace() -> dict[str, Any]:
    import solutions

    return vars(solutions)


def run_on(namespace: dict[str, Any], case: Case, device: str, dtype: str | None) -> Outputs:
    """Run ``case``'s program against ``namespace`` and serialise its outputs."""
    raw = run_program(case.program, namespace, case.inputs, device, dtype)
    return Outputs(*serialise_outputs(raw, compute_dtype(dtype, case.inputs)))


# The reference and the known-mistake variants seed torch's global generator; notebooks are graded in
# parallel threads, so those runs take turns.
REFERENCE_LOCK = threading.RLock()


def reference_outputs(case: Case, device: str, dtype: str | None) -> Outputs:
    """The reference's outputs on ``case`` (reproducible: programs that use dropout seed first)."""
    with REFERENCE_LOCK:
        torch.manual_seed(0)
        return run_on(reference_namespace(), case, device, dtype)


SHOWN_MISMATCHES = 3  # value mismatches listed per case


def judge(case: Case, student: Outputs, reference: Outputs, device: str) -> Verdict:
    """Compare (unless the case is judged by invariants alone), then apply the case's invariants."""
    messages: list[str] = []
    for check in case.checks:  # an invariant's message names the concept; it goes before the raw numbers
        found = check(student, reference)
        if found:
            messages.append(found)
    if case.compare:
        mismatches = [m.message for m in compare_outputs(student, reference, device, case.dims, case.tolerance_scale)]
        if len(mismatches) > SHOWN_MISMATCHES:  # a cached run has a step per token: the first few say enough, and
            # the diagnosis that follows the case's message must not be cut off with the rest of a long list
            rest = len(mismatches) - SHOWN_MISMATCHES
            more = tr("{rest} more outputs differ too") if rest > 1 else tr("{rest} more output differ too")
            mismatches = mismatches[:SHOWN_MISMATCHES] + [more.format(rest=rest)]
        messages += mismatches
    if messages:
        return Verdict(False, tr("case {case}: ").format(case=case.name) + tr("; ").join(dict.fromkeys(messages)))
    return Verdict(True)
