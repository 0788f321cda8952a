"""The registry of known mistakes: what a mistake is, and the decorators that register one.

Each lesson module (``exercises/lessons/``) registers its own mistakes when it is imported;
``exercises.mistake_bank`` imports them all (through ``exercises.catalogue``) and ``exercises.diagnosis``
imports the bank and uses the registry to name the mistake behind a failed case. This module imports
none of them, so they form no circle.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from exercises.compare import Outputs
from exercises.i18n import mistake_text, tr

Predicate = Callable[[Outputs, Outputs], bool]


@dataclass(frozen=True)
class Mistake:
    """A known wrong answer for ``item``.

    ``variant()`` returns ``{graded_name: buggy_object}`` to replace in the reference namespace.
    ``predicate(student, reference)``, when given, recognises the mistake from the outputs alone
    (used instead of the variant's outputs, e.g. for cases judged by invariants).
    ``same_as`` names mistakes of the same item that no case of the catalogue can tell apart
    from this one (their outputs are identical on every case); the test suite keeps it honest.
    """

    item: str
    name: str
    diagnosis: str
    hint: str
    variant: Callable[[], dict[str, Any]]
    predicate: Predicate | None = None
    same_as: tuple[str, ...] = ()

    @property
    def text(self) -> str:
        """Diagnosis, name and hint in the current language (``exercises.i18n``; English where untranslated)."""
        diagnosis, hint = mistake_text(self.item, self.name, self.diagnosis, self.hint)
        return tr("{diagnosis} ({name}). {hint}").format(diagnosis=diagnosis, name=self.name, hint=hint)


@dataclass(frozen=True)
class ErrorHint:
    """A known mistake recognised from the exception it raises: ``pattern`` is searched in the error text."""

    item: str
    name: str
    pattern: str
    diagnosis: str
    hint: str

    @property
    def text(self) -> str:
        """Diagnosis, name and hint in the current language (``exercises.i18n``; English where untranslated)."""
        diagnosis, hint = mistake_text(self.item, self.name, self.diagnosis, self.hint)
        return tr("{diagnosis} ({name}). {hint}").format(diagnosis=diagnosis, name=self.name, hint=hint)


MISTAKES: list[Mistake] = []
ERROR_HINTS: list[ErrorHint] = []


def mistake(item: str, name: str, diagnosis: str, hint: str, predicate: Predicate | None = None,
            same_as: tuple[str, ...] = ()):
    """Decorator: register a function that returns ``{graded_name: buggy_object}``."""
    def register(fn: Callable[[], dict[str, Any]]) -> Callable[[], dict[str, Any]]:
        if any(m.item == item and m.name == name for m in MISTAKES):
            raise ValueError(f"mistake {item}/{name} registered twice")
        MISTAKES.append(Mistake(item, name, diagnosis, hint, fn, predicate, same_as))
        return fn
    return register


def error_hint(item: str, name: str, pattern: str, diagnosis: str, hint: str) -> None:
    """Register a mistake that shows as an exception whose text matches ``pattern`` (a regex)."""
    ERROR_HINTS.append(ErrorHint(item, name, pattern, diagnosis, hint))
