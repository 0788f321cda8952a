"""The pytest plugin that grades submissions: one pytest item per graded name, device and dtype.

Registered by entry point (``pytest11``), it is inert until pytest is asked to collect a grading
manifest: a JSON file named ``*.selfattn.json`` listing the submissions (``python -m autograder
grade`` writes one and runs pytest on it). Items are named like ``softmax_stable[cpu-float32]``;
each carries its points as ``user_properties`` (so ``--junitxml`` records them). Options:

  --selfattn-json PATH        the spec's JSON report
  --selfattn-gradescope PATH  Gradescope's results.json (a batch: one <stem>-<student>.json per student)
  --selfattn-csv PATH         one row of grades per submission
  --selfattn-seed N           fix the input seed (default: a fresh one each run)
  --selfattn-call-timeout S   per-call wall time in the worker (default 30)
  --selfattn-cell-timeout S   per-cell wall time in the worker (default 60)
  --selfattn-memory-mib M     worker address-space limit on CPU (default 6144)
  --selfattn-device D         grade on these devices only (repeatable: cpu, cuda)
  --selfattn-no-bwrap         do not use bubblewrap even where available
  --selfattn-no-canary        skip the self-check (the reference graded through the worker first)

A run in which the grader itself failed (the self-check, or a worker that could not start) exits
with pytest's internal-error status (3); ``python -m autograder`` turns that into 2.
"""

from __future__ import annotations

from pathlib import Path

import pytest

MANIFEST_SUFFIX = ".selfattn.json"
SESSION_KEY = pytest.StashKey["object"]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("selfattn", "self-attention course autograder")
    group.addoption("--selfattn-json", metavar="PATH", help="write the JSON report of the graded submissions")
    group.addoption("--selfattn-gradescope", metavar="PATH", help="write Gradescope's results.json")
    group.addoption("--selfattn-csv", metavar="PATH", help="write a CSV of grades, one row per submission")
    group.addoption("--selfattn-seed", type=int, default=None, help="seed for the random inputs (default: fresh)")
    group.addoption("--selfattn-call-timeout", type=float, default=30.0, help="seconds per graded call")
    group.addoption("--selfattn-cell-timeout", type=float, default=60.0, help="seconds per notebook cell")
    group.addoption("--selfattn-memory-mib", type=int, default=6144, help="worker memory limit on CPU (MiB)")
    group.addoption("--selfattn-device", action="append", default=None, choices=["cpu", "cuda"],
                    help="grade on this device only (repeatable); default: every available device")
    group.addoption("--selfattn-no-bwrap", action="store_true", help="never use bubblewrap")
    group.addoption("--selfattn-no-canary", action="store_true",
                    help="skip the self-check that grades the reference solutions through the worker first")
    group.addoption("--selfattn-jobs", type=int, default=None,
                    help="notebooks graded at once, each in its own worker (default: up to 2, by CPU count)")


def pytest_collect_file(file_path: Path, parent: pytest.Collector):
    if file_path.name.endswith(MANIFEST_SUFFIX):
        from autograder.collect import Manifest  # heavy (torch): only when there is something to grade

        return Manifest.from_parent(parent, path=file_path)
    return None


def pytest_unconfigure(config: pytest.Config) -> None:
    session = config.stash.get(SESSION_KEY, None)
    if session is not None:
        session.pool.shutdown(wait=True, cancel_futures=True)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """A run in which the grader could not grade somebody did not grade: exit with an internal error."""
    grading = session.config.stash.get(SESSION_KEY, None)
    if grading is not None and (grading.fatal or any(sub.grader_errors for sub in grading.submissions)):
        session.exitstatus = pytest.ExitCode.INTERNAL_ERROR


def pytest_terminal_summary(terminalreporter, exitstatus, config: pytest.Config) -> None:
    session = config.stash.get(SESSION_KEY, None)
    if session is not None and session.fatal:
        terminalreporter.write_line("")
        for line in session.fatal.splitlines():
            terminalreporter.write_line(line, red=True)
    if session is None or not session.submissions:
        return
    from autograder import report

    for sub in session.submissions:
        terminalreporter.write_line("")
        for line in report.table(sub).splitlines():
            terminalreporter.write_line(line)
    if len(session.submissions) > 1:
        terminalreporter.write_line("")
        terminalreporter.write_line(report.summary(session.submissions))
    failed = [sub for sub in session.submissions if sub.grader_errors]
    if failed:
        terminalreporter.write_line("")
        terminalreporter.write_line(f"could not grade {len(failed)} submission(s): the grader failed, not the student "
                                    "(they are left out of the CSV and Gradescope files, listed under `not_graded` "
                                    "in the JSON):", red=True, bold=True)
        for sub in failed:
            for notebook, why in sub.grader_errors.items():
                terminalreporter.write_line(f"  {Path(sub.path).name} / {notebook}: {why}")
    opt = config.getoption
    if opt("--selfattn-json"):
        report.write_json(session.submissions, Path(opt("--selfattn-json")))
    if opt("--selfattn-gradescope"):
        report.write_gradescope(session.submissions, Path(opt("--selfattn-gradescope")))
    if opt("--selfattn-csv"):
        report.write_csv(session.submissions, Path(opt("--selfattn-csv")))
