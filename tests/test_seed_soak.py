"""Seed soak: correct answers pass on every seed, judged by the grader's own comparison code.

The issue: the perfect example lost train_self_attention on some seeds (``python -m autograder grade
examples/submissions/perfect --seed 854456190``: "the first loss should be ... 1.72529; got 1.72529"):
losses computed in float32 leave a call as Python floats, were carried as float64 and judged with
float64's tolerance, while the worker's float32 training differs from the grader's by an ulp.

In-process soak (fast): the perfect submission's cells (the given cells of ``source/`` and the
submission's answer cells, as ``autograder.intake.prepare`` picks them for the worker) run once per
notebook, and every fixture of ``tests/fixtures/alternatives`` in a namespace seeded from
``solutions`` (as ``test_alternative_answers.py`` does). Then, for each seed, item, dtype variant on
cpu and case, the student's side runs the way the worker runs it and is judged exactly as the grader
judges it (``exercises.judge.reference_outputs``, ``run_on``, ``judge``):

- the call's inputs are written to a safetensors file and read back (the worker gets its inputs from
  ``load_file``; float32 kernels on those can round one ulp differently from in-memory inputs: this
  is what made seed 854456190 fail, and a soak without the round trip never sees it);
- ``torch.manual_seed(0)`` before each call (dropout, training), as the worker and the kernel do;
- outputs go through safetensors and JSON and back, as they come out of the worker.

Sandboxed soak (slow): the perfect submission through the real worker over two seeds (eight with
``SELFATTN_SOAK=full``).
"""

from __future__ import annotations

import contextlib
import io
import json
import multiprocessing
import os
import random
import tempfile
import time
import warnings
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from soak_depth import depth

import solutions
from autograder.intake import prepare, read_student_notebook
from exercises.catalogue import ITEMS, NOTEBOOKS, Case
from exercises.compare import Outputs
from exercises.judge import judge, reference_outputs, run_on
from exercises.source import load_source

REPO = Path(__file__).resolve().parent.parent
PERFECT = REPO / "examples" / "submissions" / "perfect" / "self_attention"
ALTERNATIVES = sorted((REPO / "tests" / "fixtures" / "alternatives").glob("*.py"))
DEVICE = "cpu"

ISSUE_SEED = 854456190  # the seed of the issue: the perfect example lost train_self_attention
# graded seeds are fresh 31-bit numbers (``secrets.randbits(31)``); these are fixed ones like them. The suite
# judges the first 24 in-process (the fast test 4 of them, the slow one the next 20) and grades 2 through the
# sandbox, within its 20-minute budget on two cores; ``SELFATTN_SOAK=full`` (tests/soak_depth.py) takes all 200
# and 8. All 200 passed in-process with the eight lessons (2026-11-27, 292 s on 2 cores) and with all ten
# (2026-12-08, 414 s on 2 cores beside the needed-cells soak), and 8 through the sandbox; the other seeds of
# the whole suite (shards, delivery, isolation matrix) grade the perfect submission through the sandbox too.
ALL_SEEDS = (ISSUE_SEED, *random.Random(20240611).sample(range(2**31), 199))
SOAK_SEEDS = ALL_SEEDS[:depth(24, 200)]
QUICK_SEEDS = SOAK_SEEDS[:4]  # the fast run; the slow one takes the rest
SANDBOX_SEEDS = SOAK_SEEDS[:depth(2, 8)]


@dataclass
class Answers:
    """Correct answers in one namespace: which items it answers, and a label for messages."""

    label: str
    items: tuple[str, ...]
    namespace: dict


def perfect_answers() -> list[Answers]:
    """One namespace per notebook: the cells the worker would run for the perfect submission."""
    found, problems = [], []
    for notebook in NOTEBOOKS:
        prepared = prepare(load_source(notebook), read_student_notebook(PERFECT / notebook))
        namespace: dict = {"__name__": "__main__"}
        for cell in prepared.cells:
            try:
                with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), \
                        warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    exec(compile(cell.source, f"<{notebook} {cell.grade_id}>", "exec"), namespace)  # noqa: S102
            except Exception as exc:  # noqa: BLE001 - reported below
                problems.append(f"{notebook} cell {cell.grade_id}: {type(exc).__name__}: {exc}")
        items = tuple(name for name, item in ITEMS.items() if item.notebook == notebook)
        found.append(Answers(f"perfect {notebook}", items, namespace))
    assert not problems, "cells of the perfect submission raised in-process:\n" + "\n".join(problems)
    return found


