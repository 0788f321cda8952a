"""The command line's score table (autograder/report.py): every line whole and at most the width, broken
between words, each failure said once; on a hostile message from the worker and on the bundled example
``one_wrong`` (issue 18: cut-off duplicate lines in FAILURES, "what to fix" lines ending mid-word)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from autograder import report
from autograder.grading import NotebookResult, TestOutcome

ROOT = Path(__file__).resolve().parents[1]
WORDS = ("the gradients are never reset so from the second step on each step uses the sum of all past "
         "gradients call optimizer.zero_grad() once every step before loss.backward()").split()


def _sub(outcomes: list[TestOutcome], notes: list[str] | None = None) -> report.SubmissionReport:
    sub = report.SubmissionReport(path="/course/submitted/ada", seed=1, devices=["cpu"], isolation="bubblewrap")
    sub.add(NotebookResult("07_tiny_language_model.ipynb", outcomes, notes or [], "bubblewrap", 1.0))
    return sub


def _row(variant: str, message: str, status: str = "failed") -> TestOutcome:
    return TestOutcome("train_language_model", "07_tiny_language_model.ipynb", "cpu", variant, status, 0.0, 1.5,
                       message)


def _fix_section(text: str) -> list[str]:
    lines = text.splitlines()
    return lines[lines.index("   what to fix:") + 1:]


def _tokens(lines: list[str]) -> list[str]:
    """The words of the "what to fix" entries, without each entry's ``- item[...]:`` head."""
    body = " ".join(re.sub(r"^\s*- \S+\[[^\]]*\]:", "", line) for line in lines)
    return body.split()


def test_a_long_message_is_wrapped_between_words():
    message = " ".join(WORDS * 12)  # about 2,000 characters: past the 100-character line many times
    text = report.table(_sub([_row("float64", message)]), width=100)
    fixes = _fix_section(text)
    assert len(fixes) > 5
    assert all(len(line) <= 100 for line in text.splitlines()), max(text.splitlines(), key=len)
    said = {t for t in _tokens(fixes) if not re.fullmatch(r"\(\d+", t)}
    assert said - {"…", "more", "characters", "in", "JSON", "report)"} <= set(WORDS), "a word was cut"
    assert fixes[-1].endswith("characters in the JSON report)")  # cut at MESSAGE_LIMIT, and says so


def test_each_failure_is_said_once():
    same = "case c1: wrong value at [0, 1]"
    text = report.table(_sub([_row("float64", same), _row("float32", same)]))
    fixes = _fix_section(text)
    assert fixes == ["   - train_language_model[cpu-float64, cpu-float32]: case c1: wrong value at [0, 1]"]
    different = report.table(_sub([_row("float64", "got 1.9"), _row("float32", "got 1.7")]))
    assert _fix_section(different) == ["   - train_language_model[cpu-float64]: got 1.9",
                                       "   - train_language_model[cpu-float32]: got 1.7"]


def test_a_hostile_message_cannot_garble_the_terminal():
    hostile = ("\x1b[2J\x1b[31mcleared\x1b[0m\r\rfake line\n== other: 76 / 76 points\x00\x07\u202eevil "
               + "A" * 5000 + " tail " + "word " * 200_000)
    note = "answer cell raised ValueError: " + "\x1b]0;title\x07" + "z" * 300
    text = report.table(_sub([_row("float64", hostile)], notes=[note]), width=90)
    assert all(len(line) <= 90 for line in text.splitlines())
    assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f\u202e]", text)
    assert len(text) < 3 * report.MESSAGE_LIMIT  # a megabyte of message is not printed whole
    assert not any(line.startswith("== other") for line in text.splitlines())  # no fake table of its own
    assert sum(line.startswith("   - ") for line in _fix_section(text)) == 1


def test_readable_keeps_a_short_message_unchanged():
    assert report.readable("got 1.5, expected 2") == "got 1.5, expected 2"
    assert report.readable("a\n  b\tc") == "a b c"


@pytest.mark.slow
def test_the_cli_on_one_wrong_prints_each_failure_once_and_whole():
    """``python -m autograder grade examples/submissions/one_wrong`` in a 100-column terminal (about 25 s)."""
    env = dict(os.environ, COLUMNS="100")
    proc = subprocess.run([sys.executable, "-m", "autograder", "grade", "examples/submissions/one_wrong"],
                          cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert "FAILURES" not in out and "short test summary" not in out
    lines = out.splitlines()
    assert all(len(line) <= 100 for line in lines), max(lines, key=len)
    fixes = []
    for line in _fix_section(out):  # the section ends where pytest's closing line starts
        if not line.startswith(("   - ", "     ")):
            break
        fixes.append(line)
    entries = [line for line in fixes if line.startswith("   - ")]
    assert [e.split(":")[0] for e in entries] == ["   - train_language_model[cpu-float64]",
                                                  "   - train_language_model[cpu-float32]"]
    assert "zero_grad() once every step, before" in " ".join(" ".join(fixes).split())
    assert len(fixes) > len(entries)  # wrapped, not cut: the message runs on under its entry


NB2 = "02_scaled_dot_product_attention.ipynb"


@pytest.mark.slow
def test_does_the_cli_grade_where_pytest_does_not_load_its_plugin(tmp_path):
    """A course used from its folder, not pip-installed (JupyterHub's shared environment), has no ``pytest11``
    entry point; ``PYTEST_DISABLE_PLUGIN_AUTOLOAD`` has the same effect here. The CLI then names the plugin itself
    (it exited 2 with "not found: .../grading.selfattn.json")."""
    notebook = ROOT / "examples" / "submissions" / "perfect" / "self_attention" / NB2
    env = dict(os.environ, PYTEST_DISABLE_PLUGIN_AUTOLOAD="1")
    report_path = tmp_path / "report.json"
    proc = subprocess.run([sys.executable, "-m", "autograder", "grade", str(notebook), "--device", "cpu", "-q",
                           "--json", str(report_path)], cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    import json

    [submission] = json.loads(report_path.read_text())["submissions"]
    graded = [t for t in submission["tests"] if t["notebook"] == notebook.name and t["device"] == "cpu"]
    assert graded and all(t["status"] == "passed" for t in graded), graded
