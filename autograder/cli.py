"""``python -m autograder grade SUBMISSION... [--json PATH]``: grade with the pytest plugin, write reports.

``python -m autograder merge SHARD.json... --json/--csv/--junit/--gradescope OUT``: combine the JSON
reports of ``grade --shard I/N`` runs into the reports of one unsharded run (autograder/merge.py).

Exit status: 0 when grading ran (whatever the score), 2 when it could not (bad arguments, no
submission found, the self-check failed, a worker that could not start, an internal error of the
grader). A submission the grader failed on is never given a score.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import sys
import tempfile
from pathlib import Path

import pytest

from autograder import merge, shard
from autograder.intake import expand_batch
from autograder.options import MANIFEST_SUFFIX, add_cli_options, from_cli
from exercises.catalogue import NOTEBOOKS
from exercises.i18n import language, tr
from exercises.source import find_source_dir


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m autograder", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    grade = sub.add_parser("grade", help="grade submissions (notebooks, a student's folder, or a folder of students)")
    grade.add_argument("submissions", nargs="+", type=Path, metavar="SUBMISSION")
    add_cli_options(grade)
    grade.add_argument("--junit", type=Path, metavar="PATH", help="write JUnit XML here (pytest's --junitxml)")
    grade.add_argument("--source", type=Path, metavar="DIR",
                       help="the course's source/ folder (default: this repository's, else ./source)")
    grade.add_argument("-q", "--quiet", action="store_true", help="only the score tables")
    merge.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "merge":
        return merge.main(args)
    own = args.lang if args.lang in ("en", "zh") else "en"  # the CLI's own lines: --lang forces them, else English
    try:
        source = find_source_dir(args.source, NOTEBOOKS)
    except FileNotFoundError as exc:
        print(tr("error: could not grade: {why}", own).format(why=exc), file=sys.stderr)
        return 2
    submissions: list[Path] = []
    names: list[str] = []  # relative to the batch: what --shard slices by (autograder/shard.py)
    for path in args.submissions:
        if not path.exists():
            print(tr("error: {path} does not exist", own).format(path=path), file=sys.stderr)
            return 2
        found = expand_batch(path.resolve(), NOTEBOOKS)
        submissions += found
        names += [shard.batch_name(path.resolve(), p) for p in found]
    data = {"submissions": [str(p) for p in submissions], "names": names, "source": str(source),
            "options": from_cli(args)}
    if args.shard:
        try:  # the plugin slices again from the manifest; checked here first for a clear message
            with language(own):
                mine, batch = shard.plan(data, data["options"])
        except shard.ShardError as exc:
            print(tr("error: {why}", own).format(why=exc), file=sys.stderr)
            return 2
        if not mine:  # more shards than submissions: an empty report, so that the merge finds every shard
            merge.write_outputs(merge.empty_shard_report(batch, args.seed, args.device), json_path=args.json,
                                csv_path=args.csv, junit_path=args.junit, gradescope_path=args.gradescope)
            print(tr("shard {shard}: no submission falls to this shard; wrote empty reports", own).format(
                shard=args.shard))
            return 0
    with tempfile.TemporaryDirectory(prefix="selfattn-manifest-") as tmp:
        manifest = Path(tmp) / f"grading{MANIFEST_SUFFIX}"
        manifest.write_text(json.dumps(data))
        (Path(tmp) / "pytest.ini").write_text("[pytest]\n")
        pytest_args = [str(manifest), "-c", str(Path(tmp) / "pytest.ini"), "--rootdir", tmp,
                       "-p", "no:cacheprovider", "-o", "console_output_style=count",
                       "-W", "ignore::pytest.PytestAssertRewriteWarning",
                       # what failed is in each score table, once and wrapped; pytest's FAILURES section and
                       # short summary would repeat it, cut to the terminal's width
                       "--tb=no", "-rN", *(["-q"] if args.quiet else [])]
        if args.junit:
            pytest_args.append(f"--junitxml={args.junit.resolve()}")
        if not _plugin_is_installed():  # a course used from its folder, not pip-installed: no entry point loads it
            pytest_args += ["-p", "autograder.plugin"]
        code = pytest.main(pytest_args)
    if code in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED):
        return 0
    print(tr("error: could not grade (the grader failed, not the students: see the messages above); exit status 2",
             own), file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())


def _plugin_is_installed() -> bool:
    """Whether pytest loads the grader's plugin by itself (the ``pytest11`` entry point of an installed course).

    Naming it again with ``-p`` would register it twice, which pytest refuses. Without the entry point (the
    course's folder on ``PYTHONPATH``, as on a JupyterHub whose shared environment does not install it), or
    with ``PYTEST_DISABLE_PLUGIN_AUTOLOAD`` set, only ``-p`` loads it."""
    if os.environ.get("PYTEST_DISABLE_PLUGIN_AUTOLOAD"):  # entry points are then ignored
        return False
    return any(ep.value == "autograder.plugin" for ep in importlib.metadata.entry_points(group="pytest11"))
