"""The pytest plugin that grades submissions: one pytest item per graded name, device and dtype.

Registered by entry point (``pytest11``), it is inert until pytest is asked to collect a grading
manifest: a JSON file named ``*.selfattn.json`` listing the submissions (``python -m autograder
grade`` writes one and runs pytest on it). Items are named like ``softmax_stable[cpu-float32]``;
each carries its points as ``user_properties`` (so ``--junitxml`` records them). Its options are
those of ``python -m autograder grade`` with a ``--selfattn-`` prefix (``--selfattn-call-timeout=5``),
generated from ``autograder/options.py`` (``pytest --help`` lists them); a manifest's ``"options"``
override them.

A run in which the grader itself failed (the self-check, or a worker that could not start) exits
with pytest's internal-error status (3); ``python -m autograder`` turns that into 2.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from autograder.options import MANIFEST_SUFFIX, SESSION_KEY, add_plugin_options
from exercises.i18n import tr


def pytest_addoption(parser: pytest.Parser) -> None:
    add_plugin_options(parser.getgroup("selfattn", "self-attention course autograder"))


def pytest_collect_file(file_path: Path, parent: pytest.Collector):
    if file_path.name.endswith(MANIFEST_SUFFIX):
        from autograder.collect import Manifest  # heavy (torch): only when there is something to grade

        return Manifest.from_parent(parent, path=file_path)
    return None


def pytest_unconfigure(config: pytest.Config) -> None:
    session = config.stash.get(SESSION_KEY, None)
    if session is not None:
        session.pool.shutdown(wait=True, cancel_futures=True)
        if session.workers is not None:
            session.workers.shutdown()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """A run in which the grader could not grade somebody did not grade: exit with an internal error."""
    grading = session.config.stash.get(SESSION_KEY, None)
    if grading is not None and (grading.fatal or any(sub.grader_errors for sub in grading.submissions)):
        session.exitstatus = pytest.ExitCode.INTERNAL_ERROR


def terminal_width() -> int:
    """The width the score tables wrap to: the terminal's, kept between 60 and 120 characters."""
    return max(60, min(shutil.get_terminal_size((100, 24)).columns, 120))


def _collection_errors(terminalreporter, width: int) -> None:
    """Collection errors (the manifest could not be read, a bad shard), whole and wrapped: under ``--tb=no``
    (what ``python -m autograder grade`` runs with, its table saying what failed) pytest would print none."""
    from autograder import report

    for rep in terminalreporter.stats.get("error", []):
        if rep.when == "collect" and rep.longrepr is not None and MANIFEST_SUFFIX in rep.nodeid:
            terminalreporter.write_line("")
            for line in report.wrapped(f"ERROR {rep.nodeid}: {report.readable(str(rep.longrepr))}", width, "", "  "):
                terminalreporter.write_line(line, red=True)


def pytest_terminal_summary(terminalreporter, exitstatus, config: pytest.Config) -> None:
    session = config.stash.get(SESSION_KEY, None)
    if config.option.tbstyle == "no":
        _collection_errors(terminalreporter, terminal_width())
    if session is not None and session.fatal:
        terminalreporter.write_line("")
        for line in session.fatal.splitlines():
            terminalreporter.write_line(line, red=True)
    if session is None or not session.submissions:
        return
    from autograder import report

    width = terminal_width()
    for sub in session.submissions:
        terminalreporter.write_line("")
        for line in report.table(sub, width).splitlines():
            terminalreporter.write_line(line)
    own = session.own_language  # the run's own lines: English unless --lang forces a language
    if len(session.submissions) > 1:
        terminalreporter.write_line("")
        terminalreporter.write_line(report.summary(session.submissions, own))
    failed = [sub for sub in session.submissions if sub.grader_errors]
    if failed:
        terminalreporter.write_line("")
        for line in report.wrapped(tr("could not grade {count} submission(s): the grader failed, not the student (they "
                                      "are left out of the CSV and Gradescope files, listed under `not_graded` in the "
                                      "JSON):", own).format(count=len(failed)), width, "", ""):
            terminalreporter.write_line(line, red=True, bold=True)
        for sub in failed:
            for notebook, why in sub.grader_errors.items():
                for line in report.wrapped(f"{Path(sub.path).name} / {notebook}: {report.readable(why)}",
                                           width, "  ", "    "):
                    terminalreporter.write_line(line)
    opt = session.options
    if opt["json"]:
        batch = {"seed": session.seed, "devices": session.devices, **(session.batch or {})}
        report.write_json(session.submissions, Path(opt["json"]), batch=batch)
    if opt["gradescope"]:
        report.write_gradescope(session.submissions, Path(opt["gradescope"]))
    if opt["csv"]:
        report.write_csv(session.submissions, Path(opt["csv"]))
