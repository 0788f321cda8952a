"""nbgrader's Validate with a summary first: one line per graded cell (passed / failed / not answered).

The Validate button of nbgrader's JupyterLab extension posts the notebook's path to the server
handler ``/assignments/validate`` (``nbgrader/server_extensions/validate_assignment/handlers.py``),
which loads ``nbgrader_config.py`` and calls ``Validator(config=config).validate(path)``. The result
is a dict; when cells fail, ``failed`` lists ``{"source", "error", "raw_error"}`` per failing cell,
and the extension shows each as "The following cell failed:", the cell's source and the error (HTML).
For a fresh release notebook that is every check cell's source and a full traceback each (about
17,000 characters for lesson 1) and no overview.

:class:`CourseValidator` keeps nbgrader's format, so the unchanged extension and ``nbgrader
validate`` show it, and changes its content:

* the first ``failed`` entry is the summary: its ``source`` has one line per graded cell,
  ``passed``, ``FAILED`` (with the error's last line) or ``not answered`` (the cell's check raised
  ``NotImplementedError``: the stub is still there), and the points at stake; its ``error`` says
  what to do about them, with a style (:data:`DIALOG_STYLE`) that removes the extension's heading
  "The following cell failed:" from above the summary and wraps long lines in the dialog;
* a cell that is only *not answered* has no entry of its own (its source and traceback would bury
  the rest; the summary names it);
* a cell that *failed* keeps its source and error, as nbgrader shows them.

When nothing fails the result stays ``{}`` (the extension's "Success!"). ``changed`` and
``type_changed`` results (a locked cell was edited) are nbgrader's, unchanged.

nbgrader has no configuration option for the validator class: the handler and ``nbgrader
validate`` (``nbgrader/apps/validateapp.py``) each use the name ``Validator`` imported into their
module. :func:`register`, called from ``nbgrader_config.py`` (which both load before they
validate), points those names at :class:`CourseValidator`.
"""

from __future__ import annotations

import html
import json
import textwrap
from dataclasses import dataclass

from nbconvert.filters import strip_ansi
from nbformat.notebooknode import NotebookNode
from nbgrader import utils
from nbgrader.validator import Validator

from exercises.editions import notebook_language


def _read_json(filename: str) -> dict:
    """The notebook file as plain JSON (only its metadata is read); ``{}`` when it cannot be read."""
    try:
        with open(filename, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}

__all__ = ["CellResult", "CourseValidator", "cell_results", "register", "summary_text"]

PASSED, FAILED, NOT_ANSWERED = "passed", "FAILED", "not answered"
SUMMARY_TITLE = "Summary of the graded cells"

# The summary in the notebook's language (``metadata.course.edition``; exercises/editions.py): the Chinese
# edition's students read it in Chinese. The status words are the same width in each language (the rows align).
TEXTS: dict[str, dict[str, str]] = {
    "en": {
        "title": SUMMARY_TITLE,
        "counts": "{title}: {passed} passed, {failed} failed, {not_answered} not answered",
        "points": ("({earned:g} of {total:g} points pass the visible checks; more checks run when the notebook "
                   "is graded)"),
        "row": "  {status:<12}  {name:<{width}}  ({points})",
        PASSED: PASSED, FAILED: FAILED, NOT_ANSWERED: NOT_ANSWERED,
        "note_not_answered": "not answered: the answer cell still raises NotImplementedError.\n"
                             "  Replace that line with your answer, then run the cell and the check below it.",
        "note_failed": "FAILED: the source and the error of each failed check cell follow.",
        "stderr": "printed to stderr: {line}",  # a failed cell's reason where it raised nothing
        "error": "error",  # ... where it left no message at all
    },
    "zh": {
        "title": "计分单元格小结",
        "counts": "{title}：{passed} 个通过，{failed} 个未通过，{not_answered} 个未作答",
        "points": "（{total:g} 分中有 {earned:g} 分通过了可见检查；评分时还会运行更多检查）",
        "row": "  {status}  {name:<{width}}  （{points}）",
        PASSED: "已通过", FAILED: "未通过", NOT_ANSWERED: "未作答",
        "note_not_answered": "未作答：作答单元格仍然抛出 NotImplementedError。\n"
                             "  把那一行换成你的答案，然后运行该单元格和它下面的检查单元格。",
        "note_failed": "未通过：下面依次是每个未通过的检查单元格的源代码和错误。",
        "stderr": "向 stderr 输出了：{line}",
        "error": "出错",
    },
}
SUMMARY_TITLES = frozenset(t["title"] for t in TEXTS.values())


