"""Keep the instructor's hidden tests out of the feedback that nbgrader returns to students.

``nbgrader generate_feedback`` renders the *autograded* notebook to HTML. Autograding restores every
locked test cell from the instructor's copy (``OverwriteCells``), so the test cells of the autograded
notebook contain the ``### BEGIN HIDDEN TESTS`` ... ``### END HIDDEN TESTS`` regions again, and their
error outputs carry IPython tracebacks that quote those lines and walk through the grading library
(``exercises.kernel``). nbgrader's own feedback chain (``GetGrades``, ``CSSHTMLHeaderPreprocessor``;
``nbgrader/converters/generate_feedback.py``) shows all of that unchanged.

:class:`HideHiddenTests` is one preprocessor for that chain. ``nbgrader_config.py`` inserts it
before the HTML export::

    c.GenerateFeedback.preprocessors = [GetGrades, HideHiddenTests, CSSHTMLHeaderPreprocessor]

For every cell that contains a hidden-test region it

* replaces each region (delimiter lines included) with one placeholder comment, indented like the
  ``BEGIN`` line, so the student sees *that* hidden tests ran but not *what* they are;
* rewrites each ``error`` output of that cell so that its traceback is the single line
  ``ExceptionName: message``: the message the grader wrote (for example the ``AssertionError`` of
  ``exercises.kernel.check``) is kept; the quoted source lines and the frames inside library code
  are gone;
* shortens ``stderr`` stream outputs of that cell (unless :attr:`HideHiddenTests.keep_stderr` is
  set): a warning raised inside the grading code prints ``path:line: Category: message`` and then
  the warning's *source line*. Indented lines (quoted code, traceback frames) are dropped and
  ``path:line: Category: message`` becomes ``Category: message``. The rest stays, because nbgrader
  scores a test cell with any stderr output as 0 (``nbgrader/utils.py: determine_grade``) and
  the student must be able to see why.

Answer cells are not touched: the feedback is made from the student's own notebook, and the only
instructor's secret in it is the hidden tests. A region whose ``END`` line is missing is hidden to
the end of the cell (fail closed) rather than aborting the whole feedback run.
"""

from __future__ import annotations

import re
from typing import Any

from nbconvert.filters import strip_ansi
from nbformat.notebooknode import NotebookNode, from_dict
from nbgrader.preprocessors import NbGraderPreprocessor
from traitlets import Bool, Unicode

__all__ = ["HideHiddenTests", "hide_hidden_regions", "short_error", "short_stderr"]

_WARNING = re.compile(r"^\S.*?:\d+: (\w+(?:Warning|Error)): (.*)$")


def hide_hidden_regions(source: str, begin: str, end: str, placeholder: str) -> tuple[str, int]:
    """Return ``source`` with each ``begin`` ... ``end`` region replaced by ``placeholder``.

    A line *containing* ``begin`` (resp. ``end``) opens (resp. closes) a region, exactly as
    nbgrader's ``ClearHiddenTests`` reads them. The placeholder takes the indentation of the
    ``begin`` line. Returns the new source and the number of regions hidden.
    """
    out: list[str] = []
    inside = False
    count = 0
    for line in source.split("\n"):
        if not inside and begin in line:
            inside = True
            count += 1
            indent = line[: len(line) - len(line.lstrip())]
            out.append(indent + placeholder)
        elif inside:
            if end in line:
                inside = False
        else:
            out.append(line)
    return "\n".join(out), count


def short_error(output: NotebookNode) -> NotebookNode:
    """An ``error`` output whose traceback is only ``ExceptionName: message``.

    When the exception has no message (``evalue`` empty), the last traceback line is used if it is
    the ``ExceptionName: ...`` line itself (nbgrader's ``CellTimeoutError`` puts its explanation
    there); any other line of the original traceback is discarded.
    """
    ename = str(output.get("ename", "Error"))
    evalue = str(output.get("evalue", ""))
    line = f"{ename}: {evalue}" if evalue else ename
    if not evalue:
        lines = [strip_ansi(x).strip() for x in output.get("traceback", []) if strip_ansi(x).strip()]
        if lines and lines[-1].startswith(ename + ":"):
            line = lines[-1]
    return from_dict({"output_type": "error", "ename": ename, "evalue": evalue, "traceback": [line]})


def short_stderr(text: str) -> str:
    """``text`` without indented lines; ``path:line: Category: message`` becomes ``Category: message``."""
    kept = []
    for line in text.splitlines():
        if not line.strip() or line[0].isspace():
            continue
        match = _WARNING.match(line)
        kept.append(f"{match.group(1)}: {match.group(2)}" if match else line)
    return "".join(x + "\n" for x in kept)


class HideHiddenTests(NbGraderPreprocessor):
    """Hide hidden-test source and shorten its tracebacks in feedback (see the module docstring)."""

    begin_delimiter = Unicode(
        "BEGIN HIDDEN TESTS",
        help="Text of the line that opens a hidden-test region (same default as ClearHiddenTests).",
    ).tag(config=True)

    end_delimiter = Unicode(
        "END HIDDEN TESTS",
        help="Text of the line that closes a hidden-test region (same default as ClearHiddenTests).",
    ).tag(config=True)

    placeholder = Unicode(
        "# (hidden tests ran here; their code is not part of the feedback)",
        help="The one line that replaces each hidden-test region in feedback.",
    ).tag(config=True)

    keep_stderr = Bool(
        False,
        help="Keep stderr outputs of cells with hidden tests as they are (else quoted code is removed).",
    ).tag(config=True)

    def preprocess_cell(
        self, cell: NotebookNode, resources: dict[str, Any], index: int
    ) -> tuple[NotebookNode, dict[str, Any]]:
        source, hidden = hide_hidden_regions(
            cell.source, self.begin_delimiter, self.end_delimiter, self.placeholder
        )
        if not hidden:
            return cell, resources
        cell.source = source
        if cell.cell_type == "code":
            outputs = []
            for output in cell.get("outputs", []):
                if output.output_type == "error":
                    outputs.append(short_error(output))
                elif output.output_type == "stream" and output.get("name") == "stderr" and not self.keep_stderr:
                    text = short_stderr(output.get("text", ""))
                    if text:
                        outputs.append(from_dict({"output_type": "stream", "name": "stderr", "text": text}))
                else:
                    outputs.append(output)
            cell.outputs = outputs
        return cell, resources
