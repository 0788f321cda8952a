"""The unsharded grading of ``examples/submissions`` that sharded runs are compared with, and the comparisons.

A pytest plugin (``pytest_plugins = ["shard_fixtures"]``): test_shard_merge.py, test_slurm.py,
test_delivery.py (Gradescope and Classroom against the CLI) and test_editions.py (both editions score
the same) read one unsharded run of the examples instead of grading them four times. Under
pytest-xdist each test file may run in another process: the first process that needs the run makes
it, under a file lock in the session's shared temporary folder, and the others read its reports.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from grader_fixtures import course_points, item_points

from autograder.examples import ONE_WRONG_ITEM, edition_students

REPO = Path(__file__).resolve().parent.parent
BATCH = REPO / "examples" / "submissions"
SEED = 20261127
# The canary (the grader's self-check) is not what these tests are about; every run skips it alike.
GRADE = [sys.executable, "-m", "autograder", "grade", "--no-canary", "--seed", str(SEED), "-q"]
# computed from source/: perfect scores everything, one_wrong loses its one wrong item, empty nothing
# (each in both editions: perfect_zh ... score what perfect ... do)
_SCORES = {"empty": 0.0, "one_wrong": course_points() - item_points(ONE_WRONG_ITEM), "perfect": course_points()}
EXPECTED_SCORES = {name: _SCORES[base] for name, (base, _) in edition_students(_SCORES).items()}


def outputs(out: Path) -> list[str]:
    """The report options of a run writing into ``out``."""
    return ["--json", str(out / "grades.json"), "--csv", str(out / "grades.csv"), "--junit", str(out / "grades.xml"),
            "--gradescope", str(out / "gradescope" / "results.json")]


def grader_env() -> dict[str, str]:
    """This environment without the course's own variables (``SELFATTN_NO_BWRAP``, ...) and GitHub's: every run
    compared with the unsharded one (a shard, Gradescope's ``run_autograder``, Classroom's ``grade.sh``) grades
    with the grader's defaults, whatever the caller's shell holds."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SELFATTN_", "GITHUB_"))}
    env.pop("PYTHONPATH", None)
    return env


def run(argv: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    """Run the grader's CLI from the repository; fail the test with its output when it does not exit 0."""
    proc = subprocess.run(argv, cwd=REPO, env=grader_env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


UNSHARDED_WAIT = 900.0  # seconds another process may take to grade the examples before a waiting test fails


@pytest.fixture(scope="session")
def unsharded(tmp_path_factory) -> Path:
    """The folder of an unsharded run's reports (grades.json, .csv, .xml, gradescope/results-<student>.json) of
    the examples, both editions: made once per test session, whichever process of pytest-xdist asks first."""
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # pytest-N/, above popen-gwK/
    out, done = shared / "examples-unsharded", shared / "examples-unsharded.done"
    with open(shared / "examples-unsharded.lock", "a") as lock:
        deadline = time.monotonic() + UNSHARDED_WAIT
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    pytest.fail(f"another test process held {lock.name} for over {UNSHARDED_WAIT:.0f} s")
                time.sleep(0.5)
        try:
            if not done.exists():  # a process that failed to make it left no marker: make it again
                shutil.rmtree(out, ignore_errors=True)
                run([*GRADE, str(BATCH), *outputs(out)])
                done.write_text("")
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return out


def without_timings(data):
    """A JSON report without what may differ between two honest runs: timings (``seconds``) only."""
    if isinstance(data, dict):
        return {k: without_timings(v) for k, v in data.items() if k != "seconds"}
    if isinstance(data, list):
        return [without_timings(v) for v in data]
    return data


def junit_cases(path: Path) -> list[tuple]:
    """Each test case of a JUnit XML file as (classname, name, outcome, score, max_score, status)."""
    cases = []
    for case in ET.parse(path).getroot().iter("testcase"):
        outcome = next((child.tag for child in case if child.tag in ("failure", "error", "skipped")), "passed")
        props = {p.get("name"): p.get("value") for p in case.iter("property")}
        cases.append((case.get("classname"), case.get("name"), outcome, props.get("score"), props.get("max_score"),
                      props.get("status")))
    return cases


def assert_same_reports(merged: Path, whole: Path) -> None:
    """The merged reports are the unsharded run's: JSON (but for timings), CSV, Gradescope files, JUnit cases."""
    expected = json.loads((whole / "grades.json").read_text())
    got = json.loads((merged / "grades.json").read_text())
    assert {Path(s["path"]).name: s["score"] for s in expected["submissions"]} == EXPECTED_SCORES
    assert without_timings(got) == without_timings(expected)
    assert (merged / "grades.csv").read_text() == (whole / "grades.csv").read_text()
    names = sorted(p.name for p in (whole / "gradescope").iterdir())
    assert names == [f"results-{n}.json" for n in sorted(EXPECTED_SCORES)]
    assert sorted(p.name for p in (merged / "gradescope").iterdir()) == names
    for name in names:
        assert (merged / "gradescope" / name).read_text() == (whole / "gradescope" / name).read_text()
    cases = junit_cases(whole / "grades.xml")
    assert len(cases) == sum(len(s["tests"]) for s in expected["submissions"]) > 0
    assert junit_cases(merged / "grades.xml") == cases
