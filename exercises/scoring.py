"""How a graded item earns its points: one definition for the pytest grader and nbgrader's kernel check.

An item's points are split equally over the devices graded, then over its dtype variants on each
(``Item.share``); a variant earns its share times the fraction of its cases passed. A forbidden
built-in (``exercises.rules``) takes every point of the item, whatever its cases say. Both graders
build ``CaseOutcome`` records and call ``score_variant``: the same score by construction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from exercises.i18n import tr


class Status(StrEnum):
    """A row's outcome, worst last: a variant takes the worst status of its cases."""

    PASSED = "passed"
    FAILED = "failed"
    ERROR = "error"
    TIMEOUT = "timeout"
    SKIPPED = "skipped"  # no GPU: never counted, never a pass


SEVERITY = (Status.PASSED, Status.FAILED, Status.ERROR, Status.TIMEOUT)
MESSAGES_SHOWN = 3  # distinct messages quoted in one row; the rest are counted


@dataclass
class CaseOutcome:
    """One case of one variant: passed, or why not (and the known mistake it looks like)."""

    case: str
    status: Status
    message: str = ""
    mistake: str | None = None


@dataclass
class VariantScore:
    """What one dtype variant of an item on one device earned, and what the student is told."""

    status: Status
    score: float
    max_score: float
    passed: int
    total: int
    message: str
    forbidden: bool = False  # lost to a forbidden built-in, whatever the cases said
    mistakes: list[str] = field(default_factory=list)


def score_variant(share: float, cases: list[CaseOutcome], forbidden: str | None = None) -> VariantScore:
    """Score one variant worth ``share`` points from its cases; ``forbidden``: the rule's message, if broken."""
    passed = 0 if forbidden else sum(c.status is Status.PASSED for c in cases)
    statuses = [Status.PASSED] + [c.status for c in cases] + ([Status.FAILED] if forbidden else [])
    status = max(statuses, key=SEVERITY.index)
    messages = ([forbidden] if forbidden else []) + [c.message for c in cases if c.status is not Status.PASSED]
    unique = list(dict.fromkeys(m for m in messages if m))
    message = tr("; ").join(unique[:MESSAGES_SHOWN])
    if len(unique) > MESSAGES_SHOWN:
        message += tr("; ... ({count} more)").format(count=len(unique) - MESSAGES_SHOWN)
    if status is not Status.PASSED and passed:
        message = tr("{passed}/{total} cases passed. ").format(passed=passed, total=len(cases)) + message
    score = share * passed / len(cases) if cases else 0.0
    mistakes = list(dict.fromkeys(c.mistake for c in cases if c.mistake))
    # rounded for the reports, never above the row's maximum (round(1/6, 6) > 1/6)
    return VariantScore(status, min(round(score, 6), share), share, passed, len(cases), message[:2000],
                        bool(forbidden), mistakes)
