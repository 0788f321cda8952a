"""No graded answer of the course is a figure (issue 18: "the student's graded figure shown to the instructor").

The README's answer is that there is nothing to show: lesson 7's ``plot_attention`` is given code, and no
answer cell draws. This keeps that true: a lesson that makes a plot graded fails here, and then needs the
figure shown to the instructor (from the worker's serialised figure, never by running student code).
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
DRAWS = re.compile(r"\b(plt\.|pyplot|Figure\(|matshow|imshow|savefig|add_subplot|subplots\()")


def _cells():
    for path in sorted((ROOT / "source" / "self_attention").glob("*.ipynb")):
        for cell in nbformat.read(path, as_version=4).cells:
            yield path.name, cell, cell.metadata.get("nbgrader", {})


def test_plot_attention_is_given_code_not_an_answer():
    (where,) = [(name, meta) for name, cell, meta in _cells() if "def plot_attention(" in cell.source]
    name, meta = where
    assert name.startswith("07_") and meta.get("locked") and not meta.get("solution") and not meta.get("grade")


def test_no_answer_cell_draws_a_figure():
    drawing = [(name, meta.get("grade_id")) for name, cell, meta in _cells()
               if meta.get("solution") and DRAWS.search(cell.source)]
    assert drawing == []


def test_the_check_finds_drawing_code():
    """The pattern above is not blind: it finds the plotting code of lesson 7's given cell."""
    assert any(DRAWS.search(cell.source) for _, cell, _ in _cells() if "def plot_attention(" in cell.source)
