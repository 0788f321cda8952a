"""``bash run.sh gpu-check`` (scripts/gpu_check.py): its table, its verdict and its exit status, on any machine.

The script itself runs on a GPU machine; here its parts are fed fake reports of the grading CLI.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("gpu_check", None)


def rows(device: str, statuses: list[str], points: float) -> list[dict]:
    """Report rows of one device: ``points`` split equally, full score where passed."""
    share = points / len(statuses)
    return [{"name": f"item{i}[{device}-float32]", "item": f"item{i}", "notebook": "01_attention_scores.ipynb",
             "device": device, "dtype": "float32", "status": status,
             "score": share if status == "passed" else 0.0, "max_score": 0.0 if status == "skipped" else share,
             "message": "" if status == "passed" else f"{status} here"} for i, status in enumerate(statuses)]


def submission(name: str, tests: list[dict], seconds: float = 12.5) -> dict:
    return {"path": f"/x/examples/submissions/{name}", "seed": 7, "seconds": seconds,
            "score": round(sum(t["score"] for t in tests), 4),
            "max_score": round(sum(t["max_score"] for t in tests), 4),
            "devices": sorted({t["device"] for t in tests if t["status"] != "skipped"}), "tests": tests}


def report_with_gpu(perfect_cuda: list[str] | None = None) -> dict:
    return {"submissions": [
        submission("perfect", rows("cpu", ["passed"] * 4, 2.0) + rows("cuda", perfect_cuda or ["passed"] * 6, 2.0)),
        submission("empty", rows("cpu", ["error"] * 4, 2.0) + rows("cuda", ["error"] * 6, 2.0), 3.0),
        submission("one_wrong", rows("cpu", ["passed"] * 3 + ["failed"], 2.0)
                   + rows("cuda", ["passed"] * 5 + ["failed"], 2.0)),
    ]}


def report_without_gpu() -> dict:
    return {"submissions": [
        submission("perfect", rows("cpu", ["passed"] * 4, 4.0) + rows("cuda", ["skipped"] * 2, 0.0)),
        submission("empty", rows("cpu", ["error"] * 4, 4.0) + rows("cuda", ["skipped"] * 2, 0.0)),
    ]}


def test_does_the_table_count_rows_passed_per_device(gpu_check):
    table = {r.name: r for r in gpu_check.summarise(report_with_gpu())}
    assert list(table) == ["perfect", "empty", "one_wrong"]
    perfect = table["perfect"]
    assert (perfect.score, perfect.max_score) == (4.0, 4.0)
    assert (perfect.devices["cpu"].passed, perfect.devices["cpu"].total) == (4, 4)
    assert (perfect.devices["cuda"].passed, perfect.devices["cuda"].total) == (6, 6)
    assert perfect.devices["cpu"].full_marks and perfect.devices["cuda"].full_marks
    wrong = table["one_wrong"]
    assert (wrong.devices["cpu"].passed, wrong.devices["cuda"].passed) == (3, 5)
    assert not wrong.devices["cuda"].full_marks


def test_is_the_table_one_line_per_submission_with_score_rows_and_seconds(gpu_check):
    text = gpu_check.format_table(gpu_check.summarise(report_with_gpu()))
    lines = text.splitlines()
    assert lines[0].split() == ["submission", "score/max", "cpu", "rows", "passed", "cuda", "rows", "passed",
                                "seconds"]
    body = {line.split()[0]: line.split() for line in lines[2:]}
    assert body["perfect"] == ["perfect", "4/4", "4/4", "6/6", "12.5"]
    assert body["empty"] == ["empty", "0/4", "0/4", "0/6", "3.0"]
    assert body["one_wrong"][1:4] == ["3.167/4", "3/4", "5/6"]  # 3 x 0.5 + 5 x 1/3


def test_does_the_table_say_when_cuda_was_not_exercised(gpu_check):
    rows_ = gpu_check.summarise(report_without_gpu())
    text = gpu_check.format_table(rows_)
    assert "not exercised" in text
    assert not rows_[0].devices["cuda"].exercised and rows_[0].devices["cuda"].skipped == 2


def test_is_a_full_perfect_on_every_device_a_pass(gpu_check):
    assert gpu_check.grading_problems(gpu_check.summarise(report_with_gpu()), cuda_expected=True) == []


def test_is_a_perfect_short_on_cuda_a_failure(gpu_check):
    report = report_with_gpu(perfect_cuda=["passed"] * 5 + ["failed"])
    problems = gpu_check.grading_problems(gpu_check.summarise(report), cuda_expected=True)
    assert any("not full marks" in p for p in problems)
    assert any(p.startswith("perfect on cuda: 5/6 rows passed") for p in problems)
    assert gpu_check.failed_rows(report) == ["item5[cuda-float32]: failed: failed here"]


def test_is_cuda_missing_from_the_report_a_failure_when_a_gpu_is_present(gpu_check):
    problems = gpu_check.grading_problems(gpu_check.summarise(report_without_gpu()), cuda_expected=True)
    assert problems == ["perfect was not graded on cuda"]
    assert gpu_check.grading_problems(gpu_check.summarise(report_without_gpu()), cuda_expected=False) == []


def test_is_a_missing_or_ungraded_perfect_a_failure(gpu_check):
    report = report_with_gpu()
    report["submissions"] = [s for s in report["submissions"] if not s["path"].endswith("perfect")]
    assert gpu_check.grading_problems(gpu_check.summarise(report), True) == ["the perfect example was not graded"]
    report["not_graded"] = [{"path": "/x/perfect", "errors": ["boom"]}]
    rows_ = gpu_check.summarise(report)
    assert "?/?" in gpu_check.format_table(rows_)
    assert any("not full marks" in p for p in gpu_check.grading_problems(rows_, True))


def test_are_pytest_summaries_parsed(gpu_check):
    out = "....ss\n=== 283 passed, 12 skipped, 395 deselected, 1 warning in 7.81s ===\n"
    assert gpu_check.parse_pytest_summary(out) == {"passed": 283, "skipped": 12, "deselected": 395}
    assert gpu_check.parse_pytest_summary("1 failed, 2 passed, 3 errors in 1.0s") == \
        {"failed": 1, "passed": 2, "errors": 3}
    assert gpu_check.parse_pytest_summary("no tests ran in 0.01s") == {}


def test_are_the_gpu_test_modules_found(gpu_check):
    with_grader = {p.name for p in gpu_check.gpu_test_files(with_grader=True)}
    # every lesson's reference tests: test_solutions_lessonN.py for each solutions/lessonN_*.py
    lessons = {f"test_solutions_{p.stem.split('_')[0]}.py" for p in (REPO / "solutions").glob("lesson*_*.py")}
    assert len(lessons) >= 7 and lessons <= with_grader
    assert "test_devices.py" in with_grader
    without = {p.name for p in gpu_check.gpu_test_files(with_grader=False)}
    assert "test_devices.py" not in without and "test_solutions_lesson1.py" in without


def test_does_main_pass_only_with_a_gpu_and_a_full_perfect(gpu_check, tmp_path, monkeypatch, capsys):
    good = tmp_path / "good.json"
    good.write_text(json.dumps(report_with_gpu()))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(report_with_gpu(perfect_cuda=["passed"] * 5 + ["error"])))
    monkeypatch.setattr(gpu_check, "environment", lambda: ({"python": "3.12"}, [], True))
    assert gpu_check.main(["--from-json", str(good)]) == 0
    assert "PASS" in capsys.readouterr().out
    assert gpu_check.main(["--from-json", str(bad)]) == 1
    out = capsys.readouterr().out
    assert "perfect on cuda: 5/6 rows passed" in out and "item5[cuda-float32]: error" in out
    monkeypatch.setattr(gpu_check, "environment", lambda: ({"python": "3.12"}, [], False))
    assert gpu_check.main(["--from-json", str(good)]) == 1
    assert "FAIL: no CUDA device: GPU not exercised" in capsys.readouterr().out


def test_does_main_fail_on_any_environment_problem(gpu_check, tmp_path, monkeypatch, capsys):
    path = tmp_path / "good.json"
    path.write_text(json.dumps(report_with_gpu()))
    problem = "safetensors is missing: ..."
    monkeypatch.setattr(gpu_check, "environment", lambda: ({"python": "3.12"}, [problem], True))
    assert gpu_check.main(["--from-json", str(path)]) == 1
    assert problem in capsys.readouterr().out


def test_is_a_missing_nbformat_only_a_note_that_says_what_to_carry(gpu_check, monkeypatch):
    """The grader reads notebooks as JSON: without nbformat it still grades; only fixture-building tests drop out."""
    real = importlib.util.find_spec
    monkeypatch.setattr(gpu_check.importlib.util, "find_spec", lambda name, *a: None if name == "nbformat"
                        else real(name, *a))
    facts, problems, _ = gpu_check.environment()
    assert not [p for p in problems if "nbformat" in p]
    message = facts["nbformat"]
    assert "pip download" in message and "wheels/" in message and "rpds-py" in message


def test_does_the_script_run_here_and_say_whether_the_gpu_was_exercised(tmp_path):
    """The real script, in a subprocess, on a fake report: exit 1 and "GPU not exercised" without a GPU."""
    path = tmp_path / "report.json"
    path.write_text(json.dumps(report_with_gpu() if torch.cuda.is_available() else report_without_gpu()))
    done = subprocess.run([sys.executable, str(SCRIPT), "--from-json", str(path)], cwd=REPO, capture_output=True,
                          text=True, timeout=120, check=False)
    assert "submission" in done.stdout and "perfect" in done.stdout, done.stdout + done.stderr
    if torch.cuda.is_available():
        assert done.returncode == 0, done.stdout
    else:
        assert done.returncode == 1
        assert "no CUDA device: GPU not exercised" in done.stdout
        assert "PASS" not in done.stdout


def test_is_a_perfect_whose_rounded_row_scores_exceed_their_max_still_full_marks(gpu_check):
    """On a GPU a variant's share is 1/6 of a point: its score is written rounded (0.166667), its max not."""
    report = report_with_gpu()
    perfect = report["submissions"][0]
    for test in perfect["tests"]:
        test["max_score"] = 1 / 6
        test["score"] = round(1 / 6, 6)
    perfect["score"], perfect["max_score"] = round(10 * round(1 / 6, 6), 4), round(10 / 6, 4)
    rows_ = gpu_check.summarise(report)
    assert rows_[0].devices["cuda"].score > rows_[0].devices["cuda"].max_score
    assert gpu_check.grading_problems(rows_, cuda_expected=True) == []


def test_is_a_torch_the_worker_cannot_import_reported(gpu_check, tmp_path, monkeypatch):
    import site

    monkeypatch.setattr(site, "getusersitepackages", lambda: str(tmp_path / "user-site"))
    (message,) = gpu_check.worker_reach(tmp_path / "user-site" / "torch")
    assert "python -I" in message
    closed = tmp_path / "closed"
    (closed / "torch").mkdir(parents=True)
    closed.chmod(0o700)
    monkeypatch.setattr(gpu_check.os, "geteuid", lambda: 0)
    monkeypatch.setattr(gpu_check, "_which", lambda name: None)
    monkeypatch.setattr(gpu_check, "_grader_drops_privileges", lambda: True)
    (message,) = gpu_check.worker_reach(closed / "torch")
    assert "nobody" in message and str(closed) in message
    closed.chmod(0o711)
    parents_closed = [p for p in closed.parents if not p.stat().st_mode & 0o001]
    assert gpu_check.worker_reach(closed / "torch") == [] or parents_closed
    monkeypatch.setattr(gpu_check, "_grader_drops_privileges", lambda: False)  # the worker stays root
    closed.chmod(0o700)
    assert gpu_check.worker_reach(closed / "torch") == []
