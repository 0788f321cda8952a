"""Autograde's sanitizing step without false alarms: only a locked cell the student changed is reported.

nbgrader's ``OverwriteCells`` compares each locked cell of a submission with the gradebook's copy,
whose checksum was computed from ``source/``, hidden tests included. A test cell with hidden tests
therefore never matches what the student received (the release has them removed), and a clean
submission logs ``Attribute 'checksum' for cell test_... has changed!`` for every such cell (29 in
this course). :class:`CourseOverwriteCells` reports a checksum change only when the cell differs
from its released form: the source cell with its hidden-test region removed, nbgrader metadata as
the gradebook has it. In every case the cell is put back from the gradebook, as nbgrader does.

:class:`CourseCheckCellMetadata` is nbgrader's ``CheckCellMetadata`` with the same verdicts, faster:
nbgrader validates each cell with ``jsonschema.validate``, which checks the (constant) schema itself
again for every cell: a quarter of autograde's own time per student in this course (profiled). Here
the schema is checked once per process and each cell against it.
"""

from __future__ import annotations

import copy
import functools
import json
import traceback
from typing import Any

import jsonschema
from nbformat.notebooknode import NotebookNode
from nbgrader import utils
from nbgrader.api import MissingEntry
from nbgrader.nbgraderformat import MetadataValidator, ValidationError
from nbgrader.nbgraderformat.common import BaseMetadataValidator
from nbgrader.preprocessors import CheckCellMetadata, ClearHiddenTests, OverwriteCells

__all__ = ["CourseCheckCellMetadata", "CourseOverwriteCells", "FastMetadataValidator", "released_source"]


def released_source(source: str) -> str:
    """``source`` as ``generate_assignment`` releases it: its hidden-test region removed (nbgrader's own code)."""
    cell = NotebookNode({"cell_type": "code", "source": source, "metadata": {}})
    ClearHiddenTests()._remove_hidden_test_region(cell)
    return cell.source


def as_released(cell: NotebookNode, source_cell: Any) -> bool:
    """Whether ``cell`` is its gradebook ``source_cell`` as released: the same but for the hidden tests."""
    if cell.cell_type != source_cell.cell_type or cell.source != released_source(source_cell.source):
        return False
    restored = copy.deepcopy(cell)
    restored.source = source_cell.source
    return utils.compute_checksum(restored) == source_cell.checksum


class CourseOverwriteCells(OverwriteCells):
    """``OverwriteCells`` that warns about a changed checksum only where the student changed the cell."""

    def preprocess(self, nb: NotebookNode, resources: dict) -> tuple[NotebookNode, dict]:
        self._source_cells: dict[str, Any] | None = None  # this notebook's, read once (a query per cell is slow)
        return super().preprocess(nb, resources)

    def preprocess_cell(self, cell: NotebookNode, resources: dict, cell_index: int) -> tuple[NotebookNode, dict]:
        self._released = False
        grade_id = cell.metadata.get("nbgrader", {}).get("grade_id")
        if grade_id is not None:
            if getattr(self, "_source_cells", None) is None:
                try:
                    notebook = self.gradebook.find_notebook(self.notebook_id, self.assignment_id)
                    self._source_cells = {c.name: c for c in notebook.source_cells}
                except MissingEntry:
                    self._source_cells = {}
            source_cell = self._source_cells.get(grade_id)
            if source_cell is not None:  # an unknown cell: nbgrader's own handling below
                self._released = as_released(cell, source_cell)
        return super().preprocess_cell(cell, resources, cell_index)

    def report_change(self, name: str, attr: str, old: Any, new: Any) -> None:
        if attr == "checksum" and self._released:
            # the release removed this cell's hidden tests; the cell is otherwise what the student received
            self.log.debug("Cell %s is as released (hidden tests put back from the gradebook)", name)
            return
        super().report_change(name, attr, old, new)


@functools.lru_cache(maxsize=8)
def _schema_validator(schema_text: str) -> jsonschema.protocols.Validator:
    schema = json.loads(schema_text)
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)  # once, where jsonschema.validate does it for every cell
    return cls(schema)


class _SchemaCheckedOnce(BaseMetadataValidator):
    """nbgrader's ``BaseMetadataValidator.validate_cell`` with the schema checked once."""

    def validate_cell(self, cell: NotebookNode) -> None:
        if "nbgrader" not in cell.metadata:
            return
        if cell.metadata["nbgrader"].get("schema_version", 0) != self.schema_version:
            return super().validate_cell(cell)  # nbgrader's SchemaTooOldError / SchemaTooNewError
        validator = _schema_validator(json.dumps(self.schema, sort_keys=True))
        error = jsonschema.exceptions.best_match(validator.iter_errors(cell.metadata["nbgrader"]))
        if error is not None:
            raise error


class FastMetadataValidator(MetadataValidator, _SchemaCheckedOnce):
    """nbgrader's current ``MetadataValidator`` (its own checks) over the once-checked schema validation."""


class CourseCheckCellMetadata(CheckCellMetadata):
    """nbgrader's ``CheckCellMetadata`` with :class:`FastMetadataValidator`: the same verdicts and messages."""

    def preprocess(self, nb: NotebookNode, resources: dict) -> tuple[NotebookNode, dict]:
        try:
            FastMetadataValidator().validate_nb(nb)
        except ValidationError:
            self.log.error(traceback.format_exc())
            msg = "Notebook failed to validate; the nbgrader metadata may be corrupted."
            self.log.error(msg)
            raise ValidationError(msg) from None
        return nb, resources
