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
from exercises.judge import judge, reference_outputs, run_on
from exercises.mistakes import diagnose

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "alternatives"
ALTERNATIVES = sorted(FIXTURES.glob("*.py"))
SEEDS = (0, 1, 2)
DEVICE = "cpu"


def forbidden_used(item: str, source: str) -> set[str]:
    """The forbidden built-ins the answer cell names (the grader's static check)."""
    from autograder.intake import static_forbidden_calls

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
