"""Delivering the course: the Gradescope autograder bundle and the GitHub Classroom grading step.

The bundle is built, unpacked into a temporary root laid out as Gradescope lays out ``/autograder``
(``source/`` = the unpacked zip, ``submission/`` = the student's upload, ``results/``), and its
``run_autograder`` must give each bundled example the very ``results.json`` the CLI's
``--gradescope`` gives it with the same seed. A grader fault must give a results.json with no
score. The Classroom step (``grade.sh``) must give the CLI's score and per-item points in its job
summary and step outputs. What this machine cannot do (Gradescope's image, GitHub's runners, apt
and pip in ``setup.sh``) is not pretended: ``setup.sh`` runs here in its no-install mode only.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from shard_fixtures import SEED, grader_env

from delivery.requirements import requirements
from exercises.catalogue import NOTEBOOKS

REPO = Path(__file__).resolve().parent.parent
BUILDER = REPO / "scripts" / "gradescope_bundle.py"
GRADE_SH = REPO / "delivery" / "github-classroom" / "grade.sh"
SUMMARY = REPO / "delivery" / "github-classroom" / "summary.py"
WORKFLOW = REPO / "delivery" / "github-classroom" / "classroom.yml"
EXAMPLES = REPO / "examples" / "submissions"
STUDENTS = ("perfect", "one_wrong", "empty")
ZH_STUDENTS = ("one_wrong_zh",)  # the Chinese edition's notebooks (issue 19): graded like the English ones
# ``unsharded``: the CLI's run of the examples (with shard_fixtures' SEED) the front ends' results are compared with
pytest_plugins = ["shard_fixtures"]
# What must never reach a student through a report: hidden-test source, solution regions, the checks' modules.
SECRETS = ("BEGIN HIDDEN TESTS", "BEGIN SOLUTION", "exercises.kernel", "from solutions", "import solutions")


def _env(**extra: str) -> dict[str, str]:
    # the scripts must find the grader they were given (no PYTHONPATH to this checkout), with its defaults
    return {**grader_env(), **extra}


def _unpack(bundle: Path, root: Path, submission: Path | None) -> Path:
    """A Gradescope-like root: source/ (the unpacked bundle), submission/ (flat upload), results/."""
    (root / "source").mkdir(parents=True)
    with zipfile.ZipFile(bundle) as zf:
        for info in zf.infolist():  # ZipFile.extractall drops the mode bits; Gradescope's unzip keeps them
            target = root / "source" / info.filename
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(zf.read(info))
            os.chmod(target, (info.external_attr >> 16) & 0o777 or 0o644)
    (root / "submission").mkdir()
    if submission is not None:
        for nb in sorted(submission.rglob("*.ipynb")):
            shutil.copyfile(nb, root / "submission" / nb.name)
    (root / "results").mkdir()
    return root


def _run_autograder(root: Path, *grade_args: str) -> subprocess.CompletedProcess:
    env = _env(SELFATTN_GRADESCOPE_ROOT=str(root), SELFATTN_PYTHON=sys.executable,
               SELFATTN_GRADE_ARGS=" ".join(grade_args))
    return subprocess.run([str(root / "source" / "run_autograder")], cwd=root, env=env, capture_output=True,
                          text=True, timeout=900)


def _results(root: Path) -> dict:
    return json.loads((root / "results" / "results.json").read_text())


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bundle") / "autograder.zip"
    done = subprocess.run([sys.executable, str(BUILDER), "--out", str(out)], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return out


@pytest.fixture(scope="module")
def cli(unsharded) -> dict:
    """The CLI on the examples with one seed (shard_fixtures' run, shared with other test files): its JSON report
    and its Gradescope file per student."""
    report = json.loads((unsharded / "grades.json").read_text())
    gradescope = unsharded / "gradescope"
    return {"json": {Path(s["path"]).name: s for s in report["submissions"]},
            "gradescope": {s: json.loads((gradescope / f"results-{s}.json").read_text())
                           for s in STUDENTS + ZH_STUDENTS}}


# --- the bundle ------------------------------------------------------------------------------------

def test_bundle_holds_the_grader_and_nothing_a_student_gets(bundle, tmp_path):
    with zipfile.ZipFile(bundle) as zf:
        infos = {i.filename: i for i in zf.infolist()}
        reqs = zf.read("requirements.txt").decode().split()
    for script in ("setup.sh", "run_autograder"):  # at the root, executable (Gradescope's specification)
        assert (infos[script].external_attr >> 16) & 0o111, f"{script} is not executable in the zip"
    needed = ["autograder/cli.py", "autograder/worker/main.py", "exercises/program.py", "solutions/__init__.py",
              "pyproject.toml", "delivery/stage_submission.py", *(f"source/self_attention/{nb}" for nb in NOTEBOOKS)]
    assert not [n for n in needed if n not in infos]
    top = {name.split("/")[0] for name in infos}
    assert top == {"setup.sh", "run_autograder", "requirements.txt", "pyproject.toml", "autograder", "exercises",
                   "solutions", "source", "delivery"}
    assert not [n for n in infos if "__pycache__" in n or n.endswith(".pyc") or "checkpoint" in n]
    assert reqs == requirements() and any(r.startswith("torch") for r in reqs)
    again = tmp_path / "again.zip"
    subprocess.run([sys.executable, str(BUILDER), "--out", str(again)], cwd=REPO, check=True, capture_output=True)
    assert again.read_bytes() == bundle.read_bytes(), "the bundle is not reproducible"


def test_shell_scripts_parse_and_pass_shellcheck():
    scripts = [REPO / "delivery/gradescope/setup.sh", REPO / "delivery/gradescope/run_autograder", GRADE_SH]
    for script in scripts:
        done = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (apt-get install shellcheck): only `bash -n` was checked")
    done = subprocess.run(["shellcheck", *map(str, scripts)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout


@pytest.mark.slow
def test_setup_checks_pass_with_the_grader_python_and_fail_without_torch(bundle, tmp_path):
    """setup.sh's apt/pip part needs Gradescope's image; its closing checks run here (no-install mode)."""
    root = _unpack(bundle, tmp_path / "ag", None)
    setup = root / "source" / "setup.sh"
    ok = subprocess.run(["bash", str(setup)], env=_env(SELFATTN_SETUP_SKIP_INSTALL="1", SELFATTN_PYTHON=sys.executable),
                        capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0 and "setup.sh: ready" in ok.stdout, ok.stdout + ok.stderr
    bare = shutil.which("python3", path="/usr/bin")
    if bare is None or subprocess.run([bare, "-c", "import torch"], capture_output=True).returncode == 0:
        pytest.skip("no Python without torch at /usr/bin/python3 to show the check failing")
    failed = subprocess.run(["bash", str(setup)], env=_env(SELFATTN_SETUP_SKIP_INSTALL="1", SELFATTN_PYTHON=bare),
                            capture_output=True, text=True, timeout=300)
    assert failed.returncode != 0 and "ready" not in failed.stdout


# --- run_autograder --------------------------------------------------------------------------------

def _not_graded(result: dict) -> None:
    assert "score" not in result, "a grader fault must give no score, never a zero"
    assert result["output"].startswith("NOT GRADED") and result["extra_data"]["selfattn_not_graded"] is True
    assert not any(t.get("score") for t in result["tests"])


def test_missing_autograder_files_give_no_score(bundle, tmp_path):
    root = _unpack(bundle, tmp_path / "ag", EXAMPLES / "perfect")
    run_autograder = tmp_path / "run_autograder"  # Gradescope keeps its own copy outside source/
    shutil.copy2(root / "source" / "run_autograder", run_autograder)
    shutil.rmtree(root / "source")
    done = subprocess.run([str(run_autograder)], env=_env(SELFATTN_GRADESCOPE_ROOT=str(root),
                                                          SELFATTN_PYTHON=sys.executable),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    _not_graded(_results(root))


@pytest.mark.slow
def test_grader_exit_2_gives_no_score(bundle, tmp_path):
    """A master notebook missing from the bundle: the CLI exits 2 (it must not have found this checkout's)."""
    root = _unpack(bundle, tmp_path / "ag", EXAMPLES / "perfect")
    (root / "source" / "source" / "self_attention" / NOTEBOOKS[0]).unlink()
    done = _run_autograder(root, "--seed", str(SEED))
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    assert "exit status 2" in done.stderr
    _not_graded(_results(root))


def test_refuses_to_grade_where_student_code_could_read_the_solutions(bundle, tmp_path):
    """Without bubblewrap (--no-bwrap), a worker that cannot become ``nobody`` would run as the grader's user."""
    from autograder import sandbox

    if sandbox.can_drop_privileges(None):
        pytest.skip("here the worker can run as nobody without bubblewrap: nothing to refuse")
    root = _unpack(bundle, tmp_path / "ag", EXAMPLES / "perfect")
    done = _run_autograder(root, "--no-bwrap")
    assert done.returncode == 2, done.stderr
    _not_graded(_results(root))
    assert "kept away from the solutions" in _results(root)["output"]


@pytest.mark.slow
def test_an_upload_without_notebooks_scores_zero_and_says_what_to_upload(bundle, tmp_path):
    root = _unpack(bundle, tmp_path / "ag", None)
    (root / "submission" / "answers.zip").write_bytes(b"PK")
    done = _run_autograder(root)
    assert done.returncode == 0, done.stderr
    result = _results(root)
    assert result["score"] == 0 and NOTEBOOKS[0] in result["output"]


@pytest.mark.slow
@pytest.mark.parametrize("student", STUDENTS + ZH_STUDENTS)
def test_run_autograder_gives_the_clis_results(bundle, cli, tmp_path, student):
    root = _unpack(bundle, tmp_path / "ag", EXAMPLES / student)
    done = _run_autograder(root, "--seed", str(SEED))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = _results(root)
    expected = cli["gradescope"][student]
    assert result["score"] == expected["score"] == cli["json"][student]["score"]
    # a Chinese-edition upload scores what the same answers score in English
    assert result["score"] == cli["json"][student.removesuffix("_zh")]["score"]
    assert result == expected  # every test: name, score, max_score, status, output, visibility
    text = (root / "results" / "results.json").read_text()
    assert not [s for s in SECRETS if s in text]
    for locked in (root / "source", root / "source" / "solutions", root / "source" / "source"):
        assert not locked.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO), f"{locked} is open to other users"


# --- GitHub Classroom ------------------------------------------------------------------------------

def _item_points(sub: dict) -> dict[str, str]:
    points: dict[str, list[float]] = {}
    for t in sub["tests"]:
        pair = points.setdefault(t["item"], [0.0, 0.0])
        pair[0] += t["score"]
        pair[1] += t["max_score"]
    return {item: f"{s:g} / {m:g}" for item, (s, m) in points.items()}


def _summary_rows(markdown: str) -> dict[str, str]:
    """item -> points, read as Markdown reads the table: split at unescaped pipes, four columns a row."""
    rows = [[c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
            for line in markdown.splitlines() if line.startswith("| ") and "---" not in line]
    assert all(len(cells) == 4 for cells in rows), rows
    return {cells[1]: cells[2] for cells in rows[1:]}


@pytest.mark.slow
@pytest.mark.parametrize("student", ("one_wrong",) + ZH_STUDENTS)
def test_grade_sh_gives_the_clis_score_summary_and_points(cli, tmp_path, student):
    summary, output = tmp_path / "summary.md", tmp_path / "output"
    repo = tmp_path / "student-repo"  # a student's repository: the notebooks in a folder, other files beside
    shutil.copytree(EXAMPLES / student, repo)
    (repo / "README.md").write_text("my answers\n")
    done = subprocess.run(["bash", str(GRADE_SH), str(repo), str(REPO)], capture_output=True, text=True, timeout=900,
                          env=_env(SELFATTN_PYTHON=sys.executable, SELFATTN_GRADE_ARGS=f"--seed {SEED}",
                                   GITHUB_STEP_SUMMARY=str(summary), GITHUB_OUTPUT=str(output)))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    expected = cli["json"][student]
    assert expected["score"] == cli["json"]["one_wrong"]["score"]  # either edition, the same score
    outputs = dict(line.split("=", 1) for line in output.read_text().splitlines())
    assert outputs["graded"] == "true"
    assert float(outputs["score"]) == expected["score"] and float(outputs["max_score"]) == expected["max_score"]
    assert expected["score"] < expected["max_score"]  # the wrong item shows
    markdown = summary.read_text()
    assert f"{expected['score']:g} / {expected['max_score']:g} points" in markdown
    assert _summary_rows(markdown) == _item_points(expected)
    assert f"::notice title=Autograding complete::Points {expected['score']:g}/{expected['max_score']:g}" in done.stdout
    result = json.loads(base64.b64decode(outputs["result"]))  # the Classroom reporter's format
    assert sum(t["score"] for t in result["tests"]) == expected["score"] and result["status"] == "fail"
    # The grader's own output (which quotes student code) sits between stop-commands and its token.
    token = re.search(r"^::stop-commands::(\w+)$", done.stdout, re.M).group(1)
    start, end = done.stdout.index(f"::stop-commands::{token}"), done.stdout.index(f"::{token}::")
    assert "train_language_model" in done.stdout[start:end] and "::notice" not in done.stdout[start:end]
    assert not [s for s in SECRETS if s in markdown]


@pytest.mark.slow
def test_grade_sh_on_a_broken_grader_gives_no_score(bundle, tmp_path):
    grader = _unpack(bundle, tmp_path / "grader", None) / "source"
    (grader / "source" / "self_attention" / NOTEBOOKS[0]).unlink()
    summary, output = tmp_path / "summary.md", tmp_path / "output"
    env = _env(SELFATTN_PYTHON=sys.executable, GITHUB_STEP_SUMMARY=str(summary), GITHUB_OUTPUT=str(output))
    done = subprocess.run(["bash", str(GRADE_SH), str(EXAMPLES / "perfect"), str(grader)], capture_output=True,
                          text=True, timeout=600, env=env)
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    assert output.read_text().splitlines() == ["graded=false"]
    assert "Not graded" in summary.read_text() and "Points" not in done.stdout


def test_summary_escapes_student_text_and_refuses_to_score_a_grader_fault(tmp_path):
    sub = {"path": "x", "score": 1.0, "max_score": 3.0, "warnings": [], "tests": [
        {"name": "a[cpu-float64]", "item": "a", "notebook": "01.ipynb", "score": 1.0, "max_score": 1.0,
         "status": "passed", "message": ""},
        {"name": "b[cpu-float64]", "item": "b", "notebook": "01.ipynb", "score": 0.0, "max_score": 2.0,
         "status": "failed", "message": "ValueError: a|b <script>\n| forged | row |"}]}
    report, summary, output = tmp_path / "r.json", tmp_path / "s.md", tmp_path / "o"
    report.write_text(json.dumps({"submissions": [sub]}))
    env = _env(GITHUB_STEP_SUMMARY=str(summary), GITHUB_OUTPUT=str(output))
    done = subprocess.run([sys.executable, str(SUMMARY), str(report)], env=env, capture_output=True, text=True)
    assert done.returncode == 0 and "Points 1/3" in done.stdout
    markdown = summary.read_text()
    assert "<script>" not in markdown and "&lt;script&gt;" in markdown
    assert _summary_rows(markdown) == {"a": "1 / 1", "b": "0 / 2"}  # the forged row stayed inside its cell
    report.write_text(json.dumps({"submissions": [], "not_graded": [{"path": "x", "errors": {"01.ipynb": "boom"}}]}))
    output.unlink()
    done = subprocess.run([sys.executable, str(SUMMARY), str(report)], env=env, capture_output=True, text=True)
    assert done.returncode == 2 and "Points" not in done.stdout
    assert output.read_text() == "graded=false\n"


def test_workflow_keeps_the_token_out_of_the_grading_step():
    yaml = pytest.importorskip("yaml", reason="PyYAML is needed to read the workflow")
    workflow = yaml.safe_load(WORKFLOW.read_text())
    assert set(workflow["on"]) >= {"push"}
    steps = workflow["jobs"]["grade"]["steps"]
    with_secret = [s for s in steps if "secrets." in json.dumps(s)]
    assert len(with_secret) == 1 and with_secret[0]["uses"].startswith("actions/checkout@")
    assert with_secret[0]["with"]["token"] == "${{ secrets.GRADER_TOKEN }}"
    checkouts = [s for s in steps if s.get("uses", "").startswith("actions/checkout")]
    assert len(checkouts) == 2 and all(s["with"]["persist-credentials"] is False for s in checkouts)
    grading = next(s for s in steps if s.get("id") == "grade")
    assert "grade.sh" in grading["run"] and "env" not in grading
    for scope in (workflow, workflow["jobs"]["grade"]):  # no secret reaches a step by env
        assert "secrets." not in json.dumps(scope.get("env", {}))
