"""Feedback worth reading: the assignment total on every page, and grader messages that wrap.

``nbgrader generate_feedback`` writes one HTML page per notebook, each with that notebook's score
only, and shows outputs in ``<pre>`` blocks that never wrap: a long grader line ("... call
optimizer.zero_grad()") runs off the right edge. :class:`FeedbackHeader` puts one markdown cell at
the top of each page: the student's total for the whole assignment (from the gradebook: what
nbgrader's Formgrader and export show) beside this notebook's, and a style rule that wraps output
text. ``nbgrader_config.py`` adds it to ``GenerateFeedback.preprocessors`` after ``GetGrades``.

:class:`StudentName` (in the autograde chain): a student that ``nbgrader autograde`` created from a
``submitted/`` folder has no name, and the Formgrader lists them as "None, None". It gives such a
student their id as last name (first name empty), so the lists show the id; a name already in the
gradebook (``nbgrader db student add``/``import``) is never changed.
"""

from __future__ import annotations

from typing import Any

from nbformat.notebooknode import NotebookNode, from_dict
from nbgrader.api import Gradebook, MissingEntry
from nbgrader.preprocessors import NbGraderPreprocessor

__all__ = ["FeedbackHeader", "StudentName", "WRAP_STYLE", "header_text"]

#: Output text wraps (classic nbconvert and JupyterLab class names); long words break instead of scrolling.
WRAP_STYLE = ("<style>.output_area pre, .output_text pre, .jp-OutputArea-output pre, .jp-RenderedText pre "
              "{white-space: pre-wrap; overflow-wrap: anywhere;}</style>")
MARK = "selfattn_feedback_header"


def _points(x: float) -> str:
    return f"{round(float(x), 4):g}"  # 4.5, 60, 53.7286: as the grader's report writes them


def header_text(assignment: str, total: float, total_max: float, notebook: str, score: float | None,
                score_max: float | None, penalty: float = 0.0) -> str:
    """The header's markdown: the assignment total first, then this notebook's score."""
    line = f"**{assignment}: {_points(total)} / {_points(total_max)} points in all**"
    if penalty:
        line += f" (after a late penalty of {_points(penalty)})"
    if score is not None and score_max is not None:
        line += f"; this notebook, {notebook}: {_points(score)} / {_points(score_max)}"
    return line + "\n\n" + WRAP_STYLE


class FeedbackHeader(NbGraderPreprocessor):
    """Put the assignment total (and wrapping output text) at the top of each feedback page."""

    def preprocess(self, nb: NotebookNode, resources: dict[str, Any]) -> tuple[NotebookNode, dict[str, Any]]:
        info = resources["nbgrader"]
        with Gradebook(info["db_url"]) as gb:
            try:
                submission = gb.find_submission(info["assignment"], info["student"])
            except MissingEntry:
                return nb, resources  # nothing graded: nbgrader itself refuses feedback for it
            penalty = float(submission.late_submission_penalty or 0.0)
            total, total_max = max(0.0, float(submission.score) - penalty), float(submission.max_score)
            notebook = next((n for n in submission.notebooks if n.name == info["notebook"]), None)
            score = float(notebook.score) if notebook is not None else None
            score_max = float(notebook.max_score) if notebook is not None else None
        nb.cells = [c for c in nb.cells if not c.get("metadata", {}).get(MARK)]  # once, on a re-run too
        text = header_text(info["assignment"], total, total_max, info["notebook"], score, score_max, penalty)
        nb.cells.insert(0, from_dict({"cell_type": "markdown", "metadata": {MARK: True}, "source": text}))
        return nb, resources


class StudentName(NbGraderPreprocessor):
    """Name a nameless student after their id, once per student and gradebook (see the module docstring)."""

    _done: set[tuple[str, str]] = set()  # (gradebook, student) already looked at in this process

    def preprocess(self, nb: NotebookNode, resources: dict[str, Any]) -> tuple[NotebookNode, dict[str, Any]]:
        info = resources["nbgrader"]
        key = (info["db_url"], info["student"])
        if key not in StudentName._done:
            with Gradebook(info["db_url"]) as gb:
                student = gb.find_student(info["student"])
                if student.last_name is None and student.first_name is None:
                    gb.update_or_create_student(info["student"], last_name=info["student"], first_name="")
            StudentName._done.add(key)
        return nb, resources