@dataclass(frozen=True)
class CellResult:
    """The outcome of one graded cell after validation."""

    name: str  # the answer's name (the check cell's grade_id without ``test_``)
    points: float
    status: str  # PASSED, FAILED or NOT_ANSWERED
    reason: str  # the error's last line ("" when passed)


def _error_line(cell: NotebookNode, lang: str = "en") -> str:
    """The last line of the cell's error (or of its stderr output), without colours; our words in ``lang``."""
    texts = TEXTS.get(lang, TEXTS["en"])
    for output in cell.get("outputs", []):
        if output.output_type == "error":
            text = f"{output.get('ename', 'Error')}: {output.get('evalue', '')}".rstrip(": ")
            return strip_ansi(text).strip().splitlines()[-1] if text.strip() else texts["error"]
    for output in cell.get("outputs", []):
        if output.output_type == "stream" and output.get("name") == "stderr":
            lines = [x for x in strip_ansi(output.get("text", "")).splitlines() if x.strip()]
            return texts["stderr"].format(line=lines[-1].strip() if lines else "")
    return texts["error"]


def _not_answered(cell: NotebookNode) -> bool:
    return any(o.output_type == "error" and o.get("ename") == "NotImplementedError" for o in cell.get("outputs", []))


def cell_results(nb: NotebookNode, lang: str = "en") -> list[CellResult]:
    """One :class:`CellResult` per graded code cell of an executed notebook, in notebook order (the reasons in the
    language ``lang`` where they are the summary's own words)."""
    results = []
    for cell in nb.cells:
        if cell.cell_type != "code" or not utils.is_grade(cell):
            continue
        grade_id = cell.metadata["nbgrader"].get("grade_id", "?")
        name = grade_id[len("test_"):] if grade_id.startswith("test_") else grade_id
        score, max_score = utils.determine_grade(cell)
        if score is not None and score >= max_score and not (max_score == 0 and utils.has_failed(cell)):
            results.append(CellResult(name, max_score, PASSED, ""))
        elif _not_answered(cell):
            results.append(CellResult(name, max_score, NOT_ANSWERED, _error_line(cell, lang)))
        else:
            results.append(CellResult(name, max_score, FAILED, _error_line(cell, lang)))
    return results


def _points(x: float, lang: str = "en") -> str:
    text = f"{x:g}"
    if lang == "zh":
        return f"{text} 分"
    return f"{text} point" + ("" if text == "1" else "s")


def summary_text(results: list[CellResult], max_reason: int = 160, wrap: int = 78, lang: str = "en") -> str:
    """The summary: a count line, a line on the points, then one line per graded cell (a failed cell's
    error below it, wrapped at ``wrap`` characters), in the language ``lang`` (``en`` or ``zh``)."""
    texts = TEXTS.get(lang, TEXTS["en"])
    counts = {s: sum(r.status == s for r in results) for s in (PASSED, FAILED, NOT_ANSWERED)}
    earned = sum(r.points for r in results if r.status == PASSED)
    total = sum(r.points for r in results)
    lines = [
        texts["counts"].format(title=texts["title"], passed=counts[PASSED], failed=counts[FAILED],
                               not_answered=counts[NOT_ANSWERED]),
        texts["points"].format(earned=earned, total=total),
    ]
    width = max((len(r.name) for r in results), default=0)
    for r in results:
        reason = r.reason if len(r.reason) <= max_reason else r.reason[: max_reason - 1] + "…"
        lines.append(texts["row"].format(status=texts[r.status], name=r.name, width=width,
                                         points=_points(r.points, lang)))
        if r.status == FAILED:  # on lines of its own, wrapped: the dialog's <pre> does not wrap (issue 18)
            lines += textwrap.wrap(reason, width=wrap, initial_indent=" " * 16, subsequent_indent=" " * 16,
                                   break_on_hyphens=False)
    return "\n".join(lines)


