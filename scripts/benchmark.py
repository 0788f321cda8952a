"""Benchmark the grader against ``nbgrader autograde`` on one batch, and against the floor.

    python scripts/benchmark.py                       # 50 submissions, 3 repeats (nbgrader: ~45 min a repeat)
    python scripts/benchmark.py --nbgrader-sample 5   # nbgrader on 5 of them, its throughput extrapolated
    python scripts/benchmark.py --quick               # a functional check: N=6, nbgrader on 2, one repeat
    python scripts/benchmark.py --notebooks           # only: each source notebook executed top to bottom

One run prints, measured side by side (this machine may be shared: compare rows of one run only):

1. the batch: N submissions assembled reproducibly (``--seed``) from the bundled examples and the
   mistake fixtures (40% perfect, 20% one wrong answer, 20% several wrong, 10% empty, 10% hostile),
   graded by ``nbgrader autograde`` in a temporary course root and by ``python -m autograder grade``
   (the canary on, as users run it): wall time, time per submission, throughput, peak memory (the
   summed RSS of every process below this one, sampled every 0.2 s) and the throughput ratio;
2. whether the two graders give each submission the same score, disagreements listed by kind;
3. the floor: a fresh ``python -c "import torch"``, and one fresh process that imports torch and
   executes, per notebook of the perfect submission, the cells the grader runs
   (:func:`cells_the_grader_runs`); the grading of that one submission and its overhead over the floor.

Times are medians of ``--repeat`` runs (max beside them). ``--json PATH`` saves every number.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for _path in (ROOT, ROOT / "scripts"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

ASSIGNMENT = "self_attention"
EXAMPLES = ROOT / "examples" / "submissions"
MISTAKES = ROOT / "tests" / "fixtures" / "mistakes"

#: The mix of a batch, in this order (largest remainder, every kind present from five submissions on).
SHARES: dict[str, float] = {"perfect": 0.4, "one_wrong": 0.2, "several_wrong": 0.2, "empty": 0.1, "hostile": 0.1}
#: Which kinds nbgrader grades first when it grades a sample: those that can disagree come early.
SAMPLE_ORDER = ("perfect", "hostile", "several_wrong", "one_wrong", "empty")
SEVERAL = 3  # wrong answers in a "several_wrong" submission

#: A hostile answer (tests/test_grader_hostile.py): it patches the comparison functions to always agree
#: and returns zeros. nbgrader runs its hidden tests in the student's kernel, so it is fooled today;
#: this grader judges outside the student's process and gives the item nothing.
HOSTILE_OVERRIDES: dict[str, str] = {
    "softmax_naive": ("import torch\n"
                      "torch.allclose = lambda *a, **k: True\n"
                      "torch.testing.assert_close = lambda *a, **k: None\n"
                      "torch.equal = lambda *a, **k: True\n"
                      "def softmax_naive(x, dim=-1):\n    return x * 0\n"),
}


# --- the batch ----------------------------------------------------------------------------------


@dataclass
class Student:
    """One submission of the batch: its folder name, kind and the answer cells that differ from perfect."""

    name: str
    kind: str
    overrides: dict[str, str] | None = None  # None: the release unchanged (empty)
    mistakes: list[str] = field(default_factory=list)  # fixture names, "<item>__<mistake>"


def kind_counts(n: int) -> dict[str, int]:
    """How many submissions of each kind a batch of ``n`` has (deterministic; sums to ``n``)."""
    if n < 1:
        raise ValueError("a batch needs at least one submission")
    counts = {kind: math.floor(n * share) for kind, share in SHARES.items()}
    while sum(counts.values()) < n:  # largest remainder; ties go to the kind listed first
        kind = max(SHARES, key=lambda k: (n * SHARES[k] - counts[k], -list(SHARES).index(k)))
        counts[kind] += 1
    if n >= len(SHARES):  # every kind present: borrow from the largest
        for kind in SHARES:
            if counts[kind] == 0:
                counts[max(counts, key=counts.get)] -= 1
                counts[kind] = 1
    return counts


def mistake_fixtures(folder: Path = MISTAKES) -> dict[str, list[Path]]:
    """The known-mistake fixtures by item (``<item>__<mistake>.py``), sorted."""
    by_item: dict[str, list[Path]] = {}
    for path in sorted(folder.glob("*.py")):
        by_item.setdefault(path.stem.split("__")[0], []).append(path)
    return by_item


def plan_batch(n: int, seed: int, fixtures: dict[str, list[Path]] | None = None) -> list[Student]:
    """The batch: ``n`` students, kinds interleaved, the same for the same ``(n, seed)``."""
    from autograder.examples import ONE_WRONG_OVERRIDES

    fixtures = mistake_fixtures() if fixtures is None else fixtures
    rng = random.Random(f"benchmark-{seed}")
    items = sorted(fixtures)
    remaining = dict(kind_counts(n))
    kinds: list[str] = []
    while len(kinds) < n:  # round robin over the kinds, so any prefix of the batch is mixed
        for kind in SHARES:
            if remaining[kind]:
                kinds.append(kind)
                remaining[kind] -= 1
    students: list[Student] = []
    seen = {kind: 0 for kind in SHARES}
    for index, kind in enumerate(kinds):
        name = f"s{index + 1:03d}_{kind}"
        nth, seen[kind] = seen[kind], seen[kind] + 1
        if kind == "perfect":
            students.append(Student(name, kind, {}))
        elif kind == "empty":
            students.append(Student(name, kind, None))
        elif kind == "hostile":
            students.append(Student(name, kind, dict(HOSTILE_OVERRIDES), ["softmax_naive__patches_comparisons"]))
        elif kind == "one_wrong" and nth == 0:  # the bundled example first
            students.append(Student(name, kind, dict(ONE_WRONG_OVERRIDES),
                                    ["train_language_model__no_zero_grad"]))
        else:
            chosen = rng.sample(items, 1 if kind == "one_wrong" else min(SEVERAL, len(items)))
            paths = [rng.choice(fixtures[item]) for item in chosen]
            students.append(Student(name, kind, {p.stem.split("__")[0]: p.read_text(encoding="utf-8") for p in paths},
                                    [p.stem for p in paths]))
    return students


def write_batch(students: Sequence[Student], folder: Path, root: Path = ROOT) -> Path:
    """Write ``folder/<student>/self_attention/*.ipynb`` (nbgrader's ``submitted/`` layout)."""
    from autograder.examples import build_students

    files = build_students(root / "source" / ASSIGNMENT, root / "release" / ASSIGNMENT,
                           {s.name: s.overrides for s in students})
    for student, notebooks in files.items():
        target = folder / student / ASSIGNMENT
        target.mkdir(parents=True, exist_ok=True)
        for name, text in notebooks.items():
            (target / name).write_text(text, encoding="utf-8")
    return folder


def nbgrader_sample(students: Sequence[Student], k: int) -> list[Student]:
    """``k`` students chosen across the kinds (round robin in :data:`SAMPLE_ORDER`), in batch order."""
    queues = {kind: [s for s in students if s.kind == kind] for kind in SAMPLE_ORDER}
    chosen: list[Student] = []
    while len(chosen) < min(k, len(students)):
        for kind in SAMPLE_ORDER:
            if queues[kind] and len(chosen) < k:
                chosen.append(queues[kind].pop(0))
    order = {s.name: i for i, s in enumerate(students)}
    return sorted(chosen, key=lambda s: order[s.name])


# --- numbers ------------------------------------------------------------------------------------


def summary(values: Sequence[float]) -> dict[str, float]:
    """Median and max of the repeats."""
    return {"median": statistics.median(values), "max": max(values)}


def throughput(submissions: int, seconds: float) -> float:
    """Submissions per minute."""
    return 60.0 * submissions / seconds


def extrapolate(measured_on: int, seconds: float, n: int) -> float:
    """Wall time for ``n`` submissions at the throughput measured on ``measured_on`` of them."""
    return seconds * n / measured_on


def overhead(seconds: float, floor: float) -> dict[str, float]:
    """How far a time is above the floor: ratio and seconds."""
    return {"ratio": seconds / floor, "seconds": seconds - floor}


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain-text table: first column left-aligned, the others right-aligned; floats with 2 decimals."""
    def cell(value: object) -> str:
        if value is None:
            return "-"
        return f"{value:.2f}" if isinstance(value, float) else str(value)

    text = [[cell(v) for v in row] for row in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in text)) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        pairs = enumerate(zip(values, widths, strict=True))
        return "  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in pairs)

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in text)])


# --- measuring a process tree -------------------------------------------------------------------


def descendants_rss(root_pid: int) -> int:
    """Summed resident memory (bytes) of every process below ``root_pid`` (read from /proc)."""
    parent: dict[int, int] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                fields = fh.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue  # the process ended meanwhile
        parent[int(entry)] = int(fields[1])
        rss[int(entry)] = int(fields[21])
    children: dict[int, list[int]] = {}
    for pid, ppid in parent.items():
        children.setdefault(ppid, []).append(pid)
    total, stack = 0, list(children.get(root_pid, []))
    while stack:
        pid = stack.pop()
        total += rss[pid]
        stack += children.get(pid, [])
    return total * os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """While in the ``with`` block, sample the summed RSS of this process's descendants every ``interval``."""

    def __init__(self, interval: float = 0.2) -> None:
        self.interval, self.peak = interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, descendants_rss(os.getpid()))
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class Measured:
    """One timed run: wall seconds, peak summed RSS in MiB, and what it produced."""

    seconds: float
    peak_mib: float
    scores: dict[str, float | None] = field(default_factory=dict)  # student -> total (None: not graded)
    items: dict[str, dict[str, float]] = field(default_factory=dict)  # student -> item -> points


def run_logged(cmd: list[str], cwd: Path, log: Path, env: dict[str, str] | None = None,
               timeout: float | None = None) -> tuple[float, float, int]:
    """Run ``cmd`` (output to ``log``); return wall seconds, peak MiB of its process tree, exit status."""
    with PeakMemory() as memory, open(log, "ab") as out:
        start = time.perf_counter()
        code = subprocess.run(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=timeout).returncode
        seconds = time.perf_counter() - start
    return seconds, memory.peak / 2**20, code


def tail(path: Path, chars: int = 3000) -> str:
    return path.read_text(encoding="utf-8", errors="replace")[-chars:]


def python_env() -> dict[str, str]:
    """This interpreter's ``bin`` first on PATH (nbgrader runs ``alembic`` from it), the repository importable."""
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    return env


# --- nbgrader -----------------------------------------------------------------------------------


def prepare_nbgrader_course(dest: Path, chain: str = "stock", seed: int = 0, grader_args: Sequence[str] = ()) -> Path:
    """A course root (config + source/) after ``nbgrader generate_assignment`` (not timed).

    ``chain="stock"``: autograde with nbgrader's stock chain (``release.STOCK_AUTOGRADE``, the student's
    kernel). ``chain="course"``: the course's own configuration (the sandboxed grader, one batch per run),
    with this run's ``seed`` and the grader's ``grader_args`` (``--jobs``, ``--device``), as the CLI gets them.
    """
    import release

    root = release.prepare_course(dest)
    with open(root / "nbgrader_config.py", "a", encoding="utf-8") as fh:
        if chain == "stock":
            fh.write(f"\n{release.STOCK_AUTOGRADE}\n")
        else:
            fh.write(f"\nc.SandboxAutograde.seed = {seed}\nc.SandboxAutograde.grader_args = {list(grader_args)!r}\n")
    release.generate_assignment(root)
    return root


def grade_with_nbgrader(template: Path, batch: Path, students: Sequence[str], work: Path, jobs: int) -> Measured:
    """``nbgrader autograde`` of ``students`` in a fresh copy of the course root ``template``; scores: its gradebook.

    One job: one ``nbgrader autograde self_attention`` over every submission (what an instructor types).
    More: one ``--student`` run each, ``jobs`` at a time (sqlite may be busy: retried once with ``--force``).
    """
    course = work / "course"
    shutil.rmtree(course, ignore_errors=True)
    shutil.copytree(template, course)
    for student in students:
        shutil.copytree(batch / student, course / "submitted" / student)
    log = work / "nbgrader.log"
    cmd = [sys.executable, "-m", "nbgrader", "autograde", ASSIGNMENT]
    env = python_env()
    if jobs <= 1:
        seconds, peak, code = run_logged(cmd, course, log, env)
        failed = [] if code == 0 else list(students)
    else:
        from concurrent.futures import ThreadPoolExecutor

        def one(student: str) -> int:
            argv = [*cmd, "--student", student]
            result = subprocess.run(argv, cwd=course, env=env, capture_output=True, text=True)
            if result.returncode and "database is locked" in result.stdout + result.stderr:
                result = subprocess.run([*argv, "--force"], cwd=course, env=env, capture_output=True, text=True)
            with open(log, "a", encoding="utf-8") as fh:
                fh.write(result.stdout + result.stderr)
            return result.returncode

        with PeakMemory() as memory, ThreadPoolExecutor(jobs) as pool:
            start = time.perf_counter()
            codes = list(pool.map(one, students))
            seconds = time.perf_counter() - start
        peak = memory.peak / 2**20
        failed = [s for s, c in zip(students, codes, strict=True) if c]
    if failed:
        raise RuntimeError(f"nbgrader autograde failed for {failed}:\n{tail(log)}")
    scores, items = nbgrader_scores(course, students)
    return Measured(seconds, peak, scores, items)


def nbgrader_scores(course: Path, students: Sequence[str]) -> tuple[dict[str, float | None], dict[str, dict]]:
    """Total and per-item points of each student, read with ``nbgrader.api.Gradebook``."""
    from nbgrader.api import Gradebook, MissingEntry

    scores: dict[str, float | None] = {}
    items: dict[str, dict[str, float]] = {}
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}", "self-attention") as gb:
        for student in students:
            try:
                submission = gb.find_submission(ASSIGNMENT, student)
            except MissingEntry:
                scores[student] = None  # nbgrader made no grade: reported, never counted as agreement
                continue
            scores[student] = round(float(submission.score), 4)
            items[student] = {grade.name.removeprefix("test_"): float(grade.score)
                              for notebook in submission.notebooks for grade in notebook.grades}
    if all(v is None for v in scores.values()):
        raise RuntimeError(f"nbgrader's gradebook in {course} has no grades (was it run from the course root?)")
    return scores, items


# --- this grader --------------------------------------------------------------------------------


def grade_with_grader(batch: Path, work: Path, seed: int, jobs: int, devices: Sequence[str] = (),
                      canary: bool = True) -> Measured:
    """``python -m autograder grade BATCH --json ... --seed S --jobs J`` (canary on), timed as a subprocess."""
    report = work / "grader.json"
    report.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "autograder", "grade", str(batch), "--json", str(report), "--seed", str(seed),
           "--jobs", str(jobs), "-q", *(f"--device={d}" for d in devices), *([] if canary else ["--no-canary"])]
    log = work / "grader.log"
    seconds, peak, code = run_logged(cmd, ROOT, log, python_env())
    if code != 0 or not report.exists():
        raise RuntimeError(f"the grader exited with status {code}:\n{tail(log)}")
    return Measured(seconds, peak, *grader_scores(json.loads(report.read_text(encoding="utf-8"))))


def grader_scores(report: dict) -> tuple[dict[str, float | None], dict[str, dict[str, float]]]:
    """Total and per-item points by student folder name from the grader's JSON (not graded: None)."""
    scores: dict[str, float | None] = {}
    items: dict[str, dict[str, float]] = {}
    for sub in report.get("submissions", []):
        name = Path(sub["path"]).name
        scores[name] = round(float(sub["score"]), 4)
        for test in sub["tests"]:
            items.setdefault(name, {}).setdefault(test["item"], 0.0)
            items[name][test["item"]] += float(test["score"])
    for sub in report.get("not_graded", []):
        scores[Path(sub["path"]).name] = None
    return scores, items


# --- agreement ----------------------------------------------------------------------------------


def agreement(students: Sequence[Student], nbgrader: Measured, grader: Measured) -> list[dict]:
    """Per student nbgrader graded: both totals, whether they agree, and the items whose points differ."""
    rows = []
    for s in students:
        if s.name not in nbgrader.scores:
            continue
        a, b = nbgrader.scores[s.name], grader.scores.get(s.name)
        items_a, items_b = nbgrader.items.get(s.name, {}), grader.items.get(s.name, {})
        differ = sorted(k for k in set(items_a) | set(items_b)
                        if abs(items_a.get(k, 0.0) - items_b.get(k, 0.0)) > 1e-6)
        rows.append({"student": s.name, "kind": s.kind, "mistakes": s.mistakes, "nbgrader": a, "grader": b,
                     "agree": a is not None and b is not None and abs(a - b) < 1e-6,
                     "items": {k: [items_a.get(k), items_b.get(k)] for k in differ}})
    return rows


# --- the floor ----------------------------------------------------------------------------------


def cells_the_grader_runs(notebook: str, path: Path) -> list:
    """The cells the grader executes for ``notebook`` of a submission at ``path`` (the floor follows this).

    The given cells and the answers (``autograder.intake.prepare``); where the grader has
    ``autograder/needed.py``, only the given cells the graded code needs, chosen as ``grading.py`` does.
    """
    from autograder import grading
    from autograder.intake import prepare, read_student_notebook
    from exercises.catalogue import items_in
    from exercises.source import load_source

    cells = prepare(load_source(notebook), read_student_notebook(path)).cells
    # Asked of grading.py itself, not by trying to import autograder.needed: an editable install of
    # another checkout can supply a module this one lacks.
    if not hasattr(grading, "needed_cells"):  # a grader that runs every given cell
        return cells
    _, calls = grading.build_calls(items_in(notebook), ["cpu"], 0)
    keep = grading.needed_cells(cells, grading.program_names([c.program for c in calls]))
    return [cell for cell, kept in zip(cells, keep, strict=True) if kept]


FLOOR_PROGRAM = r"""
import json, sys, time, traceback
start = time.perf_counter()
import torch
imported = time.perf_counter()
plan = json.load(open(sys.argv[1], encoding="utf-8"))
out = {"import_torch": imported - start, "notebooks": {}, "errors": []}
for notebook, cells in plan.items():
    namespace = {"__name__": "__main__"}
    t = time.perf_counter()
    for gid, source in cells:
        try:
            exec(compile(source, f"<cell {gid}>", "exec"), namespace)
        except BaseException:
            out["errors"].append(f"{notebook} {gid}: " + traceback.format_exc(limit=1)[-300:])
    out["notebooks"][notebook] = time.perf_counter() - t
print("@@FLOOR@@" + json.dumps(out))
"""


def floor_env() -> dict[str, str]:
    """The worker's environment where it matters for speed: one OpenMP thread, no display."""
    return {**python_env(), "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}


def measure_floor(submission: Path, work: Path) -> dict:
    """``python -c "import torch"`` and one fresh process running each notebook's graded cells: seconds."""
    from exercises.catalogue import NOTEBOOKS

    plan = {nb: [(c.grade_id, c.source) for c in cells_the_grader_runs(nb, submission / ASSIGNMENT / nb)]
            for nb in NOTEBOOKS}
    plan_path = work / "floor_plan.json"
    plan_path.write_text(json.dumps(plan), encoding="utf-8")
    cwd = work / "floor"
    cwd.mkdir(exist_ok=True)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import torch"], cwd=cwd, env=floor_env(), check=True)
    import_torch = time.perf_counter() - start
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", FLOOR_PROGRAM, str(plan_path)], cwd=cwd, env=floor_env(),
                          capture_output=True, text=True)
    total = time.perf_counter() - start
    marker = proc.stdout.rfind("@@FLOOR@@")
    if proc.returncode or marker < 0:
        raise RuntimeError(f"the floor process failed:\n{proc.stdout[-2000:]}{proc.stderr[-3000:]}")
    inside = json.loads(proc.stdout[marker + len("@@FLOOR@@"):])
    return {"python_import_torch": import_torch, "floor": total, "cells": sum(inside["notebooks"].values()),
            "import_torch_inside": inside["import_torch"], "notebooks": inside["notebooks"],
            "cells_run": sum(len(c) for c in plan.values()), "errors": inside["errors"]}


# --- the source notebooks (the --notebooks mode) ------------------------------------------------


def time_notebooks(repeat: int) -> list[tuple[str, float, float]]:
    """Each source notebook executed top to bottom in a fresh kernel (hidden tests included): median, max."""
    import nbformat
    from nbclient import NotebookClient

    from exercises.catalogue import NOTEBOOKS

    rows = []
    for name in NOTEBOOKS:
        times = []
        for _ in range(repeat):
            nb = nbformat.read(ROOT / "source" / ASSIGNMENT / name, as_version=4)
            start = time.perf_counter()
            client = NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}})
            client.execute()
            times.append(time.perf_counter() - start)
        rows.append((name, statistics.median(times), max(times)))
    return rows


# --- the run ------------------------------------------------------------------------------------


def machine() -> dict:
    import torch

    return {"cores": os.cpu_count(), "load_average": os.getloadavg(), "torch": torch.__version__,
            "python": platform.python_version(), "cuda": torch.cuda.is_available(),
            "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu only"}


def run_benchmark(args: argparse.Namespace) -> dict:
    """Every measurement of one run, as a dict (what ``--json`` saves)."""
    students = plan_batch(args.n, args.seed)
    sample = nbgrader_sample(students, args.nbgrader_sample or args.n)
    result: dict = {"machine": machine(), "n": args.n, "seed": args.seed, "jobs": args.jobs, "repeat": args.repeat,
                    "kinds": kind_counts(args.n),
                    "students": [{k: v for k, v in asdict(s).items() if k != "overrides"} for s in students],
                    "nbgrader_sample": [s.name for s in sample], "nbgrader_jobs": args.nbgrader_jobs,
                    "nbgrader_chain": args.nbgrader_chain}
    with tempfile.TemporaryDirectory(prefix="selfattn-bench-") as tmp:
        work = Path(tmp)
        batch = write_batch(students, work / "batch")
        grader_args = ["--jobs", str(args.jobs), *(f"--device={d}" for d in args.device)]
        template = None if args.skip_nbgrader else prepare_nbgrader_course(work / "template", args.nbgrader_chain,
                                                                          args.seed, grader_args)
        grader_runs: list[Measured] = []
        nbgrader_runs: list[Measured] = []
        single: list[float] = []
        single_no_canary: list[float] = []
        floors: list[dict] = []
        for r in range(args.repeat):
            print(f"[repeat {r + 1}/{args.repeat}] grader on {args.n} ...", flush=True)
            grader_runs.append(grade_with_grader(batch, work, args.seed, args.jobs, args.device))
            if template is not None:
                print(f"[repeat {r + 1}/{args.repeat}] nbgrader on {len(sample)} ...", flush=True)
                nbgrader_runs.append(grade_with_nbgrader(template, batch, [s.name for s in sample], work,
                                                         args.nbgrader_jobs))
            if not args.skip_floor:
                print(f"[repeat {r + 1}/{args.repeat}] floor and one submission ...", flush=True)
                floors.append(measure_floor(EXAMPLES / "perfect", work))
                single.append(grade_with_grader(EXAMPLES / "perfect", work, args.seed, args.jobs, args.device).seconds)
                if not args.quick:
                    single_no_canary.append(grade_with_grader(EXAMPLES / "perfect", work, args.seed, args.jobs,
                                                              args.device, canary=False).seconds)
    result["grader"] = runs_summary(grader_runs, args.n, args.n)
    result["grader"]["scores_stable"] = all(m.scores == grader_runs[0].scores for m in grader_runs)
    if nbgrader_runs:
        result["nbgrader"] = runs_summary(nbgrader_runs, len(sample), args.n)
        result["nbgrader"]["scores_stable"] = all(m.scores == nbgrader_runs[0].scores for m in nbgrader_runs)
        result["ratio"] = result["grader"]["throughput"]["median"] / result["nbgrader"]["throughput"]["median"]
        result["agreement"] = agreement(students, nbgrader_runs[-1], grader_runs[-1])
        result["nbgrader_scores"] = nbgrader_runs[-1].scores
    result["grader_scores"] = grader_runs[-1].scores
    if floors:
        floor = summary([f["floor"] for f in floors])
        result["floor"] = {"floor": floor, "python_import_torch": summary([f["python_import_torch"] for f in floors]),
                           "cells": summary([f["cells"] for f in floors]), "cells_run": floors[-1]["cells_run"],
                           "notebooks": floors[-1]["notebooks"], "errors": floors[-1]["errors"]}
        result["single"] = summary(single)
        result["single_overhead"] = overhead(result["single"]["median"], floor["median"])
        if single_no_canary:
            result["single_no_canary"] = summary(single_no_canary)
    return result


def runs_summary(runs: Sequence[Measured], measured_on: int, n: int) -> dict:
    """Wall (extrapolated to ``n`` when measured on fewer), per submission, throughput and peak memory."""
    walls = [extrapolate(measured_on, m.seconds, n) for m in runs]
    return {"measured_on": measured_on, "n": n, "measured_seconds": summary([m.seconds for m in runs]),
            "wall": summary(walls), "per_submission": summary([m.seconds / measured_on for m in runs]),
            "throughput": summary([throughput(measured_on, m.seconds) for m in runs]),
            "peak_mib": summary([m.peak_mib for m in runs])}


def report(result: dict) -> str:
    """The printed tables."""
    out = []
    n = result["n"]
    kinds = ", ".join(f"{v} {k}" for k, v in result["kinds"].items())
    out.append(f"\nbatch: {n} submissions ({kinds}), seed {result['seed']}, repeats {result['repeat']} "
               f"(median / max), this grader with --jobs {result['jobs']}, the canary on")
    headers = ["grader", "graded", f"wall s, {n}", "max", "s/submission", "submissions/min", "peak MiB", "ratio"]
    rows = []
    nb = result.get("nbgrader")
    if nb:
        extrapolated = nb["measured_on"] < n
        label = (f"measured on {nb['measured_on']} of {n}, extrapolated" if extrapolated else f"all {n}")
        jobs = result["nbgrader_jobs"]
        chain = result.get("nbgrader_chain", "stock")
        rows.append([f"nbgrader autograde ({chain})" + (f" ({jobs} at a time)" if jobs > 1 else ""),
                     label, nb["wall"]["median"], nb["wall"]["max"], nb["per_submission"]["median"],
                     nb["throughput"]["median"], nb["peak_mib"]["median"], 1.0])
    g = result["grader"]
    rows.append(["python -m autograder grade", f"all {n}", g["wall"]["median"], g["wall"]["max"],
                 g["per_submission"]["median"], g["throughput"]["median"], g["peak_mib"]["median"],
                 result.get("ratio")])
    out.append(format_table(headers, rows))
    out.append("ratio: this grader's throughput / nbgrader's (higher is faster); peak MiB: summed RSS of the "
               "grader (or nbgrader) and every process below it")
    for name, runs in (("this grader", g), ("nbgrader", nb)):
        if runs and not runs["scores_stable"]:
            out.append(f"warning: {name} gave different scores in different repeats (the last repeat's are compared)")
    if nb and nb["measured_on"] < n:
        out.append(f"nbgrader: measured on {nb['measured_on']} of {n} submissions "
                   f"({', '.join(result['nbgrader_sample'])}) in {nb['measured_seconds']['median']:.1f} s (median), "
                   f"extrapolated to {n} from its throughput")
    if "agreement" in result:
        out.append(agreement_report(result["agreement"]))
    if "floor" in result:
        f = result["floor"]
        out.append(f"\nthe floor: one fresh process importing torch and executing the {f['cells_run']} cells the "
                   "grader runs for the perfect submission's notebooks (OMP_NUM_THREADS=1, like the worker)")
        torch_only = f["python_import_torch"]
        rows = [["python -c \"import torch\"", torch_only["median"], torch_only["max"], None],
                ["floor: torch + every notebook's cells", f["floor"]["median"], f["floor"]["max"], 1.0],
                ["  of which the cells", f["cells"]["median"], f["cells"]["max"], None],
                ["one submission graded (perfect, canary on)", result["single"]["median"], result["single"]["max"],
                 result["single_overhead"]["ratio"]]]
        if "single_no_canary" in result:
            s = result["single_no_canary"]
            ratio = s["median"] / f["floor"]["median"]
            rows.append(["one submission graded, --no-canary", s["median"], s["max"], ratio])
        out.append(format_table(["what", "median s", "max s", "x floor"], rows))
        o = result["single_overhead"]
        out.append(f"overhead over the floor: {o['ratio']:.2f}x, {o['seconds']:+.1f} s")
        out.append("floor per notebook (cells only, s): "
                   + ", ".join(f"{name.split('_')[0]} {sec:.1f}" for name, sec in f["notebooks"].items()))
        if f["errors"]:
            out.append("cells that raised in the floor process: " + "; ".join(f["errors"]))
    return "\n".join(out)


def points(value: float | None) -> str:
    """Points as printed: at most 4 significant decimals; ``no grade`` for None."""
    return "no grade" if value is None else f"{value:.4g}"


def agreement_report(rows: list[dict]) -> str:
    """Agreement counts by kind, then every disagreement with the items whose points differ."""
    out = [f"\nscores, nbgrader vs this grader, on the {len(rows)} submissions nbgrader graded:"]
    table = []
    for kind in SHARES:
        mine = [r for r in rows if r["kind"] == kind]
        if mine:
            table.append([kind, len(mine), sum(r["agree"] for r in mine), sum(not r["agree"] for r in mine)])
    table.append(["all", len(rows), sum(r["agree"] for r in rows), sum(not r["agree"] for r in rows)])
    out.append(format_table(["kind", "compared", "agree", "disagree"], table))
    for r in rows:
        if not r["agree"]:
            items = ", ".join(f"{k} {points(a)}/{points(b)}" for k, (a, b) in r["items"].items())
            what = ", ".join(r["mistakes"]) or r["kind"]
            a, b = points(r["nbgrader"]), points(r["grader"])
            out.append(f"  differs: {r['student']} ({what}): nbgrader {a}, this grader {b}; "
                       f"items (nbgrader/grader): {items or '-'}")
    if any(not r["agree"] and r["kind"] in ("one_wrong", "several_wrong") for r in rows):
        out.append("  by design for wrong answers: this grader gives partial credit per case and grades an item that "
                   "calls a wrong one with a stand-in for it; nbgrader's test cell is all or nothing")
    if any(r["kind"] == "hostile" and not r["agree"] for r in rows):
        out.append("  expected for hostile: nbgrader's stock chain runs its hidden tests in the student's kernel, so "
                   "an answer that patches torch.allclose/torch.equal fools it; this grader judges outside that "
                   "process (the course's nbgrader_config.py makes `nbgrader autograde` use this grader's scores)")
    return "\n".join(out)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", "--submissions", dest="n", type=int, default=50, help="batch size (default 50)")
    parser.add_argument("--nbgrader-sample", type=int, metavar="K",
                        help="nbgrader grades K of the N (across the kinds), throughput extrapolated (default: all)")
    parser.add_argument("--nbgrader-jobs", type=int, default=1, metavar="J",
                        help="nbgrader runs: 1 (default) is one `nbgrader autograde` over all; J>1 runs one "
                             "`--student` process each, J at a time")
    parser.add_argument("--nbgrader-chain", choices=("stock", "course"), default="stock",
                        help="nbgrader's autograde chain: stock (default; Execute in the student's kernel) or "
                             "course (the course's nbgrader_config.py: the sandboxed grader, a class as one batch)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each measurement (medians; default 3)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="the grader's --jobs (default: cores)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the batch and of the grader (default 0)")
    parser.add_argument("--device", action="append", default=[], choices=("cpu", "cuda"),
                        help="passed to the grader (repeatable; default: the grader's, every device present)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="save every number here")
    parser.add_argument("--quick", action="store_true",
                        help="a short functional run: N=6, nbgrader on 2, one repeat, no --no-canary row")
    parser.add_argument("--skip-nbgrader", action="store_true", help="only this grader and the floor")
    parser.add_argument("--skip-floor", action="store_true", help="no floor and no single-submission timing")
    parser.add_argument("--notebooks", action="store_true",
                        help="only: each source notebook executed top to bottom (the course's limit is 60 s)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.quick:
        args.n, args.nbgrader_sample, args.repeat = 6, 2, 1
    if args.n < 1 or args.repeat < 1 or (args.nbgrader_sample is not None and args.nbgrader_sample < 1):
        print("error: --submissions, --repeat and --nbgrader-sample must be at least 1", file=sys.stderr)
        return 2
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    m = machine()
    print(f"machine: {m['cores']} cores, load average {m['load_average'][0]:.2f} {m['load_average'][1]:.2f} "
          f"{m['load_average'][2]:.2f}, torch {m['torch']}, python {m['python']}, {m['device']}", flush=True)
    if args.notebooks:
        rows = time_notebooks(args.repeat)
        print(f"\nsource notebooks, executed top to bottom (limit: 60 s each), {args.repeat} repeats")
        print(format_table(["notebook", "median s", "max s"], rows))
        return 0
    started = time.perf_counter()
    try:
        result = run_benchmark(args)
    except (RuntimeError, subprocess.CalledProcessError) as exc:
        print(f"error: the benchmark could not finish: {exc}", file=sys.stderr)
        return 2
    result["benchmark_seconds"] = time.perf_counter() - started
    print(report(result))
    print(f"\n(the benchmark took {result['benchmark_seconds']:.0f} s)")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
