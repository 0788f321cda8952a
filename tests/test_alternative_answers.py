"""Correct answers written differently from the reference get full marks and are never flagged.

Each fixture in ``tests/fixtures/alternatives/<item>__<what>.py`` is an answer cell as a student might
write it (einsum, scaling the queries first, a softmax through logsumexp, a loop over heads, masks
from ``torch.where``, another update order for the online softmax, ...). It is executed in a
namespace seeded from the reference package, run on every case of its item (cpu, every dtype
variant, several seeds) and must pass every case, without any built-in its item forbids.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import solutions
from exercises.catalogue import ITEMS
from exercises.diagnosis import diagnose
from exercises.judge import judge, reference_outputs, run_on

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "alternatives"
ALTERNATIVES = sorted(FIXTURES.glob("*.py"))
SEEDS = (0, 1, 2)
DEVICE = "cpu"


def forbidden_used(item: str, source: str) -> set[str]:
    """The forbidden built-ins the answer cell names (the grader's static check)."""
    from exercises.rules import static_forbidden_calls

    families = {name.rsplit(".", 1)[-1].replace("log_softmax", "softmax") for name in ITEMS[item].forbidden}
    families = {"MultiheadAttention" if f == "multi_head_attention_forward" else f for f in families}
    return static_forbidden_calls(source) & families


def test_there_are_alternatives_for_most_items():
    items = {path.stem.split("__")[0] for path in ALTERNATIVES}
    assert items <= set(ITEMS)
    assert len(items) >= 20 and len(ALTERNATIVES) >= 30


@pytest.mark.parametrize("path", ALTERNATIVES, ids=lambda p: p.stem)
def test_alternative_passes_every_case(path: Path):
    item = path.stem.split("__")[0]
    source = path.read_text(encoding="utf-8")
    assert not forbidden_used(item, source)
    namespace = dict(vars(solutions))
    exec(compile(source, str(path), "exec"), namespace)
    failures = []
    for seed in SEEDS:
        for dtype in ITEMS[item].variants(DEVICE):
            for case in ITEMS[item].cases(seed, dtype):
                reference = reference_outputs(case, DEVICE, dtype)
                torch.manual_seed(0)  # as the worker and the kernel do
                student = run_on(namespace, case, DEVICE, dtype)
                verdict = judge(case, student, reference, DEVICE)
                if not verdict.passed:
                    mistake = diagnose(item, case, student, DEVICE, dtype, reference=reference)
                    failures.append(f"seed {seed} {dtype}: {verdict.message}" + (f" -- flagged: {mistake}"
                                                                                  if mistake else ""))
    assert not failures, "\n".join(failures)


@pytest.mark.slow
@pytest.mark.parametrize("round_", [0, 1, 2])
def test_do_alternatives_get_full_marks_through_the_sandboxed_grader(tmp_path, round_, warm_pool):
    """End to end: whole submissions made of alternative answers, graded in the worker, score full marks."""
    from grader_fixtures import write_submission

    from autograder.grading import grade_notebook
    from autograder.runner import default_bwrap
    from autograder.sandbox import Limits
    from exercises.catalogue import NOTEBOOKS

    by_item: dict[str, list[Path]] = {}
    for path in ALTERNATIVES:
        by_item.setdefault(path.stem.split("__")[0], []).append(path)
    chosen = {item: paths[round_ % len(paths)] for item, paths in by_item.items()}
    for notebook in NOTEBOOKS:
        overrides = {item: path.read_text() for item, path in chosen.items() if ITEMS[item].notebook == notebook}
        if not overrides:
            continue
        student = write_submission(tmp_path / notebook.split("_")[0], notebook, overrides)
        result = grade_notebook(notebook, student, 100 + round_, ["cpu"], Limits(call_timeout=30), default_bwrap(),
                                pool=warm_pool)
        for row in result.outcomes:
            if row.device == "cpu":
                label = chosen.get(row.item, "the reference answer")
                assert row.status == "passed" and row.score == row.max_score, f"{row.name} ({label}): {row.message}"