def alternative_answers() -> list[Answers]:
    """Every correct alternative, executed in a namespace seeded from the reference package."""
    found = []
    for path in ALTERNATIVES:
        namespace = dict(vars(solutions))
        exec(compile(path.read_text(encoding="utf-8"), str(path), "exec"), namespace)  # noqa: S102
        found.append(Answers(f"alternative {path.stem}", (path.stem.split("__")[0],), namespace))
    return found


@pytest.fixture(scope="module")
def answers() -> list[Answers]:
    return perfect_answers() + alternative_answers()


def through_safetensors(tensors: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    """Write ``tensors`` as the grader writes a call's inputs (and the worker its outputs); read them back.

    A file, not ``safetensors.torch.save``'s bytes: the worker maps its inputs from a file, and only
    inputs read that way reproduce the worker's float32 rounding.
    """
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return load_file(str(path))


def judge_as_the_grader(namespace: dict, case: Case, dtype: str | None, reference: Outputs,
                        workdir: Path) -> tuple[bool, str]:
    """Run ``case`` against ``namespace`` as the worker does and judge it with the grader's code."""
    worker_case = replace(case, inputs=through_safetensors(case.inputs, workdir / "in.safetensors"))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.manual_seed(0)  # as the worker does before every call
            raw = run_on(namespace, worker_case, DEVICE, dtype)
    except Exception as exc:  # noqa: BLE001 - a correct answer must not raise; report it as a failure
        return False, f"case {case.name}: raised {type(exc).__name__}: {exc}"
    student = Outputs(through_safetensors(raw.tensors, workdir / "out.safetensors"), json.loads(json.dumps(raw.meta)))
    verdict = judge(case, student, reference, DEVICE)
    return verdict.passed, verdict.message


@contextlib.contextmanager
def scratch_dir(fallback: Path):
    """A folder for the round trips: in memory where there is /dev/shm (a file there costs 0.1 ms, not 2 ms)."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        with tempfile.TemporaryDirectory(dir=shm, prefix="selfattn-soak-") as tmp:
            yield Path(tmp)
    else:
        yield fallback


def soak(answers: list[Answers], seeds: tuple[int, ...], workdir: Path) -> tuple[int, list[str], dict[str, float]]:
    """Judge every (seed, answer set, item, dtype, case); returns the count, the failures and seconds per item.

    The cases and the reference's outputs of a (seed, item, dtype) are built once and shared by every
    answer set that answers the item, as the grader computes them once per call.
    """
    count, failures, seconds = 0, [], {}
    for seed in seeds:
        for name, item in ITEMS.items():
            mine = [a for a in answers if name in a.items]
            started = time.perf_counter()
            for dtype in item.variants(DEVICE):
                cases = item.cases(seed, dtype)
                references = [reference_outputs(case, DEVICE, dtype) for case in cases]
                for answer in mine:
                    for case, reference in zip(cases, references, strict=True):
                        passed, message = judge_as_the_grader(answer.namespace, case, dtype, reference, workdir)
                        count += 1
                        if not passed:
                            failures.append(f"seed {seed} {answer.label} {name}[{DEVICE}-{dtype}] {message}")
            seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - started
    return count, failures, seconds


_FORKED_ANSWERS: list[Answers] = []  # what a forked soak process judges (namespaces hold functions: not picklable)


def _soak_in_child(seeds: tuple[int, ...], fallback: str) -> tuple[int, list[str], dict[str, float]]:
    torch.set_num_threads(1)  # one process per CPU: no oversubscription
    with scratch_dir(Path(fallback)) as workdir:
        return soak(_FORKED_ANSWERS, seeds, workdir)


def soak_in_parallel(answers: list[Answers], seeds: tuple[int, ...],
                     tmp_path: Path) -> tuple[int, list[str], dict[str, float]]:
    """``soak`` with the seeds dealt over one forked process per usable CPU (the same judgements, in less wall time)."""
    processes = min(len(os.sched_getaffinity(0)), len(seeds))
    if processes < 2 or "fork" not in multiprocessing.get_all_start_methods():
        with scratch_dir(tmp_path) as workdir:
            return soak(answers, seeds, workdir)
    _FORKED_ANSWERS[:] = answers
    chunks = [seeds[i::processes] for i in range(processes)]
    try:
        with ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("fork")) as pool:
            results = list(pool.map(_soak_in_child, chunks, [str(tmp_path)] * processes))
    finally:
        _FORKED_ANSWERS.clear()
    count, failures, seconds = 0, [], {}
    for part_count, part_failures, part_seconds in results:
        count += part_count
        failures += part_failures
        for name, value in part_seconds.items():
            seconds[name] = seconds.get(name, 0.0) + value
    return count, failures, seconds


def _check(answers: list[Answers], seeds: tuple[int, ...], tmp_path: Path, record_property) -> None:
    started = time.perf_counter()
    count, failures, seconds = soak_in_parallel(answers, seeds, tmp_path)
    elapsed = time.perf_counter() - started
    slowest = ", ".join(f"{k} {v:.1f} s" for k, v in sorted(seconds.items(), key=lambda kv: -kv[1])[:3])
    summary = (f"seed soak: {count} judgements (seed, answer, item, dtype, case) over {len(seeds)} seeds, "
               f"{len(answers)} answer sets, in {elapsed:.1f} s (slowest items: {slowest}); "
               f"{len(failures)} false failures")
    print(summary)
    record_property("judgements", count)
    # every seed judges every item of the perfect submission and every alternative at least once
    assert count >= len(seeds) * (len(ITEMS) + len(ALTERNATIVES)), summary
    assert not failures, summary + ":\n" + "\n".join(failures[:40])


def test_do_correct_answers_pass_on_four_seeds_including_the_issues(answers, tmp_path, record_property):
    assert ISSUE_SEED in QUICK_SEEDS
    _check(answers, QUICK_SEEDS, tmp_path, record_property)


@pytest.mark.slow
def test_do_correct_answers_pass_on_the_soaks_other_seeds(answers, tmp_path, record_property):
    rest = SOAK_SEEDS[len(QUICK_SEEDS):]  # the fast test judges the first four
    assert len(set(SOAK_SEEDS)) == len(SOAK_SEEDS) >= 24 and not set(rest) & set(QUICK_SEEDS)
    _check(answers, rest, tmp_path, record_property)


def test_does_the_soak_cover_the_perfect_submission_and_every_alternative(answers):
    labels = [a.label for a in answers]
    assert sum(label.startswith("perfect ") for label in labels) == len(NOTEBOOKS)
    assert sum(label.startswith("alternative ") for label in labels) == len(ALTERNATIVES) >= 30
    covered = {name for a in answers if a.label.startswith("perfect ") for name in a.items}
    assert covered == set(ITEMS)


@pytest.mark.slow
@pytest.mark.parametrize("seed", SANDBOX_SEEDS)
def test_does_the_perfect_submission_get_full_marks_in_the_sandbox(seed):
    """The real worker (bubblewrap where available) grades all seven notebooks; every cpu row passes."""
    from autograder.grading import grade_notebook
    from autograder.runner import default_bwrap
    from autograder.sandbox import Limits

    def grade(notebook: str):
        return grade_notebook(notebook, PERFECT / notebook, seed, [DEVICE], Limits(call_timeout=30), default_bwrap())

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(grade, NOTEBOOKS))
    rows = [row for result in results for row in result.outcomes if row.device == DEVICE]
    assert len({row.item for row in rows}) == len(ITEMS)
    lost = [f"{row.name}: {row.status} {row.score:g}/{row.max_score:g}: {row.message}" for row in rows
            if row.status != "passed" or abs(row.score - row.max_score) > 1e-6]
    assert not lost, f"seed {seed}: the perfect submission lost points:\n" + "\n".join(lost)
