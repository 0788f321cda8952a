"""Feedback worth reading (issue 18): each page has the assignment total and output text that wraps."""

from __future__ import annotations

import pytest
from nbformat.v4 import new_code_cell, new_notebook
from nbgrader.api import Gradebook

from autograder.nbgrader import gradebook as course_gradebook
from autograder.nbgrader.readable import WRAP_STYLE, FeedbackHeader, StudentName, header_text


@pytest.fixture
def db(tmp_path):
    """Assignment ``hw``: notebook 01 (2 points, ann 1.5) and 02 (3 points, ann 3)."""
    course_gradebook.install()
    url = f"sqlite:///{tmp_path / 'gradebook.db'}"
    with Gradebook(url) as gb:
        gb.add_assignment("hw")
        for nb_name, cell, points in (("01", "test_a", 2), ("02", "test_b", 3)):
            gb.add_notebook(nb_name, "hw")
            gb.add_grade_cell(cell, nb_name, "hw", max_score=points, cell_type="code")
        gb.add_student("ann")
        gb.add_submission("hw", "ann")
        gb.find_grade("test_a", "01", "hw", "ann").auto_score = 1.5
        gb.find_grade("test_b", "02", "hw", "ann").auto_score = 3.0
        gb.db.commit()
    return url


def test_each_page_starts_with_the_assignment_total_and_this_notebooks_score(db):
    resources = {"nbgrader": {"db_url": db, "assignment": "hw", "student": "ann", "notebook": "01"}}
    nb = new_notebook(cells=[new_code_cell("x = 1")])
    for _ in range(2):  # a second run (feedback regenerated) does not stack headers
        nb, _ = FeedbackHeader().preprocess(nb, resources)
    assert [c.cell_type for c in nb.cells] == ["markdown", "code"]
    assert nb.cells[0].source.startswith("**hw: 4.5 / 5 points in all**; this notebook, 01: 1.5 / 2")
    assert WRAP_STYLE in nb.cells[0].source and "pre-wrap" in WRAP_STYLE


def test_a_late_penalty_is_said():
    assert "after a late penalty of 1" in header_text("hw", 3.5, 5, "01", 1.5, 2, penalty=1.0)


def test_a_nameless_student_is_named_after_their_id_and_a_named_one_kept(db):
    with Gradebook(db) as gb:
        gb.add_student("bo", first_name="Bo", last_name="Kim")
    for student in ("ann", "bo"):
        StudentName().preprocess(new_notebook(), {"nbgrader": {"db_url": db, "student": student}})
    with Gradebook(db) as gb:
        ann, bo = gb.find_student("ann"), gb.find_student("bo")
        assert (ann.last_name, ann.first_name) == ("ann", "")  # the Formgrader shows "ann, ", not "None, None"
        assert (bo.last_name, bo.first_name) == ("Kim", "Bo")
