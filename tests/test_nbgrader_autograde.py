"""The sandboxed-autograde preprocessor on its own, with a recorded grader report (fast).

The real ``nbgrader autograde`` with the real grader, hostile submissions and a grader fault
included, runs in ``tests/test_nbgrader_pipeline.py`` (slow).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output
from nbgrader.utils import determine_grade
from traitlets.config import Config, Configurable

import autograder.nbgrader.autograde as sandbox
from autograder.nbgrader.autograde import SandboxAutograde, SandboxGradingError, cell_outcome, item_rows

NB = "01_attention_scores.ipynb"


def row(item, device, dtype, status, score, max_score, message="", notebook=NB):
    name = f"{item}[{device}-{dtype}]" if dtype else f"{item}[{device}]"
    return {"name": name, "item": item, "notebook": notebook, "device": device, "dtype": dtype,
            "status": status, "score": score, "max_score": max_score, "message": message}


REPORT = {
    "path": "/x/submitted/s1/self_attention", "score": 1.5, "max_score": 4.0, "seed": 11,
    "tests": [
        row("softmax_naive", "cpu", "float64", "passed", 0.5, 0.5),
        row("softmax_naive", "cpu", "float32", "passed", 0.5, 0.5),
        row("softmax_naive", "cuda", None, "skipped", 0.0, 0.0, "GPU not exercised"),
        row("softmax_stable", "cpu", "float64", "passed", 1.0, 1.0),
        row("softmax_stable", "cpu", "float32", "failed", 0.0, 1.0, "case big: `out` has NaN " + "x" * 2000),
        row("project_qkv", "cpu", "float64", "error", 0.0, 1.0, "SyntaxError", "02_scaled_dot_product_attention.ipynb"),
    ],
}


def test_item_rows_by_notebook():
    rows = item_rows(REPORT, NB)
    assert list(rows) == ["softmax_naive", "softmax_stable"]
    assert len(rows["softmax_naive"]) == 3


def test_cell_outcome_sums_rows_and_says_what_failed():
    score, message = cell_outcome("softmax_stable", item_rows(REPORT, NB)["softmax_stable"], 2.0, 11)
    assert score == 1.0
    assert message.startswith("Sandboxed grader (seed 11): 1 / 2 points for `softmax_stable`")
    assert "softmax_stable[cpu-float32]: failed (0/1): case big: `out` has NaN" in message
    assert "softmax_stable[cpu-float64]: passed (1/1)\n" in message  # a pass carries no message
    assert len(message) < 1000  # a long grader message is cut (the full report is in the log)


def test_cell_outcome_refuses_to_guess():
    with pytest.raises(SandboxGradingError, match="no result"):
        cell_outcome("attention_scores", [], 1.0, 11)
    with pytest.raises(SandboxGradingError, match="worth 3 points in the gradebook but 1"):
        cell_outcome("softmax_naive", item_rows(REPORT, NB)["softmax_naive"], 3.0, 11)


def _notebook():
    def test_cell(item, points):
        meta = {"nbgrader": {"grade": True, "solution": False, "locked": True, "grade_id": f"test_{item}",
                             "points": points, "schema_version": 3, "task": False}}
        # what a kernel (or the student) might have left there: replaced, never read
        return new_code_cell(f"assert {item}(1)", metadata=meta,
                             outputs=[new_output("execute_result", data={"text/plain": str(points)})])

    answer = new_code_cell("def softmax_naive(x, dim=-1):\n    return x", metadata={"nbgrader": {
        "grade": False, "solution": True, "locked": False, "grade_id": "softmax_naive", "schema_version": 3,
        "task": False}})
    return new_notebook(cells=[new_markdown_cell("# One"), answer, test_cell("softmax_naive", 1),
                               test_cell("softmax_stable", 2)])


def _resources(student="s1"):
    return {"nbgrader": {"student": student, "assignment": "self_attention", "notebook": NB[:-6],
                         "db_url": "sqlite://"}}


class _Exporter(Configurable):
    """Stands for nbconvert's exporter: one per autograde run, the parent of every preprocessor."""


def _preprocessor(parent, tmp_path, **config):
    c = Config()
    c.CourseDirectory.root = str(tmp_path)
    for key, value in config.items():
        setattr(c.SandboxAutograde, key, value)
    return SandboxAutograde(parent=parent, config=c)  # nbconvert's register_preprocessor: parent=exporter


