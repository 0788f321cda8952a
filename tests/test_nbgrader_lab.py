"""nbgrader as JupyterLab runs it: what the browser showed (issue 11), checked without a browser.

* The course's ``nbgrader_config.py`` makes nbgrader find its tools from the running Python, so the
  Formgrader works in a Lab started as ``.venv/bin/jupyter lab`` without activating the environment.
* A gradebook is created fully migrated even with no ``alembic`` on PATH, and one that an earlier
  run left without its ``alembic_version`` table is refused with a clear error (and can be stamped).
* The exchange is a course-local folder, so the Assignment List and the Formgrader list without
  "The exchange directory does not exist".
* ``scripts/release.py`` ignores the notebook metadata JupyterLab rewrites when it opens a notebook.
* Validate (the Lab button and ``nbgrader validate``) starts with one line per graded cell.

Each check that loads the course config runs in a subprocess: the config patches nbgrader and sets
PATH for the whole process, as it does in the Lab's server.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook, new_output

from autograder.examples import ASSIGNMENT, answer_cells, strip_solution_delimiters
from autograder.nbgrader import validate as nv

ROOT = Path(__file__).resolve().parents[1]
BIN = str(Path(sys.executable).parent)
BARE_PATH = "/usr/bin:/bin"  # a PATH without this environment's bin/ (where `alembic` lives)


def run_python(code: str, *args: str, cwd: Path | None = None, timeout: float = 300) -> dict:
    """Run ``code`` in a fresh interpreter with a bare PATH; return the JSON it prints last."""
    env = dict(os.environ, PATH=BARE_PATH, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture
def course(tmp_path) -> Path:
    """A course root holding only the course's ``nbgrader_config.py``."""
    root = tmp_path / "course"
    root.mkdir()
    shutil.copy2(ROOT / "nbgrader_config.py", root / "nbgrader_config.py")
    return root


# --- the configuration as the Lab's server loads it ---------------------------------------------

_PROBE = r"""
import copy, json, os, shutil, sys
from traitlets.config.loader import PyFileConfigLoader
root = sys.argv[1]
before = shutil.which("alembic")
config = PyFileConfigLoader("nbgrader_config.py", path=root).load_config()
import nbgrader.apps.validateapp as validateapp
import nbgrader.server_extensions.validate_assignment.handlers as handlers
from nbgrader.auth import Authenticator
from nbgrader.coursedir import CourseDirectory
from nbgrader.exchange import ExchangeError
from nbgrader.exchange.default.list import ExchangeList

def listing(config):
    try:
        lister = ExchangeList(coursedir=CourseDirectory(config=config), authenticator=Authenticator(config=config),
                              config=config)
        return {"ok": lister.start()}
    except ExchangeError as exc:
        return {"error": str(exc)}

missing = copy.deepcopy(config)
missing.Exchange.root = os.path.join(root, "no-such-exchange")
print(json.dumps({
    "alembic_before": before, "alembic_after": shutil.which("alembic"),
    "path0": os.environ["PATH"].split(os.pathsep)[0],
    "exchange_root": config.Exchange.root, "exchange_is_dir": os.path.isdir(config.Exchange.root),
    "listing": listing(config), "listing_missing": listing(missing),
    "stub": config.ClearSolutions.code_stub["python"],
    "handler_validator": handlers.Validator.__module__ + "." + handlers.Validator.__name__,
    "cli_validator": validateapp.Validator.__module__ + "." + validateapp.Validator.__name__,
}))
"""


@pytest.mark.slow
def test_config_sets_up_tools_exchange_stub_and_validator(course):
    probe = run_python(_PROBE, str(course), cwd=course)
    # the Lab was started with a PATH that has no `alembic`; the config puts this Python's bin/ first
    assert probe["alembic_before"] is None, "the bare PATH should not find alembic (the test would prove nothing)"
    assert probe["path0"] == BIN
    assert probe["alembic_after"] == os.path.join(BIN, "alembic")
    # a course-local exchange, created on demand, that nbgrader can list; a missing one is an error
    assert probe["exchange_root"] == str(course / "exchange") and probe["exchange_is_dir"]
    assert probe["listing"] == {"ok": []}
    assert "error" in probe["listing_missing"], probe["listing_missing"]
    # the stub says what to do
    assert probe["stub"].endswith('raise NotImplementedError("write your answer here, then run this cell and the '
                                  'check below it")')
    # Validate, from the Lab's button and from `nbgrader validate`, is the course's
    assert probe["handler_validator"] == probe["cli_validator"] == "autograder.nbgrader.validate.CourseValidator"


