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


# --- a class as one batch (issue 18) -------------------------------------------------------------


def _course(tmp_path, students=("s1", "s2", "s3", "s4")):
    for student in students:
        folder = tmp_path / "submitted" / student / "self_attention"
        folder.mkdir(parents=True)
        (folder / NB).write_text("{}")
    return tmp_path


def _converter(root, **config):
    """nbgrader's real Autograde converter on ``root``, after the glob it makes before the first notebook."""
    from nbgrader.converters import Autograde
    from nbgrader.coursedir import CourseDirectory

    c = Config()
    c.CourseDirectory.root = str(root)
    c.CourseDirectory.assignment_id = "self_attention"
    for key, value in config.items():
        setattr(c.CourseDirectory if key != "force" else c.Autograde, key, value)
    converter = Autograde(coursedir=CourseDirectory(config=c), config=c)
    converter.init_notebooks()
    converter._sanitizing = False  # as while a notebook is autograded: its "source" is then autograded/
    return converter


def _submitted(root, student):
    return (root / "submitted" / student / "self_attention").resolve()


def test_pending_submissions_follow_nbgrader_skip_rules(tmp_path):
    root = _course(tmp_path)
    (root / "autograded" / "s3" / "self_attention").mkdir(parents=True)  # graded already, not newer: skipped
    converter = _converter(root, student_id_exclude="s4")
    assert sandbox.pending_submissions(converter, _submitted(root, "s1")) == [
        _submitted(root, "s1"), _submitted(root, "s2")]
    # from s2 on (s1 came before it in nbgrader's order), and --force processes s3 again
    forced = _converter(root, force=True)
    assert sandbox.pending_submissions(forced, _submitted(root, "s2")) == [
        _submitted(root, s) for s in ("s2", "s3", "s4")]
    # no converter (a preprocessor built on its own): only the current one
    assert sandbox.pending_submissions(None, _submitted(root, "s1")) == [_submitted(root, "s1")]


class _Converter(Configurable):
    """Stands for nbgrader's converter: the exporter's parent."""


def _run_with(tmp_path, monkeypatch, batch_result):
    """Preprocess s1..s3 in one run whose batch returns ``batch_result``; (batch calls, single calls, scores)."""
    root = _course(tmp_path, ("s1", "s2", "s3"))
    converter = _converter(root)
    batches, singles = [], []

    def fake_batch(submissions, source, seed, extra_args, timeout, cwd=None, on_line=None):
        batches.append({"submissions": list(submissions), "seed": seed, "args": list(extra_args)})
        if isinstance(batch_result, Exception):
            raise batch_result
        return batch_result(submissions, seed)

    def fake_single(submission, source, seed, extra_args, timeout, cwd=None):
        singles.append({"student": submission.parent.name, "args": list(extra_args)})
        return dict(REPORT, seed=seed, path=str(submission))

    monkeypatch.setattr(sandbox, "run_batch", fake_batch)
    monkeypatch.setattr(sandbox, "run_grader", fake_single)
    exporter = _Exporter(parent=converter)
    scores = {}
    for student in ("s1", "s1", "s2", "s3"):
        nb, _ = _preprocessor(exporter, root, seed=5).preprocess(_notebook(), _resources(student))
        scores[student] = determine_grade(nb.cells[2])[0] + determine_grade(nb.cells[3])[0]
    return batches, singles, scores


def test_a_class_is_graded_in_one_batch_then_each_students_scores_written(tmp_path, monkeypatch):
    def result(submissions, seed):  # s2 lost everything, the others as REPORT
        reports = {str(p): dict(REPORT, seed=seed, path=str(p)) for p in submissions}
        low = [dict(t, score=0.0) for t in REPORT["tests"]]
        reports[str(submissions[1])] = dict(REPORT, seed=seed, tests=low)
        return reports, {}

    batches, singles, scores = _run_with(tmp_path, monkeypatch, result)
    assert [[p.parent.name for p in b["submissions"]] for b in batches] == [["s1", "s2", "s3"]]
    assert batches[0]["seed"] == 5 and singles == []  # one grader run for the class, none per student
    assert scores == {"s1": 2.0, "s2": 0.0, "s3": 2.0}  # each student's own report, not the first one's


def test_what_the_batch_did_not_grade_is_graded_alone(tmp_path, monkeypatch):
    def result(submissions, seed):  # s3 under not_graded: never scored from the batch
        return ({str(p): dict(REPORT, seed=seed) for p in submissions[:2]},
                {str(submissions[2]): '{"01": "worker died"}'})

    batches, singles, scores = _run_with(tmp_path, monkeypatch, result)
    assert len(batches) == 1
    assert singles == [{"student": "s3", "args": ["--no-canary"]}]  # the batch's self-check passed
    assert scores["s3"] == 2.0