# The Lab extension (nbgrader 0.9.6, labextension/static/161.*.js, function building "validation-message")
# puts each ``failed`` entry under a fixed paragraph "The following cell failed:", then the source in a <pre>
# (innerText) and the error in a <pre> as HTML (innerHTML). The heading cannot be configured, but a <style>
# in the summary's error HTML applies while the dialog is open (a <style> set through innerHTML takes
# effect; a <script> would not run): it hides the first entry's heading, so the summary opens the dialog
# under its own first line, and wraps every <pre> of the dialog, so no traceback runs off its right edge.
# Other readers of the result (``nbgrader validate``, the classic notebook) get the plain notes in raw_error.
DIALOG_STYLE = ("<style>#validation-message > div:first-child { display: none; } "
                "#validation-message pre { white-space: pre-wrap; overflow-wrap: anywhere; }</style>")


def notes_text(results: list[CellResult], lang: str = "en") -> str:
    """What to do about the summary's cells, for the box under it (in the language ``lang``)."""
    texts = TEXTS.get(lang, TEXTS["en"])
    notes = []
    if any(r.status == NOT_ANSWERED for r in results):
        notes.append(texts["note_not_answered"])
    if any(r.status == FAILED for r in results):
        notes.append(texts["note_failed"])
    return "\n".join(notes)


class CourseValidator(Validator):
    """nbgrader's ``Validator`` whose result starts with a per-cell summary (see the module docstring)."""

    _executed: NotebookNode | None = None

    def _preprocess(self, nb: NotebookNode) -> NotebookNode:
        nb = super()._preprocess(nb)
        self._executed = nb  # the executed notebook, to classify every graded cell afterwards
        return nb

    def validate(self, filename: str) -> dict:
        self._executed = None
        results = super().validate(filename)
        if "failed" not in results or self._executed is None:
            return results
        lang = notebook_language(_read_json(filename))  # the edition the student's notebook belongs to
        rows = cell_results(self._executed, lang)
        notes = notes_text(rows, lang)
        summary = {"source": summary_text(rows, lang=lang), "error": DIALOG_STYLE + html.escape(notes),
                   "raw_error": notes}
        # a cell that is only unanswered is in the summary; its source and traceback would bury the rest
        unanswered = {
            c.source.strip()
            for c in self._executed.cells
            if c.cell_type == "code" and utils.is_grade(c) and _not_answered(c)
        }
        results["failed"] = [summary, *(entry for entry in results["failed"] if entry["source"] not in unanswered)]
        return results

    def validate_and_print(self, filename: str) -> None:
        results = self.validate(filename)
        failed = results.get("failed")
        if not failed or failed[0]["source"].split(":")[0].split("：")[0] not in SUMMARY_TITLES:
            # nbgrader's own report (changed / type_changed / success), from the results we have
            self.validate = lambda _filename: results  # type: ignore[method-assign]
            try:
                super().validate_and_print(filename)
            finally:
                del self.validate
            return
        self.stream.write(failed[0]["source"] + "\n" + failed[0]["raw_error"] + "\n")
        for entry in failed[1:]:
            self._print_error(entry["source"], entry["raw_error"])


def register() -> None:
    """Make nbgrader's Validate button and ``nbgrader validate`` use :class:`CourseValidator`."""
    import nbgrader.apps.validateapp as validateapp
    import nbgrader.server_extensions.validate_assignment.handlers as handlers

    handlers.Validator = CourseValidator
    validateapp.Validator = CourseValidator
