"""Is an item scored the same way everywhere? One scoring function, a status type, no message matching."""

from __future__ import annotations

import pytest
import torch

import solutions
from exercises import kernel
from exercises.catalogue import ITEMS, available_devices
from exercises.judge import run_on
from exercises.scoring import CaseOutcome, Status, score_variant

PASS, FAIL = Status.PASSED, Status.FAILED


def cases(*statuses: Status, message: str = "wrong") -> list[CaseOutcome]:
    return [CaseOutcome(f"c{i}", s, "" if s is PASS else f"case c{i}: {message}") for i, s in enumerate(statuses)]


def test_does_a_full_variant_earn_exactly_its_share():
    scored = score_variant(1 / 6, cases(PASS, PASS, PASS))
    assert scored.status is PASS and scored.score == scored.max_score == 1 / 6 and scored.message == ""


def test_does_a_partial_variant_earn_its_fraction_and_say_so():
    scored = score_variant(0.5, cases(PASS, FAIL, PASS))
    assert scored.status is FAIL and scored.score == pytest.approx(1 / 3, abs=1e-6)
    assert scored.message.startswith("2/3 cases passed. case c1: wrong")


def test_does_a_forbidden_call_take_every_point_and_flag_it():
    scored = score_variant(1.0, cases(PASS, PASS), forbidden="`x` may not use torch.softmax")
    assert scored.score == 0 and scored.forbidden and scored.status is FAIL
    assert scored.message.startswith("`x` may not use")


def test_does_the_worst_status_win():
    mixed = cases(PASS, FAIL) + [CaseOutcome("t", Status.TIMEOUT, "case t: too slow"),
                                 CaseOutcome("e", Status.ERROR, "case e: boom")]
    assert score_variant(1.0, mixed).status is Status.TIMEOUT
    assert score_variant(1.0, cases(FAIL) + [CaseOutcome("e", Status.ERROR, "boom")]).status is Status.ERROR


def test_are_repeated_messages_said_once_and_the_rest_counted():
    many = [CaseOutcome(f"c{i}", FAIL, f"m{i % 5}") for i in range(10)]
    scored = score_variant(1.0, many)
    assert scored.message == "m0; m1; m2; ... (2 more)"


def test_do_the_kernel_check_and_the_pytest_grader_give_the_same_partial_score():
    """A softmax that ignores ``dim``: right on 1-D inputs only. Both graders, same seed, same points."""
    from autograder.grading import ReferenceCache, _judge_variant, item_points
    from autograder.intake import PreparedNotebook
    from autograder.runner import CallResult
    from exercises.source import load_source

    namespace = dict(vars(solutions))
    exec("import torch\ndef softmax_naive(x, dim=-1):\n    return torch.exp(x) / torch.exp(x).sum()\n", namespace)
    item, seed = ITEMS["softmax_naive"], 11
    points = load_source(item.notebook).points
    devices = available_devices()
    total = 0.0
    for device in devices:
        for dtype in item.variants(device):
            rows = []
            for i, case in enumerate(item.cases(seed, dtype)):
                torch.manual_seed(0)
                rows.append((i, case, CallResult("ok", run_on(namespace, case, device, dtype))))
            share = item.share(item_points(item, points), device, devices)
            total += _judge_variant(item, "nb", device, dtype, rows, share, PreparedNotebook([]), set(),
                                    ReferenceCache()).score
    in_kernel = kernel.check("softmax_naive", namespace, seed=seed)
    assert 0 < total < item_points(item, points)
    assert in_kernel == pytest.approx(total, abs=1e-5)
