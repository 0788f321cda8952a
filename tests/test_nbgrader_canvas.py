"""Grades out to Canvas (issue 18): the export plugin writes Canvas's gradebook import CSV from a real gradebook."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
from nbgrader.api import Gradebook

from autograder.nbgrader import gradebook as course_gradebook
from autograder.nbgrader.canvas import CANVAS_COLUMNS, canvas_rows

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def db(tmp_path):
    """A gradebook: assignment ``hw`` (two cells, 2 + 3 points); ann 4.5, bob ungraded cell, cy no submission."""
    course_gradebook.install()
    url = f"sqlite:///{tmp_path / 'gradebook.db'}"
    with Gradebook(url) as gb:
        gb.add_assignment("hw")
        gb.add_notebook("01", "hw")
        gb.add_grade_cell("test_a", "01", "hw", max_score=2, cell_type="code")
        gb.add_grade_cell("test_b", "01", "hw", max_score=3, cell_type="code")
        gb.add_student("ann", first_name="Ann", last_name="Lee")
        gb.add_student("bob")
        gb.add_student("cy")
        for student, scores in (("ann", (2.0, 2.5)), ("bob", (1.0, None))):
            gb.add_submission("hw", student)
            for cell, score in zip(("test_a", "test_b"), scores, strict=True):
                grade = gb.find_grade(cell, "01", "hw", student)
                grade.auto_score = score
            gb.db.commit()
    return url


def test_the_csv_has_canvas_columns_points_possible_and_blanks_where_no_grade_is_trusted(db):
    with Gradebook(db) as gb:
        header, rows, blanks = canvas_rows(gb, assignment_columns={"hw": "Homework (123)"})
    assert header == [*CANVAS_COLUMNS, "Homework (123)"]
    assert rows[0] == ["Points Possible", "", "", "", "", "5"]
    assert rows[1:] == [["Lee, Ann", "", "", "ann", "", "4.5"],
                        ["bob", "", "", "bob", "", ""],  # a cell the grader did not score: never a number
                        ["cy", "", "", "cy", "", ""]]  # no submission: Canvas keeps what it has
    assert blanks == ["bob: hw is not fully graded (re-run autograde)", "cy: no submission of hw"]


def test_the_student_id_goes_where_the_course_says(db):
    with Gradebook(db) as gb:
        header, rows, _ = canvas_rows(gb, id_column="SIS User ID", students=["ann"])
        with pytest.raises(ValueError, match="id_column"):
            canvas_rows(gb, id_column="Email")
    assert rows[1] == ["Lee, Ann", "", "ann", "", "", "4.5"] and len(rows) == 2


def test_nbgrader_export_writes_it(db, tmp_path):
    (tmp_path / "nbgrader_config.py").write_text(
        f"c = get_config()\nc.CourseDirectory.db_url = {db!r}\nc.CourseDirectory.root = {str(tmp_path)!r}\n")
    out = tmp_path / "canvas.csv"
    proc = subprocess.run([sys.executable, "-m", "nbgrader", "export", "--exporter",
                           "autograder.nbgrader.canvas.CanvasExportPlugin", "--to", str(out)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with out.open(newline="") as fh:
        table = list(csv.reader(fh))
    assert table[0][:5] == list(CANVAS_COLUMNS) and table[2] == ["Lee, Ann", "", "", "ann", "", "4.5"]
    assert "left blank" in proc.stderr and "cy: no submission" in proc.stderr
