"""Grades out to Canvas: an nbgrader export plugin that writes Canvas's gradebook import CSV.

    nbgrader export --exporter autograder.nbgrader.canvas.CanvasExportPlugin --to canvas_grades.csv

(a plain ``nbgrader export`` still writes nbgrader's own ``grades.csv``). The file is what
*Grades → Import* in Canvas reads: the columns ``Student``, ``ID``, ``SIS User ID``,
``SIS Login ID`` and ``Section``, then one column per nbgrader assignment, a
``Points Possible`` row first (Canvas creates a column it does not know as a new assignment with
those points). The nbgrader student id goes into the column named by
``CanvasExportPlugin.id_column`` (default ``SIS Login ID``: courses whose JupyterHub logins are the
Canvas logins); ``CanvasExportPlugin.assignment_columns`` maps an assignment to an existing Canvas
column, e.g. ``{"self_attention": "Self-attention (123456)"}``.

A cell is left **blank** (Canvas then changes nothing) where there is no grade to trust: no submission,
or a submission with a cell the grader did not score (a grader fault leaves the gradebook without an
automatic score; nbgrader's own CSV would count it as 0). Each blank is listed in the log.
"""

from __future__ import annotations

import csv
from typing import Any

from nbgrader.api import Gradebook, MissingEntry
from nbgrader.plugins import ExportPlugin
from traitlets import Dict, Unicode

__all__ = ["CANVAS_COLUMNS", "CanvasExportPlugin", "canvas_rows"]

#: The identity columns of a Canvas gradebook CSV, in Canvas's order.
CANVAS_COLUMNS = ("Student", "ID", "SIS User ID", "SIS Login ID", "Section")


def _points(value: float) -> str:
    return f"{value:g}" if float(value).is_integer() else f"{value:.4f}".rstrip("0")


def _ungraded(submission: Any) -> bool:
    """Whether a cell of ``submission`` has no score yet (no automatic score and no manual one)."""
    return any(grade.auto_score is None and grade.manual_score is None
               for notebook in submission.notebooks for grade in notebook.grades)


def canvas_rows(gradebook: Gradebook, id_column: str = "SIS Login ID", assignment_columns: dict | None = None,
                students: list[str] | None = None, assignments: list[str] | None = None,
                ) -> tuple[list[str], list[list[str]], list[str]]:
    """``(header, rows, blanks)`` of the Canvas CSV: the Points Possible row first, then one row per student;
    ``blanks`` says which cells were left blank and why."""
    if id_column not in CANVAS_COLUMNS[1:4]:
        raise ValueError(f"id_column must be one of {CANVAS_COLUMNS[1:4]}, not {id_column!r}")
    names = assignment_columns or {}
    chosen = [a for a in gradebook.assignments if not assignments or a.name in assignments]
    header = [*CANVAS_COLUMNS, *(names.get(a.name, a.name) for a in chosen)]
    rows = [["Points Possible", "", "", "", "", *(_points(a.max_score) for a in chosen)]]
    blanks: list[str] = []
    for student in sorted(gradebook.students, key=lambda s: s.id):
        if students and student.id not in students:
            continue
        name = ", ".join(x for x in (student.last_name, student.first_name) if x) or student.id
        row = [name, "", "", "", ""]
        row[CANVAS_COLUMNS.index(id_column)] = student.id
        for assignment in chosen:
            try:
                submission = gradebook.find_submission(assignment.name, student.id)
            except MissingEntry:
                row.append("")
                blanks.append(f"{student.id}: no submission of {assignment.name}")
                continue
            if _ungraded(submission):
                row.append("")
                blanks.append(f"{student.id}: {assignment.name} is not fully graded (re-run autograde)")
                continue
            row.append(_points(max(0.0, submission.score - (submission.late_submission_penalty or 0.0))))
        rows.append(row)
    return header, rows, blanks


class CanvasExportPlugin(ExportPlugin):
    """Write Canvas's gradebook import CSV (see the module docstring)."""

    id_column = Unicode("SIS Login ID", help="The Canvas column that holds the nbgrader student id.").tag(config=True)
    assignment_columns = Dict(
        {}, help="nbgrader assignment -> Canvas column name, e.g. {'self_attention': 'Self-attention (123456)'}.",
    ).tag(config=True)

    def export(self, gradebook: Gradebook) -> None:
        dest = self.to or "canvas_grades.csv"
        header, rows, blanks = canvas_rows(gradebook, self.id_column, self.assignment_columns,
                                           [str(s) for s in self.student], [str(a) for a in self.assignment])
        with open(dest, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(header)
            writer.writerows(rows)
        self.log.info("Canvas gradebook CSV: %d students to %s (Canvas: Grades -> Import)", len(rows) - 1, dest)
        for blank in blanks:
            self.log.warning("Canvas CSV: left blank (Canvas keeps what it has): %s", blank)
