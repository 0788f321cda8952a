"""Autograde warns about a changed test cell only where the student changed it (issue 18).

nbgrader's gradebook keeps each test cell with its hidden tests; the release removed them. The
course's ``CourseOverwriteCells`` stays quiet for a cell that is exactly as released and warns, as
nbgrader does, for one the student edited, including a changed nbgrader flag.
"""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
from nbformat.v4 import new_code_cell
from nbgrader import utils

from autograder.nbgrader.sanitize import CourseOverwriteCells, released_source

FULL = "assert f(1) == 1\n### BEGIN HIDDEN TESTS\nassert f(2) == 2\n### END HIDDEN TESTS\nprint('ok')"


def _cell(source: str, grade: bool = True) -> dict:
    meta = {"nbgrader": {"grade": grade, "solution": False, "locked": True, "grade_id": "test_f", "points": 2.0,
                         "schema_version": 3, "task": False}}
    return new_code_cell(source, metadata=meta)


class _Gradebook:
    def __init__(self):
        cell = _cell(FULL)
        self.source = SimpleNamespace(name="test_f", cell_type="code", locked=True, source=FULL,
                                      checksum=utils.compute_checksum(cell))

    def find_source_cell(self, grade_id, notebook_id, assignment_id):
        return self.source

    def find_notebook(self, notebook_id, assignment_id):
        return SimpleNamespace(source_cells=[self.source])

    def find_graded_cell(self, grade_id, notebook_id, assignment_id):
        return SimpleNamespace(max_score=2.0)


def _warnings(cell, caplog) -> list[str]:
    pre = CourseOverwriteCells()
    pre.gradebook, pre.notebook_id, pre.assignment_id = _Gradebook(), "01_x", "self_attention"
    pre.log = logging.getLogger("test-sanitize")
    with caplog.at_level(logging.DEBUG, logger="test-sanitize"):
        out, _ = pre.preprocess_cell(cell, {}, 0)
    assert out.source == FULL  # whatever was submitted, the gradebook's cell (hidden tests included) is graded
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_the_released_form_drops_only_the_hidden_region():
    assert released_source(FULL) == "assert f(1) == 1\nprint('ok')"


def test_a_cell_as_released_is_not_reported(caplog):
    assert _warnings(_cell(released_source(FULL)), caplog) == []


@pytest.mark.parametrize("cell", [
    _cell("assert True  # edited by the student"),
    _cell(released_source(FULL) + "\nimport os"),
], ids=["rewritten", "appended"])
def test_a_cell_the_student_changed_is_reported(cell, caplog):
    assert any("Attribute 'checksum' for cell test_f has changed" in w for w in _warnings(cell, caplog))


def test_a_changed_flag_is_reported_and_nbgrader_still_refuses_the_cell(caplog):
    # same text, but no longer a graded cell: warned, then nbgrader's own check fails that student loudly
    with pytest.raises(RuntimeError, match="Inconsistent checksums"):
        _warnings(_cell(released_source(FULL), grade=False), caplog)
    assert any("Attribute 'checksum' for cell test_f has changed" in r.getMessage() for r in caplog.records)
