"""The bank of known mistakes: buggy variants of the reference, each with a diagnosis and a hint.

When a student's output fails a case, the grader runs the same case against the reference namespace
with one name replaced by a known buggy variant; if the student's outputs match that variant's, the
message names the mistake. Everything here runs in the grader's process, on the reference's code.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from exercises.catalogue import Case
from exercises.compare import Outputs, compare_outputs


@dataclass(frozen=True)
class Mistake:
    """A known wrong answer for ``item``: ``variant()`` returns the names to replace in the reference."""

    item: str
    name: str
    diagnosis: str
    hint: str
    variant: Callable[[], dict[str, Any]]

    @property
    def text(self) -> str:
        return f"{self.diagnosis} ({self.name}). {self.hint}"


MISTAKES: list[Mistake] = []


def mistake(item: str, name: str, diagnosis: str, hint: str):
    """Decorator: register a function that returns ``{graded_name: buggy_object}``."""
    def register(fn: Callable[[], dict[str, Any]]) -> Callable[[], dict[str, Any]]:
        MISTAKES.append(Mistake(item, name, diagnosis, hint, fn))
        return fn
    return register


def mistakes_for(item: str) -> list[Mistake]:
    _load_bank()
    return [m for m in MISTAKES if m.item == item]


_loaded = False


def _load_bank() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        from exercises import mistake_bank  # noqa: F401 - registers the mistakes


def matching_mistakes(item: str, case: Case, student: Outputs, device: str, dtype: str | None) -> list[Mistake]:
    """Every known mistake of ``item`` whose outputs on ``case`` equal the student's."""
    from exercises.judge import reference_namespace, run_on

    found = []
    for known in mistakes_for(item):
        namespace = dict(reference_namespace())
        namespace.update(known.variant())
        try:
            import torch

            torch.manual_seed(0)
            buggy = run_on(namespace, case, device, dtype)
        except Exception:  # noqa: BLE001 - a variant that cannot run on this case simply does not match
            continue
        if buggy.meta.keys() and not compare_outputs(student, buggy, device, case.dims):
            found.append(known)
    return found


def diagnose(item: str, case: Case, student: Outputs, device: str, dtype: str | None) -> str | None:
    """The message of the first known mistake that reproduces the student's outputs, if any."""
    if not case.compare:
        return None
    found = matching_mistakes(item, case, student, device, dtype)
    return found[0].text if found else None