@pytest.fixture
def calls(monkeypatch):
    """Record the grader calls; answer each with REPORT."""
    seen = []

    def fake(submission, source, seed, extra_args, timeout, cwd=None):
        seen.append({"submission": submission, "source": source, "seed": seed, "args": extra_args})
        return dict(REPORT, seed=seed)

    monkeypatch.setattr(sandbox, "run_grader", fake)
    return seen


def test_scores_written_as_partial_credit_and_read_back_by_nbgrader(calls, tmp_path):
    nb, _ = _preprocessor(_Exporter(), tmp_path, seed=11).preprocess(_notebook(), _resources())
    grades = {c.metadata["nbgrader"]["grade_id"]: determine_grade(c) for c in nb.cells
              if c.metadata.get("nbgrader", {}).get("grade")}
    assert grades == {"test_softmax_naive": (1.0, 1.0), "test_softmax_stable": (1.0, 2.0)}
    stable = nb.cells[3]
    assert [o.output_type for o in stable.outputs] == ["stream", "execute_result"]
    assert "assert softmax_stable" not in stable.outputs[0].text  # the test's code is never in its message
    assert calls == [{"submission": (tmp_path / "submitted" / "s1" / "self_attention").resolve(),
                      "source": tmp_path / "source", "seed": 11, "args": []}]


def test_one_grading_per_submission_and_run_one_seed_per_run(calls, tmp_path):
    run = _Exporter()
    for student in ("s1", "s1", "s2", "s1"):  # several notebooks per student; two students
        _preprocessor(run, tmp_path).preprocess(_notebook(), _resources(student))
    assert [c["submission"].parent.name for c in calls] == ["s1", "s2"]
    assert calls[0]["seed"] == calls[1]["seed"]
    assert [c["args"] for c in calls] == [[], ["--no-canary"]]  # the self-check once per run
    _preprocessor(_Exporter(), tmp_path).preprocess(_notebook(), _resources("s1"))  # a new run grades afresh
    assert len(calls) == 3


def test_a_report_without_the_item_fails_instead_of_scoring(monkeypatch, tmp_path):
    monkeypatch.setattr(sandbox, "run_grader", lambda *a, **k: dict(REPORT, tests=REPORT["tests"][:3]))
    with pytest.raises(SandboxGradingError, match="softmax_stable"):
        _preprocessor(_Exporter(), tmp_path).preprocess(_notebook(), _resources())


@pytest.mark.parametrize("returncode, report, match", [
    (2, None, "exit status 2"),
    (0, None, "wrote no report"),
    (0, '{"submissions": [], "not_graded": [{"path": "x", "errors": {"01": "worker died"}}]}', "worker died"),
])
def test_run_grader_turns_every_grader_fault_into_an_error(monkeypatch, tmp_path, returncode, report, match):
    def fake_run(command, **kwargs):
        assert command[1:4] == ["-m", "autograder", "grade"] and "--seed" in command
        if report is not None:
            Path(command[command.index("--json") + 1]).write_text(report)
        return subprocess.CompletedProcess(command, returncode, "", "error: could not grade")

    monkeypatch.setattr(sandbox.subprocess, "run", fake_run)
    with pytest.raises(SandboxGradingError, match=match):
        sandbox.run_grader(tmp_path, tmp_path / "source", 3, [], 60.0)


def test_run_grader_timeout_is_an_error(monkeypatch, tmp_path):
    def fake_run(command, **kwargs):
        raise subprocess.TimeoutExpired(command, kwargs["timeout"])

    monkeypatch.setattr(sandbox.subprocess, "run", fake_run)
    with pytest.raises(SandboxGradingError, match="longer than 5 s"):
        sandbox.run_grader(tmp_path, tmp_path / "source", 3, [], 5.0)


def test_the_grader_subprocess_finds_the_same_autograder_package():
    # the front end lives in autograder/nbgrader/: the grader's PYTHONPATH is the folder above autograder/
    assert (Path(sandbox._PACKAGE_PARENT) / "autograder" / "nbgrader" / "autograde.py").resolve() == \
        Path(sandbox.__file__).resolve()
