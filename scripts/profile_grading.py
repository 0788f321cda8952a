"""Where grading time goes: one submission graded with timers around each stage, printed as a table.

    python scripts/profile_grading.py [SUBMISSION] [--seed N] [--no-bwrap] [--cold-workers] [--all-cells]

``--cold-workers --all-cells`` is how grading ran before the warm pool and the needed-cells choice.

SUBMISSION defaults to ``examples/submissions/perfect``; try ``examples/submissions/one_wrong`` for
a submission with a wrong answer (diagnosis and stand-in re-grades then show up). The stages:

- worker start: from launching the worker to its ``ready`` event (interpreter, torch import, plan,
  inputs, privilege drop);
- cells: running the notebook's cells in the worker (given and answer cells);
- calls: the graded calls in the worker;
- worker other: the rest of the worker's life (writing the plan, tearing down, between events);
- reference, comparison, diagnosis: in the grader process (the grader computes the references in a
  thread while the worker runs; here they are computed after it, so that the stages add up);
- stand-in re-grades: the second worker run for items whose dependency failed (all stages inside it);
- report: the pytest plugin's tables and files (the CLI run minus the notebooks' time).

A measurement, not a test: it prints what it saw on this machine, now.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from autograder import grading, runner  # noqa: E402
from autograder.intake import find_notebooks  # noqa: E402
from autograder.pool import WorkerPool  # noqa: E402
from autograder.sandbox import Limits, become_subreaper  # noqa: E402
from exercises.catalogue import NOTEBOOKS  # noqa: E402

TOTALS: dict[str, float] = defaultdict(float)
COUNTS: dict[str, int] = defaultdict(int)


def _timed(stage: str, fn):
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            TOTALS[stage] += time.perf_counter() - start
            COUNTS[stage] += 1
    return wrapper


def _watch_events():
    """Split each worker's life by its progress events (each carries the worker's clock, ``t``)."""
    original_launch, original_read = runner.sandbox.launch, runner._read_events
    launched_at: dict[str, float] = {}

    def launch(workdir, *args, **kwargs):
        launched_at[str(workdir)] = time.time()
        return original_launch(workdir, *args, **kwargs)

    def read(path, offset):
        events, new_offset = original_read(path, offset)
        start = launched_at.get(str(path.parent))
        for event in events:
            t = event.get("t")
            if not isinstance(t, (int, float)) or start is None:
                continue
            kind = event.get("event")
            if kind == "ready":
                TOTALS["worker start"] += t - start
                COUNTS["worker start"] += 1
            elif kind in ("cell_start", "call_start"):
                launched_at[f"{path.parent}:step"] = t
            elif kind in ("cell_done", "call_done"):
                began = launched_at.get(f"{path.parent}:step", t)
                TOTALS["cells" if kind == "cell_done" else "calls"] += t - began
        return events, new_offset

    original_start = runner.Zygote.start

    def start(zygote, workdir):
        launched_at[str(workdir)] = time.time()
        return original_start(zygote, workdir)

    runner.sandbox.launch, runner._read_events, runner.Zygote.start = launch, read, start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("submission", nargs="?", type=Path, default=ROOT / "examples" / "submissions" / "perfect")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--no-bwrap", action="store_true")
    parser.add_argument("--cold-workers", action="store_true", help="a fresh worker process per notebook")
    parser.add_argument("--all-cells", action="store_true", help="run every given cell (the lessons' demos too)")
    args = parser.parse_args()
    become_subreaper()
    _watch_events()
    grading.run_calls = _timed("worker runs (all)", grading.run_calls)
    grading.ReferenceCache.fill = lambda self, plan: None  # sequential, so the stages add up (see the docstring)
    grading.reference_outputs = _timed("reference", grading.reference_outputs)
    grading.judge = _timed("comparison", grading.judge)
    grading.diagnose = _timed("diagnosis", grading.diagnose)
    grading._isolate_failures = _timed("stand-in re-grades", grading._isolate_failures)
    bwrap = None if args.no_bwrap else runner.default_bwrap()
    found = find_notebooks(args.submission.resolve(), NOTEBOOKS)
    pool = None if args.cold_workers else WorkerPool(Limits(), bwrap)
    if pool is not None:  # what a batch pays once per slot: the zygote's start
        warm_up = time.perf_counter()
        pool.release(pool.acquire())
        while not pool.idle[0].ready:
            time.sleep(0.01)
        print(f"warm worker ready in {time.perf_counter() - warm_up:.2f} s (once per slot, not counted below)")
    started = time.perf_counter()
    for notebook in NOTEBOOKS:
        grading.grade_notebook(notebook, found.get(notebook), args.seed, ["cpu"], Limits(), bwrap, pool=pool,
                               all_cells=args.all_cells)
    total = time.perf_counter() - started
    if pool is not None:
        pool.shutdown()
    worker = TOTALS["worker runs (all)"]
    rows = [("worker start (to ready)", TOTALS["worker start"], COUNTS["worker start"]),
            ("cells", TOTALS["cells"], None), ("calls", TOTALS["calls"], None),
            ("worker other", worker - TOTALS["worker start"] - TOTALS["cells"] - TOTALS["calls"], None),
            ("reference", TOTALS["reference"], COUNTS["reference"]),
            ("comparison", TOTALS["comparison"], COUNTS["comparison"]),
            ("diagnosis", TOTALS["diagnosis"], COUNTS["diagnosis"]),
            ("stand-in re-grades (inside the above)", TOTALS["stand-in re-grades"], COUNTS["stand-in re-grades"]),
            ("rest of the grader", total - worker - TOTALS["reference"] - TOTALS["comparison"] - TOTALS["diagnosis"],
             None)]
    print(f"{args.submission.name}: {len(NOTEBOOKS)} notebooks graded sequentially on cpu in {total:.2f} s "
          f"({'bubblewrap' if bwrap else 'rlimits'})")
    print(f"{'stage':<40} {'seconds':>8} {'share':>6} {'count':>6}")
    for name, seconds, count in rows:
        print(f"{name:<40} {seconds:>8.2f} {seconds / total:>6.0%} {'' if count is None else count:>6}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
