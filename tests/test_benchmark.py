"""The benchmark's pure parts (scripts/benchmark.py): batch assembly, numbers, tables, score agreement.

Nothing here is timed: the benchmark itself prints its tables. The whole run (nbgrader and the grader
on a real batch) takes minutes even at N=2 on this machine, so it has no smoke test in the suite; run
``python scripts/benchmark.py --quick``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("_selfattn_benchmark", REPO / "scripts" / "benchmark.py")
bench = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = bench  # dataclasses look their module up while the module loads
_spec.loader.exec_module(bench)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6, 7, 10, 11, 49, 50, 51, 100])
def test_kind_counts_sum_to_n_and_every_kind_is_present_from_five(n):
    counts = bench.kind_counts(n)
    assert list(counts) == list(bench.SHARES)
    assert sum(counts.values()) == n
    assert all(v >= 0 for v in counts.values())
    if n >= 5:
        assert all(v >= 1 for v in counts.values()), counts


def test_kind_counts_follow_the_mix():
    assert bench.kind_counts(50) == {"perfect": 20, "one_wrong": 10, "several_wrong": 10, "empty": 5, "hostile": 5}
    assert bench.kind_counts(6) == {"perfect": 2, "one_wrong": 1, "several_wrong": 1, "empty": 1, "hostile": 1}
    assert bench.kind_counts(2) == {"perfect": 1, "one_wrong": 1, "several_wrong": 0, "empty": 0, "hostile": 0}
    with pytest.raises(ValueError):
        bench.kind_counts(0)


def test_the_batch_is_reproducible_and_mixed():
    plan = bench.plan_batch(50, seed=3)
    assert [(s.name, s.kind, s.overrides, s.mistakes) for s in plan] == \
        [(s.name, s.kind, s.overrides, s.mistakes) for s in bench.plan_batch(50, seed=3)]
    assert [s.mistakes for s in plan] != [s.mistakes for s in bench.plan_batch(50, seed=4)]
    assert {k: sum(s.kind == k for s in plan) for k in bench.SHARES} == bench.kind_counts(50)
    assert len({s.name for s in plan}) == 50
    assert [s.kind for s in plan[:5]] == list(bench.SHARES)  # interleaved: any prefix is a mix
    fixtures = {p.stem for p in (REPO / "tests" / "fixtures" / "mistakes").glob("*.py")}
    for s in plan:
        if s.kind == "perfect":
            assert s.overrides == {} and s.mistakes == []
        elif s.kind == "empty":
            assert s.overrides is None
        elif s.kind == "hostile":
            assert "torch.allclose = lambda" in s.overrides["softmax_naive"]
        elif s.kind == "several_wrong":
            assert len(s.mistakes) == bench.SEVERAL
            assert len(s.overrides) == bench.SEVERAL  # distinct items
            assert set(s.mistakes) <= fixtures
        else:
            assert len(s.mistakes) == 1 and len(s.overrides) == 1


def test_the_nbgrader_sample_goes_across_the_kinds():
    plan = bench.plan_batch(50, seed=0)
    sample = bench.nbgrader_sample(plan, 5)
    assert sorted(s.kind for s in sample) == sorted(bench.SHARES)
    assert [s.kind for s in bench.nbgrader_sample(plan, 2)] == ["perfect", "hostile"]
    assert bench.nbgrader_sample(plan, 50) == plan
    assert bench.nbgrader_sample(plan, 500) == plan


def test_the_batch_is_written_in_the_submitted_layout(tmp_path):
    from autograder.intake import expand_batch
    from exercises.catalogue import NOTEBOOKS

    plan = bench.plan_batch(5, seed=0)
    folder = bench.write_batch(plan, tmp_path / "batch")
    assert expand_batch(folder, NOTEBOOKS) == [folder / s.name for s in plan]
    for s in plan:
        assert sorted(p.name for p in (folder / s.name / "self_attention").glob("*.ipynb")) == sorted(NOTEBOOKS)
    hostile = json.loads((folder / "s005_hostile" / "self_attention" / NOTEBOOKS[0]).read_text())
    assert any("torch.allclose = lambda" in "".join(c["source"]) for c in hostile["cells"])
    perfect = json.loads((folder / "s001_perfect" / "self_attention" / NOTEBOOKS[0]).read_text())
    text = "".join("".join(c["source"]) for c in perfect["cells"])
    assert "BEGIN SOLUTION" not in text and "BEGIN HIDDEN TESTS" not in text  # a release filled in, as students submit
    # the grader's cells for a perfect notebook: the given cells and every answer
    cells = bench.cells_the_grader_runs(NOTEBOOKS[0], folder / "s001_perfect" / "self_attention" / NOTEBOOKS[0])
    assert {c.kind for c in cells} == {"given", "answer"}
    assert "softmax_naive" in {c.grade_id for c in cells}


def test_numbers():
    assert bench.summary([3.0, 1.0, 2.0]) == {"median": 2.0, "max": 3.0}
    assert bench.summary([4.0, 1.0]) == {"median": 2.5, "max": 4.0}
    assert bench.throughput(10, 120.0) == pytest.approx(5.0)
    assert bench.extrapolate(2, 100.0, 50) == pytest.approx(2500.0)
    assert bench.extrapolate(50, 100.0, 50) == pytest.approx(100.0)
    assert bench.overhead(15.0, 10.0) == {"ratio": 1.5, "seconds": 5.0}
    runs = [bench.Measured(100.0, 500.0), bench.Measured(80.0, 700.0), bench.Measured(120.0, 600.0)]
    s = bench.runs_summary(runs, measured_on=2, n=50)
    assert s["measured_seconds"] == {"median": 100.0, "max": 120.0}
    assert s["wall"] == {"median": 2500.0, "max": 3000.0}
    assert s["per_submission"]["median"] == 50.0
    assert s["throughput"]["median"] == pytest.approx(1.2)
    assert s["peak_mib"] == {"median": 600.0, "max": 700.0}


def test_format_table():
    text = bench.format_table(["what", "s"], [["a", 1.234], ["longer", None], ["c", 12]])
    lines = text.splitlines()
    assert lines[0] == "what       s"
    assert lines[2] == "a       1.23"
    assert lines[3] == "longer     -"
    assert lines[4] == "c         12"


def test_grader_scores_read_the_json_report():
    report = {"submissions": [{"path": "/b/s001_perfect", "score": 43.0, "tests": [
        {"item": "x", "score": 1.0}, {"item": "x", "score": 0.5}, {"item": "y", "score": 2.0}]}],
        "not_graded": [{"path": "/b/s002_empty", "errors": {"nb": "worker"}}]}
    scores, items = bench.grader_scores(report)
    assert scores == {"s001_perfect": 43.0, "s002_empty": None}
    assert items == {"s001_perfect": {"x": 1.5, "y": 2.0}}


def test_agreement_counts_and_lists_disagreements():
    plan = [bench.Student("s1", "perfect", {}), bench.Student("s2", "hostile", {}, ["softmax_naive__patches"]),
            bench.Student("s3", "empty", None), bench.Student("s4", "one_wrong", {}, ["m"])]
    nbgrader = bench.Measured(1.0, 1.0, {"s1": 43.0, "s2": 43.0, "s3": None},
                              {"s1": {"a": 43.0}, "s2": {"softmax_naive": 3.0, "a": 40.0}})
    grader = bench.Measured(1.0, 1.0, {"s1": 43.0, "s2": 40.0, "s3": 0.0, "s4": 40.0},
                            {"s1": {"a": 43.0}, "s2": {"softmax_naive": 0.0, "a": 40.0}})
    rows = bench.agreement(plan, nbgrader, grader)
    assert [r["student"] for r in rows] == ["s1", "s2", "s3"]  # s4: nbgrader did not grade it
    assert [r["agree"] for r in rows] == [True, False, False]  # no grade from nbgrader is no agreement
    assert rows[1]["items"] == {"softmax_naive": [3.0, 0.0]}
    text = bench.agreement_report(rows)
    assert "differs: s2 (softmax_naive__patches): nbgrader 43, this grader 40" in text
    assert "softmax_naive 3/0" in text
    assert "expected for hostile" in text
    assert "by design for wrong answers" not in text  # s4 (one wrong) was not compared
    rows.append({**rows[0], "student": "s5", "kind": "several_wrong", "agree": False})
    assert "by design for wrong answers" in bench.agreement_report(rows)
    assert ["all", "3", "1", "2"] in [line.split() for line in text.splitlines()]
    assert "differs: s3 (empty): nbgrader no grade, this grader 0" in text
    assert bench.points(2 / 3) == "0.6667" and bench.points(42.66666) == "42.67"


def test_report_says_when_nbgrader_was_extrapolated():
    run = bench.runs_summary([bench.Measured(60.0, 100.0)], 6, 6)
    nb = bench.runs_summary([bench.Measured(100.0, 200.0)], 2, 6)
    run["scores_stable"] = nb["scores_stable"] = True
    result = {"n": 6, "seed": 0, "repeat": 1, "jobs": 2, "kinds": bench.kind_counts(6), "grader": run,
              "nbgrader": nb, "ratio": run["throughput"]["median"] / nb["throughput"]["median"],
              "nbgrader_sample": ["s001_perfect", "s005_hostile"], "nbgrader_jobs": 1}
    text = bench.report(result)
    assert "measured on 2 of 6, extrapolated" in text
    assert "300.00" in text  # nbgrader's wall, extrapolated to 6
    assert "5.00" in text  # the ratio: 6/min against 1.2/min
    assert "warning" not in text
    run["scores_stable"] = False
    assert "warning: this grader gave different scores in different repeats" in bench.report(result)


def test_report_gives_the_overhead_over_the_floor():
    floor = {"floor": bench.summary([20.0]), "python_import_torch": bench.summary([3.0]),
             "cells": bench.summary([12.0]), "cells_run": 77, "notebooks": {"01_a.ipynb": 2.0}, "errors": []}
    result = {"n": 2, "seed": 0, "repeat": 1, "jobs": 2, "kinds": bench.kind_counts(2), "nbgrader_jobs": 1,
              "grader": bench.runs_summary([bench.Measured(60.0, 100.0)], 2, 2) | {"scores_stable": True},
              "floor": floor,
              "single": bench.summary([50.0]), "single_overhead": bench.overhead(50.0, 20.0),
              "single_no_canary": bench.summary([30.0])}
    text = bench.report(result)
    assert "overhead over the floor: 2.50x, +30.0 s" in text
    assert ["one", "submission", "graded,", "--no-canary", "30.00", "30.00", "1.50"] in [
        line.split() for line in text.splitlines()]
    assert "floor per notebook (cells only, s): 01 2.0" in text
    assert not any(line.startswith("nbgrader autograde") for line in text.splitlines())  # skipped: no row


def test_peak_memory_sees_a_child_process():
    child = subprocess.Popen([sys.executable, "-c", "import time; x = bytearray(64 << 20); time.sleep(30)"])
    try:
        deadline = time.monotonic() + 10
        while bench.descendants_rss(os.getpid()) < 64 << 20 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert bench.descendants_rss(os.getpid()) >= 64 << 20
    finally:
        child.kill()
        child.wait()