def test_exchange_folder_is_gitignored():
    proc = subprocess.run(["git", "check-ignore", "-q", "exchange/self-attention/outbound/x"], cwd=ROOT)
    assert proc.returncode == 0, "add /exchange/ to .gitignore"


# --- the gradebook, with no `alembic` on PATH ---------------------------------------------------

_GRADEBOOK = r"""
import json, os, sqlite3, sys
root, mode, db = sys.argv[1:4]
if mode == "course":
    from traitlets.config.loader import PyFileConfigLoader
    PyFileConfigLoader("nbgrader_config.py", path=root).load_config()
os.environ["PATH"] = "/nonexistent"  # alembic is nowhere on PATH: the Lab started without the environment
from nbgrader.api import Gradebook
try:
    Gradebook("sqlite:///" + db, course_id="c").close()
    outcome = "ok"
except Exception as exc:
    outcome = f"{type(exc).__name__}: {exc}"
tables = []
if os.path.exists(db):
    with sqlite3.connect(db) as con:
        tables = sorted(r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'"))
        has_version = "alembic_version" in tables
        version = con.execute("SELECT version_num FROM alembic_version").fetchall() if has_version else None
print(json.dumps({"outcome": outcome, "tables": tables, "version": version if tables else None}))
"""


def alembic_cli_head() -> str:
    """The head revision as nbgrader itself asks for it: the ``alembic`` executable, run by path."""
    from nbgrader.dbutil import _temp_alembic_ini

    with _temp_alembic_ini("sqlite:////tmp/unused.db") as ini:
        out = subprocess.run([os.path.join(BIN, "alembic"), "-c", ini, "heads"], capture_output=True, text=True,
                             check=True).stdout
    return out.split("\n")[0].split(" ")[0]


@pytest.mark.slow
def test_gradebook_is_never_half_migrated(course, tmp_path):
    head = alembic_cli_head()
    assert head
    # nbgrader alone, without alembic on PATH: the failure the browser showed (tables, no version table)
    plain_db = tmp_path / "plain.db"
    plain = run_python(_GRADEBOOK, str(course), "plain", str(plain_db))
    assert plain["outcome"].startswith("FileNotFoundError"), plain
    assert "assignment" in plain["tables"] and "alembic_version" not in plain["tables"], plain

    # with the course's config: created fully migrated, at the head alembic itself reports
    fresh = run_python(_GRADEBOOK, str(course), "course", str(tmp_path / "fresh.db"))
    assert fresh["outcome"] == "ok", fresh
    assert "alembic_version" in fresh["tables"] and fresh["version"] == [[head]], fresh

    # the half-migrated gradebook is refused, with the way out in the message ...
    refused = run_python(_GRADEBOOK, str(course), "course", str(plain_db))
    assert refused["outcome"].startswith("HalfMigratedGradebook"), refused
    assert "alembic_version" in refused["outcome"] and "nbgrader.gradebook stamp" in refused["outcome"]
    # ... and the repair command makes it usable
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    stamp = subprocess.run([sys.executable, "-m", "autograder.nbgrader.gradebook", "stamp", str(plain_db)],
                           capture_output=True, text=True, env=env, timeout=120)
    assert stamp.returncode == 0, stamp.stderr
    repaired = run_python(_GRADEBOOK, str(course), "course", str(plain_db))
    assert repaired["outcome"] == "ok" and repaired["version"] == [[head]], repaired


