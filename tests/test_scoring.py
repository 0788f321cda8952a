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
FLOATS = ("float64", "float32")


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
            total += _judge_variant(item, "nb", device, dtype, rows, share, PreparedNotebook([]),
                                    ReferenceCache()).score
    in_kernel = kernel.check("softmax_naive", namespace, seed=seed)
    assert 0 < total < item_points(item, points)
    assert in_kernel == pytest.approx(total, abs=1e-5)


# --- the re-grade with stand-ins, as stages without a worker -------------------------------------------


def _row(item: str, status: str, message: str = "", forbidden: bool = False, variant: str = "float64"):
    from autograder.grading import TestOutcome

    score = 1.0 if status == "passed" else 0.0
    return TestOutcome(item, "01_attention_scores.ipynb", "cpu", variant, status, score, 1.0, message,
                       forbidden=forbidden)


def _lesson1():
    from exercises.catalogue import items_in

    return items_in("01_attention_scores.ipynb")


def test_is_an_item_with_a_broken_dependency_planned_for_a_regrade():
    from autograder.grading import plan_regrades

    rows = [_row("softmax_stable", "failed"), _row("softmax_stable", "passed", variant="float32"),
            _row("simple_self_attention", "failed"), _row("attention_scores", "passed"),
            _row("attention_scores", "passed", variant="float32"), _row("context_vectors", "passed"),
            _row("context_vectors", "passed", variant="float32")]
    assert plan_regrades(_lesson1(), rows, set()) == {"simple_self_attention": ["softmax_stable"]}
    assert plan_regrades(_lesson1(), rows, {"simple_self_attention"}) == {}  # its answer cell is missing


def test_are_timeouts_and_forbidden_calls_never_regraded():
    """The rule is a flag on the row: a student's own message that says "may not use" changes nothing."""
    from autograder.grading import plan_regrades

    broken = [_row("softmax_stable", "failed")] + [_row(name, "passed", variant=v) for name in
                                                   ("attention_scores", "context_vectors") for v in FLOATS]
    assert plan_regrades(_lesson1(), broken + [_row("simple_self_attention", "timeout")], set()) == {}
    assert plan_regrades(_lesson1(), broken + [_row("simple_self_attention", "failed", forbidden=True)], set()) == {}
    quoted = _row("simple_self_attention", "failed", "ValueError: you may not use this tensor")
    assert plan_regrades(_lesson1(), broken + [quoted], set()) == {"simple_self_attention": ["softmax_stable"]}


def test_does_the_merge_award_points_only_where_the_stand_ins_made_it_pass():
    from autograder.grading import merge_regrades

    before = [_row("simple_self_attention", "failed", "wrong"),
              _row("simple_self_attention", "failed", "wrong", variant="float32"), _row("softmax_stable", "failed")]
    again = [_row("simple_self_attention", "passed"),
             _row("simple_self_attention", "failed", "own bug", variant="float32")]
    merged = merge_regrades(before, again, {"simple_self_attention": ["softmax_stable"]})
    assert [r.status for r in merged] == ["passed", "failed", "failed"]
    assert merged[0].score == 1.0 and merged[0].message.startswith("correct once `softmax_stable` is fixed")
    assert merged[1].score == 0.0 and "wrong on its own as well" in merged[1].message and "own bug" in merged[1].message
    assert merged[2] is before[2]


def test_does_every_case_of_every_variant_become_one_call():
    from autograder.grading import build_calls
    from exercises.catalogue import items_in

    items = items_in("01_attention_scores.ipynb")
    plan, calls = build_calls(items, ["cpu", "cuda"], seed=4)
    expected = sum(len(item.cases(4, dtype)) for item in items for device in ("cpu", "cuda")
                   for dtype in item.variants(device))
    assert len(calls) == len(plan) == expected
    assert [c.id for c in calls] == list(range(expected))
    assert all(c.group == it.name and c.device == dev and c.dtype == dt for c, (it, dev, dt, _case, _cid)
               in zip(calls, plan, strict=True))
    assert {c.dtype for c in calls if c.device == "cuda"} >= {"bfloat16"}  # the GPU-only variant is planned


def test_does_a_regrade_the_code_could_not_run_keep_the_score_but_not_a_diagnosis_it_cannot_stand_behind():
    """A stand-in has no autograd graph: a training loop whose loss is a stand-in raises. That says nothing of the
    student's code, so the score stands; but the outputs the diagnosis came from were made with the broken
    dependency in the loop, so no mistake of this item is named, and the row says which dependency to fix first."""
    from autograder.grading import merge_regrades

    first = _row("simple_self_attention", "failed", "case x: off by 0.5 -- likely mistake: it did y (some_mistake)")
    first.mistakes = ["some_mistake"]
    again = [_row("simple_self_attention", "error", "RuntimeError: element 0 of tensors does not require grad")]
    [merged] = merge_regrades([first], again, {"simple_self_attention": ["softmax_stable"]})
    assert merged.status == "failed" and merged.score == 0.0
    assert merged.mistakes == [] and "some_mistake" not in merged.message and "does not require grad" not in \
        merged.message
    assert merged.message.startswith("could not be judged apart from `softmax_stable`") and "case x: off by 0.5" in \
        merged.message
