"""Time what the course promises: each lesson executes in under 60 s, and how long grading takes.

    python scripts/benchmark.py [--repeat 3] [--skip-notebooks] [--skip-grading]

Prints two tables of medians (this machine is shared and noisy: compare rows measured in one run):
1. each source notebook executed top to bottom in a fresh kernel (hidden tests included);
2. grading one example submission with the pytest grader, with bubblewrap and with rlimits only,
   plus the median per-notebook worker time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def time_notebooks(repeat: int) -> list[tuple[str, float, float]]:
    import nbformat
    from nbclient import NotebookClient

    from exercises.catalogue import NOTEBOOKS

    rows = []
    for name in NOTEBOOKS:
        times = []
        for _ in range(repeat):
            nb = nbformat.read(ROOT / "source" / "self_attention" / name, as_version=4)
            start = time.perf_counter()
            client = NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}})
            client.execute()
            times.append(time.perf_counter() - start)
        rows.append((name, statistics.median(times), max(times)))
    return rows


def time_grading(repeat: int) -> list[tuple[str, float, float]]:
    from autograder.grading import grade_notebook
    from autograder.runner import default_bwrap
    from autograder.sandbox import Limits, become_subreaper
    from exercises.catalogue import NOTEBOOKS

    become_subreaper()
    student = ROOT / "examples" / "submissions" / "perfect" / "self_attention"
    modes = [("rlimits", None)] + ([("bubblewrap", default_bwrap())] if default_bwrap() else [])
    rows = []
    for label, bwrap in modes:
        totals, per_notebook = [], []
        for seed in range(repeat):
            start = time.perf_counter()
            for name in NOTEBOOKS:
                result = grade_notebook(name, student / name, seed, ["cpu"], Limits(), bwrap)
                per_notebook.append(result.seconds)
                assert all(o.status in ("passed", "skipped") for o in result.outcomes), name
            totals.append(time.perf_counter() - start)
        rows.append((f"perfect submission, {label} (7 notebooks, sequential)", statistics.median(totals), max(totals)))
        rows.append((f"one notebook, {label}", statistics.median(per_notebook), max(per_notebook)))
    return rows


def print_table(title: str, rows: list[tuple[str, float, float]]) -> None:
    width = max(len(r[0]) for r in rows)
    print(f"\n{title}\n{'':-<{width + 24}}")
    print(f"{'what':<{width}} {'median s':>10} {'max s':>10}")
    for name, median, worst in rows:
        print(f"{name:<{width}} {median:>10.2f} {worst:>10.2f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--skip-notebooks", action="store_true")
    parser.add_argument("--skip-grading", action="store_true")
    args = parser.parse_args()
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    print(f"cpus: {os.cpu_count()}, load average: {os.getloadavg()[0]:.1f}, repeats: {args.repeat}")
    if not args.skip_notebooks:
        print_table("source notebooks, executed top to bottom (limit: 60 s each)", time_notebooks(args.repeat))
    if not args.skip_grading:
        print_table("grading with the pytest grader's worker (cpu)", time_grading(args.repeat))
    return 0


if __name__ == "__main__":
    sys.exit(main())
