"""``python -m autograder grade SUBMISSION... [--json PATH]``: grade with the pytest plugin, write reports.

Exit status: 0 when grading ran (whatever the score), 2 when it could not (bad arguments, no
submission found, the self-check failed, a worker that could not start, an internal error of the
grader). A submission the grader failed on is never given a score.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import pytest

from autograder.intake import expand_batch
from autograder.plugin import MANIFEST_SUFFIX
from exercises.catalogue import NOTEBOOKS
from exercises.source import find_source_dir


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m autograder", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    grade = sub.add_parser("grade", help="grade submissions (notebooks, a student's folder, or a folder of students)")
    grade.add_argument("submissions", nargs="+", type=Path, metavar="SUBMISSION")
    grade.add_argument("--json", type=Path, help="write the JSON report here")
    grade.add_argument("--junit", type=Path, help="write JUnit XML here")
    grade.add_argument("--gradescope", type=Path,
                       help="write Gradescope's results.json here (a batch: results-<student>.json beside it)")
    grade.add_argument("--csv", type=Path, help="write a CSV of grades (one row per submission)")
    grade.add_argument("--seed", type=int, help="seed of the random inputs (default: fresh each run)")
    grade.add_argument("--call-timeout", type=float, default=30.0, help="seconds per graded call (default 30)")
    grade.add_argument("--cell-timeout", type=float, default=60.0, help="seconds per notebook cell (default 60)")
    grade.add_argument("--memory-mib", type=int, default=6144, help="worker memory limit on CPU, MiB")
    grade.add_argument("--device", action="append", choices=["cpu", "cuda"], help="only this device (repeatable)")
    grade.add_argument("--no-bwrap", action="store_true", help="do not use bubblewrap")
    grade.add_argument("--no-canary", action="store_true",
                       help="skip the self-check that first grades the reference solutions through the worker")
    grade.add_argument("--source", type=Path,
                       help="the course's source/ folder (default: this repository's, else ./source)")
    grade.add_argument("-q", "--quiet", action="store_true", help="only the score tables")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        source = find_source_dir(args.source, NOTEBOOKS)
    except FileNotFoundError as exc:
        print(f"error: could not grade: {exc}", file=sys.stderr)
        return 2
    submissions: list[Path] = []
    for path in args.submissions:
        if not path.exists():
            print(f"error: {path} does not exist", file=sys.stderr)
            return 2
        submissions += expand_batch(path.resolve(), NOTEBOOKS)
    with tempfile.TemporaryDirectory(prefix="selfattn-manifest-") as tmp:
        manifest = Path(tmp) / f"grading{MANIFEST_SUFFIX}"
        manifest.write_text(json.dumps({"submissions": [str(p) for p in submissions],
                                        "source": str(source)}))
        (Path(tmp) / "pytest.ini").write_text("[pytest]\n")
        pytest_args = [str(manifest), "-c", str(Path(tmp) / "pytest.ini"), "--rootdir", tmp,
                       "-p", "no:cacheprovider", "-o", "console_output_style=count",
                       "-W", "ignore::pytest.PytestAssertRewriteWarning",
                       *(["-q", "--tb=no", "-rN"] if args.quiet else ["--tb=line", "-rfE"])]
        options = {"--selfattn-json": args.json, "--selfattn-gradescope": args.gradescope,
                   "--selfattn-csv": args.csv, "--selfattn-seed": args.seed, "--junitxml": args.junit,
                   "--selfattn-call-timeout": args.call_timeout, "--selfattn-cell-timeout": args.cell_timeout,
                   "--selfattn-memory-mib": args.memory_mib}
        for flag, value in options.items():
            if value is not None:
                pytest_args.append(f"{flag}={Path(value).resolve() if isinstance(value, Path) else value}")
        for device in args.device or []:
            pytest_args.append(f"--selfattn-device={device}")
        if args.no_bwrap:
            pytest_args.append("--selfattn-no-bwrap")
        if args.no_canary:
            pytest_args.append("--selfattn-no-canary")
        code = pytest.main(pytest_args)
    if code in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED):
        return 0
    print("error: could not grade (the grader failed, not the students: see the messages above); exit status 2",
          file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