def test_alembic_head_in_process_needs_no_path(monkeypatch):
    from autograder.nbgrader.gradebook import alembic_head, half_migrated, sqlite_path

    monkeypatch.setenv("PATH", "/nonexistent")
    alembic_head.cache_clear()
    assert len(alembic_head()) >= 8
    assert sqlite_path("sqlite:////x/gradebook.db") == Path("/x/gradebook.db")
    assert sqlite_path("sqlite://") is None and sqlite_path("postgresql://h/db") is None
    assert not half_migrated("sqlite:////no/such/file.db")


# --- the release check and JupyterLab's metadata ------------------------------------------------


def _load_release_script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("_release_for_lab_test", ROOT / "scripts" / "release.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_release_check_ignores_what_jupyterlab_rewrites_on_opening():
    release = _load_release_script()
    path = ROOT / "release" / ASSIGNMENT / "01_attention_scores.ipynb"
    committed = path.read_text(encoding="utf-8")
    nb = nbformat.reads(committed, as_version=4)
    # what JupyterLab 4 writes when the kernel starts and the notebook is saved
    nb.metadata["kernelspec"]["display_name"] = "Python 3 (ipykernel)"
    nb.metadata["language_info"] = {
        "codemirror_mode": {"name": "ipython", "version": 3}, "file_extension": ".py",
        "mimetype": "text/x-python", "name": "python", "nbconvert_exporter": "python",
        "pygments_lexer": "ipython3", "version": "3.11.2",
    }
    opened = nbformat.writes(nb)
    assert opened != committed
    assert release.normalise_notebook(opened) == release.normalise_notebook(committed)
    assert release.compare({"a.ipynb": release.normalise_notebook(committed).encode()},
                           {"a.ipynb": release.normalise_notebook(opened).encode()}) == []
    # a real change still counts
    nb.cells[0].source += "\nedited"
    assert release.normalise_notebook(nbformat.writes(nb)) != release.normalise_notebook(committed)
    nb.cells[0].source = nb.cells[0].source[: -len("\nedited")]
    nb.metadata["kernelspec"]["name"] = "other"
    assert release.normalise_notebook(nbformat.writes(nb)) != release.normalise_notebook(committed)


# --- Validate's summary ---------------------------------------------------------------------------


def _graded(grade_id: str, points: float, outputs: list) -> nbformat.NotebookNode:
    meta = {"nbgrader": {"grade": True, "solution": False, "locked": True, "grade_id": grade_id, "points": points,
                         "schema_version": 3}}
    return new_code_cell("check()", metadata=meta, outputs=outputs)


def test_summary_names_each_graded_cell_passed_failed_or_not_answered():
    nb = new_notebook(cells=[
        _graded("test_good", 1, [new_output("stream", name="stdout", text="good: all visible checks passed\n")]),
        _graded("test_wrong", 2, [new_output("error", ename="AssertionError", evalue="the first row should be 1",
                                             traceback=["long", "traceback"])]),
        _graded("test_todo", 3, [new_output("error", ename="NotImplementedError", evalue="write your answer here",
                                            traceback=["tb"])]),
        _graded("test_noisy", 1, [new_output("stream", name="stderr", text="UserWarning: careful\n")]),
        new_code_cell("x = 1", metadata={"nbgrader": {"grade": False, "solution": True, "grade_id": "todo"}}),
    ])
    rows = nv.cell_results(nb)
    assert [(r.name, r.points, r.status) for r in rows] == [
        ("good", 1, nv.PASSED), ("wrong", 2, nv.FAILED), ("todo", 3, nv.NOT_ANSWERED), ("noisy", 1, nv.FAILED)]
    assert rows[1].reason == "AssertionError: the first row should be 1"
    assert rows[3].reason == "printed to stderr: UserWarning: careful"
    text = nv.summary_text(rows).splitlines()
    assert text[0] == "Summary of the graded cells: 1 passed, 2 failed, 1 not answered"
    assert text[1].startswith("(1 of 7 points pass the visible checks")
    assert text[2].split() == ["passed", "good", "(1", "point)"]
    assert text[3].split() == ["FAILED", "wrong", "(2", "points)"]
    assert text[4].strip() == "AssertionError: the first row should be 1"  # its own line, so it wraps
    assert text[5].split()[:3] == ["not", "answered", "todo"]
    long = nv.summary_text([nv.CellResult("wrong", 2, nv.FAILED, "call optimizer.zero_grad() " * 5)])
    assert max(len(line) for line in long.splitlines()[2:]) <= 78  # no row runs off the dialog's edge
    assert " ".join(long.split()).count("optimizer.zero_grad()") == 5  # wrapped, not cut
    assert "NotImplementedError" in nv.notes_text(rows) and "FAILED" in nv.notes_text(rows)


_VALIDATE = r"""
import io, json, sys
from traitlets.config.loader import PyFileConfigLoader
root, path = sys.argv[1:3]
config = PyFileConfigLoader("nbgrader_config.py", path=root).load_config()
import nbgrader.server_extensions.validate_assignment.handlers as handlers
validator = handlers.Validator(config=config)  # the class the Lab's Validate button uses
results = validator.validate(path)
validator.validate = lambda _path: results
validator.stream = io.StringIO()
validator.validate_and_print(path)  # what `nbgrader validate` prints, from the same results
print(json.dumps({"results": results, "printed": validator.stream.getvalue()}))
"""


@pytest.mark.slow
def test_validate_starts_with_a_summary_on_a_real_release_notebook(course):
    """Lesson 1 with one right answer, one wrong answer and the rest unanswered, validated by the class
    the Lab's Validate button uses (``nbgrader validate`` exits 0 either way; the result says it all)."""
    name = "01_attention_scores.ipynb"
    source = nbformat.read(ROOT / "source" / ASSIGNMENT / name, as_version=4)
    nb = nbformat.read(ROOT / "release" / ASSIGNMENT / name, as_version=4)
    right = strip_solution_delimiters(answer_cells(source)["attention_scores_loop"].source)
    wrong = "def attention_scores(inputs):\n    return 2 * inputs @ inputs.transpose(-2, -1)"
    for cell in nb.cells:
        grade_id = cell.metadata.get("nbgrader", {}).get("grade_id")
        if grade_id == "attention_scores_loop":
            cell.source = right
        elif grade_id == "attention_scores":
            cell.source = wrong
    path = course / name
    nbformat.write(nb, path)
    out = run_python(_VALIDATE, str(course), str(path), cwd=course)
    failed = out["results"]["failed"]
    summary = failed[0]["source"].splitlines()
    assert summary[0] == "Summary of the graded cells: 1 passed, 1 failed, 4 not answered", summary
    rows = {m[2]: (m[1], m[3]) for m in (re.match(r"  (passed|FAILED|not answered)\s+(\w+)\s+\(.*?\)(.*)", x)
                                        for x in summary[2:]) if m}
    assert rows["attention_scores_loop"][0] == "passed"
    assert rows["attention_scores"][0] == "FAILED"
    failed_row = next(i for i, x in enumerate(summary) if x.split()[:2] == ["FAILED", "attention_scores"])
    assert "AssertionError" in summary[failed_row + 1]  # the error on its own, wrapped lines below the row
    for item in ("softmax_naive", "softmax_stable", "context_vectors", "simple_self_attention"):
        assert rows[item][0] == "not answered", rows[item]
    assert len(rows) == 6
    # after the summary: the failed cell, in full; no entry for the unanswered ones
    assert len(failed) == 2 and "attention_scores(book_inputs)" in failed[1]["source"]
    assert "AssertionError" in failed[1]["raw_error"]
    # the Lab dialog: the summary's HTML carries the style that hides the extension's "The following cell
    # failed:" above it (checked in a real browser in tests/test_browser.py); a failed cell keeps its heading
    assert failed[0]["error"].startswith(nv.DIALOG_STYLE) and "<style>" not in failed[1]["error"]
    assert "<style>" not in failed[0]["raw_error"]
    assert sum(len(e["source"]) + len(e["raw_error"]) for e in failed) < 8000
    assert out["printed"].startswith("Summary of the graded cells: 1 passed, 1 failed, 4 not answered")