def test_a_failed_batch_falls_back_to_one_run_per_student(tmp_path, monkeypatch):
    batches, singles, _ = _run_with(tmp_path, monkeypatch, SandboxGradingError("canary lost points"))
    assert len(batches) == 1
    assert [s["student"] for s in singles] == ["s1", "s2", "s3"]
    assert singles[0]["args"] == []  # nothing passed the self-check yet: the first one runs it


STAND_IN = '''
import json, sys
import pathlib
args = sys.argv[2:]
subs = sorted(str(p) for p in pathlib.Path(args[0]).iterdir())  # one batch folder, one link per student
report = args[args.index("--json") + 1]
if "--fail" in args:
    print("error: the self-check lost points"); sys.exit(2)
if "--hang" in args:
    import time; time.sleep(60)
for i, s in enumerate(subs, 1):
    print("." * 10 + f" [{10 * i:3d}/30]", flush=True)
json.dump({"submissions": [{"path": s, "score": 1.0, "max_score": 1.0, "tests": []} for s in subs[1:]],
           "not_graded": [{"path": subs[0], "errors": {"01": "worker died"}}]}, open(report, "w"))
'''


def test_run_batch_streams_progress_and_splits_graded_from_not_graded(tmp_path, monkeypatch):
    script = tmp_path / "stand_in.py"
    script.write_text(STAND_IN)
    monkeypatch.setattr(sandbox, "GRADER", [sandbox.sys.executable, str(script)])
    subs = [tmp_path / "submitted" / s / "self_attention" for s in ("a", "b", "c")]  # one folder name for all
    for sub in subs:
        sub.mkdir(parents=True)
    lines = []
    reports, not_graded = sandbox.run_batch(subs, tmp_path, 3, [], 60.0, on_line=lines.append)
    assert sorted(reports) == [str(subs[1].resolve()), str(subs[2].resolve())]
    assert list(not_graded) == [str(subs[0].resolve())] and "worker died" in not_graded[str(subs[0].resolve())]
    assert len(lines) == 3 and lines[-1].endswith("[ 30/30]")
    assert reports[str(subs[2].resolve())]["path"] == str(subs[2].resolve())  # the student's folder, not the link
    with pytest.raises(SandboxGradingError, match="exit status 2"):
        sandbox.run_batch(subs, tmp_path, 3, ["--fail"], 60.0)
    with pytest.raises(SandboxGradingError, match="longer than 1 s"):
        sandbox.run_batch(subs, tmp_path, 3, ["--hang"], 1.0)


def test_the_batch_folder_names_each_submission_after_its_student(tmp_path):
    subs = [tmp_path / "submitted" / s / a for s, a in (("ann", "hw"), ("bob", "hw"), ("bob", "hw2"))]
    for sub in subs:
        sub.mkdir(parents=True)
    links = sandbox.batch_folder(subs, tmp_path / "batch")
    assert links == {"ann": subs[0], "bob-hw": subs[1], "bob-hw2": subs[2]}
    assert (tmp_path / "batch" / "bob-hw2").resolve() == subs[2].resolve()


def test_progress_lines_give_an_eta_from_the_graders_count():
    assert sandbox.progress_line("..F.s..... [ 60/240]", 30.0, 5) == (
        "graded checks 60/240 (25%) of 5 students, elapsed 30 s, ETA 90 s")
    assert sandbox.progress_line("...... [240/240]", 99.0, 5).endswith("elapsed 99 s, done")
    assert sandbox.progress_line("== /x/ann: 60 / 60 points [x]", 1.0, 5) is None


def test_the_score_output_is_dropped_once_saved_and_nothing_else(calls, tmp_path):
    nb, _ = _preprocessor(_Exporter(), tmp_path, seed=11).preprocess(_notebook(), _resources())
    student_output = new_output("execute_result", data={"text/plain": "42"})
    nb.cells[3].outputs.append(student_output)  # not ours: kept
    nb, _ = sandbox.DropScoreOutputs().preprocess(nb, {})
    assert [o.output_type for o in nb.cells[2].outputs] == ["stream"]
    assert nb.cells[3].outputs[1:] == [student_output]
    assert nb.cells[3].outputs[0].text.startswith("Sandboxed grader (seed 11): 1 / 2 points")


def test_the_course_drops_the_score_only_after_nbgrader_saved_it():
    from traitlets.config.loader import PyFileConfigLoader

    chain = PyFileConfigLoader("nbgrader_config.py", path=str(Path(sandbox.__file__).parents[2])).load_config()
    names = [p.__name__ for p in chain.Autograde.autograde_preprocessors]
    assert names.index("DropScoreOutputs") == names.index("SaveAutoGrades") + 1
    assert "StudentName" in names
