"""Autograde warns about a changed test cell only where the student changed it (issue 18).

nbgrader's gradebook keeps each test cell with its hidden tests; the release removed them. The
course's ``CourseOverwriteCells`` stays quiet for a cell that is exactly as released and warns, as
nbgrader does, for one the student edited, including a changed nbgrader flag.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from types import SimpleNamespace

import pytest
from nbformat.v4 import new_code_cell
from nbgrader import utils

from autograder.nbgrader.sanitize import CourseOverwriteCells, released_source

ROOT = Path(__file__).resolve().parents[1]
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


# --- CourseCheckCellMetadata: nbgrader's verdicts, the schema checked once -------------------------


def _verdict(validator, cell):
    try:
        validator.validate_cell(cell)
    except Exception as exc:  # noqa: BLE001 - the verdict is what is compared
        return type(exc).__name__, str(exc).splitlines()[0]
    return "ok"


def _meta_cell(**changes):
    cell = _cell("assert f(1) == 1")
    cell.metadata["nbgrader"].update(changes)
    for key, value in changes.items():
        if value is None:
            del cell.metadata["nbgrader"][key]
    return cell


@pytest.mark.parametrize("changes", [
    {}, {"points": "two"}, {"grade_id": None}, {"grade_id": ""}, {"points": None}, {"schema_version": 1},
    {"schema_version": 4}, {"surprise": True}, {"locked": "yes"},
], ids=["valid", "points-type", "no-id", "empty-id", "no-points", "too-old", "too-new", "extra-key", "locked-type"])
def test_the_fast_validator_gives_nbgraders_verdict(changes):
    from nbgrader.nbgraderformat import MetadataValidator

    from autograder.nbgrader.sanitize import FastMetadataValidator

    cell = _meta_cell(**changes)
    expected = _verdict(MetadataValidator(), copy.deepcopy(cell))
    assert _verdict(FastMetadataValidator(), cell) == expected
    assert (expected == "ok") == (changes == {})  # every broken cell is really refused


def test_every_source_notebook_passes_both_ways():
    import nbformat

    from autograder.nbgrader.sanitize import CourseCheckCellMetadata

    for path in sorted((ROOT / "source" / "self_attention").glob("*.ipynb")):
        CourseCheckCellMetadata().preprocess(nbformat.read(path, as_version=4), {})
    broken = nbformat.read(next((ROOT / "source" / "self_attention").glob("*.ipynb")), as_version=4)
    graded = next(c for c in broken.cells if c.metadata.get("nbgrader", {}).get("grade"))
    graded.metadata["nbgrader"]["points"] = "two"
    with pytest.raises(Exception, match="nbgrader metadata may be corrupted"):
        CourseCheckCellMetadata().preprocess(broken, {})
