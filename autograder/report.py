"""Reports of graded submissions: terminal table, the spec's JSON, Gradescope's results.json, CSV.

JUnit XML comes from pytest itself (``--junitxml``): every graded item records its score and
max_score as properties.
"""

from __future__ import annotations

import csv
import json
import os
import re
import tempfile
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

from autograder.grading import NotebookResult, TestOutcome, gpu_not_exercised
from exercises.i18n import language, tr

ISOLATION_NOTE = {
    "bubblewrap": "student code ran under bubblewrap (no network, no view of the repository) with resource limits",
    "rlimits": "isolation reduced: student code ran without bubblewrap (not available, or turned off with "
               "--no-bwrap), with resource limits only (install the `bubblewrap` package for full isolation)",
}


@dataclass
class SubmissionReport:
    """Everything graded for one submission."""

    path: str
    seed: int
    devices: list[str]
    isolation: str
    notebooks: list[NotebookResult] = field(default_factory=list)
    grader_errors: dict[str, str] = field(default_factory=dict)  # notebook -> why the grader could not grade it
    lang: str | None = None  # the language --lang forces; None: its notebooks' (see ``language``)

    def add(self, result: NotebookResult) -> None:
        self.notebooks.append(result)
        if result.isolation in ISOLATION_NOTE:
            self.isolation = result.isolation

    @property
    def tests(self) -> list[TestOutcome]:
        return [row for nb in self.notebooks for row in nb.outcomes]

    @property
    def score(self) -> float:
        return round(sum(t.score for t in self.tests), 4)

    @property
    def max_score(self) -> float:
        return round(sum(t.max_score for t in self.tests), 4)

    @property
    def language(self) -> str:
        """The language of this submission's own lines (table, warnings): the one forced, else the one all its
        notebooks were graded in, else English."""
        if self.lang:
            return self.lang
        found = {nb.lang for nb in self.notebooks}
        return found.pop() if len(found) == 1 else "en"

    @property
    def gpu_exercised(self) -> bool:
        return "cuda" in self.devices

    def to_json(self) -> dict:
        with language(self.language):
            return self._to_json()

    def _to_json(self) -> dict:
        return {
            "path": self.path,
            "score": self.score,
            "max_score": self.max_score,
            "seed": self.seed,
            "devices": self.devices,
            "gpu": "exercised" if self.gpu_exercised else "not exercised",
            "warnings": ([] if self.gpu_exercised else [gpu_not_exercised()])
            + ([tr(ISOLATION_NOTE["rlimits"])] if self.isolation == "rlimits" else []),
            "isolation": self.isolation,
            "notes": [f"{nb.notebook}: {note}" for nb in self.notebooks for note in nb.notes],
            "seconds": round(sum(nb.seconds for nb in self.notebooks), 2),
            "tests": [{
                "name": t.name, "item": t.item, "notebook": t.notebook, "device": t.device, "dtype": t.variant,
                "status": t.status, "score": t.score, "max_score": t.max_score, "message": t.message,
                "cases_passed": t.cases_passed, "cases_total": t.cases_total, "mistakes": t.mistakes,
            } for t in self.tests],
        }


def _atomic_write(path: Path, text: str) -> None:
    """Write via a temporary file and rename, so nothing that ran before can leave a half-written report."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)


def graded(subs: list[SubmissionReport]) -> list[SubmissionReport]:
    """The submissions the grader could grade whole: only these get a score in any report."""
    return [s for s in subs if not s.grader_errors]


def report_json(subs: list[SubmissionReport], batch: dict | None = None) -> dict:
    """The spec's JSON report as a dict; submissions the grader failed on are under ``not_graded``, with no
    score. ``batch`` (autograder/shard.py: seed, devices, course version, shard, members) lets
    ``python -m autograder merge`` check and order shard reports."""
    not_graded = [{"path": s.path, "errors": s.grader_errors} for s in subs if s.grader_errors]
    return {"submissions": [s.to_json() for s in graded(subs)],
            **({"not_graded": not_graded} if not_graded else {}),
            **({"batch": batch} if batch is not None else {})}


def write_json(subs: list[SubmissionReport], path: Path, batch: dict | None = None) -> None:
    """Write :func:`report_json` to ``path``."""
    write_json_report(report_json(subs, batch), path)


def write_json_report(data: dict, path: Path) -> None:
    """Write a JSON report dict (the merge writes its merged one through here too)."""
    _atomic_write(path, json.dumps(data, indent=2) + "\n")


def gradescope_targets(paths: list[str], path: Path) -> list[Path]:
    """Where each submission's ``results.json`` goes: ``path`` for one; ``<stem>-<student><suffix>`` for a batch."""
    if len(paths) == 1:
        return [path]
    return [path.with_name(f"{path.stem}-{Path(p).name}{path.suffix}") for p in paths]


def gradescope_paths(subs: list[SubmissionReport], path: Path) -> list[tuple[SubmissionReport, Path]]:
    """Each submission with the path of its ``results.json`` (:func:`gradescope_targets`)."""
    return list(zip(subs, gradescope_targets([s.path for s in subs], path), strict=True))


def write_gradescope(subs: list[SubmissionReport], path: Path) -> None:
    """Gradescope's ``results.json``, one per submission graded; none for a submission the grader failed on
    (Gradescope then shows an autograder failure: the truth, rather than a zero)."""
    for sub, target in gradescope_paths(subs, path):
        if not sub.grader_errors:
            write_gradescope_one(sub.to_json(), target)


def gradescope_result(entry: dict) -> dict:
    """Gradescope's ``results.json`` for one graded submission, from its entry in the JSON report."""
    tests = [{
        "name": f"{t['notebook']} :: {t['name']}", "score": t["score"], "max_score": t["max_score"],
        "status": "passed" if t["status"] in ("passed", "skipped") else "failed",
        "output": t["message"] or ("passed" if t["status"] == "passed" else ""),
        **({"visibility": "hidden"} if t["status"] == "skipped" else {}),
    } for t in entry["tests"]]
    return {"score": entry["score"], "output": "; ".join(entry["warnings"]), "tests": tests}


def write_gradescope_one(entry: dict, path: Path) -> None:
    """Write :func:`gradescope_result` of one JSON report entry to ``path``."""
    _atomic_write(path, json.dumps(gradescope_result(entry), indent=2) + "\n")


def csv_text(entries: list[dict]) -> str:
    """The CSV of grades, one row per graded submission's JSON report entry, one column per graded item."""
    import io

    items = list(dict.fromkeys(t["item"] for e in entries for t in e["tests"]))
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["submission", "score", "max_score", *items])
    for entry in entries:
        per_item = {item: round(sum(t["score"] for t in entry["tests"] if t["item"] == item), 3) for item in items}
        writer.writerow([Path(entry["path"]).name, entry["score"], entry["max_score"], *(per_item[i] for i in items)])
    return buffer.getvalue()


def write_csv(subs: list[SubmissionReport], path: Path) -> None:
    """The CSV of grades (:func:`csv_text`) of the submissions the grader could grade."""
    _atomic_write(path, csv_text([s.to_json() for s in graded(subs)]))


SHORT = {"float64": "f64", "float32": "f32", "bfloat16": "bf16", "float16": "f16"}
SYMBOL = {"passed": "ok", "failed": "FAIL", "error": "ERR", "timeout": "TIME", "skipped": "--"}


WIDTH = 100  # the terminal table's default line width
MESSAGE_LIMIT = 1200  # characters of one message shown in the terminal; the JSON report keeps it whole
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u200b-\u200f\u202a-\u202e\u2066-\u2069]+")


def readable(message: str, limit: int = MESSAGE_LIMIT) -> str:
    """``message`` as one line of plain words: colours, control and direction characters gone, runs of
    whitespace one space, and, past ``limit`` characters, cut at the last space with how much was left out.

    A message comes from the student's worker: it may be megabytes long, one unbroken token, or full of
    terminal escapes; none of that may garble the instructor's terminal.
    """
    text = " ".join(_CONTROL.sub(" ", _ANSI.sub("", message)).split())
    if len(text) <= limit:
        return text
    cut = text.rfind(" ", limit // 2, limit)
    cut = cut if cut > 0 else limit  # one token longer than half the limit: not a word, cut where it must be
    return text[:cut] + tr(" … ({count} more characters in the JSON report)").format(count=len(text) - cut)


_WIDE = re.compile(r"[\u1100-\u115f\u2e80-\ua4cf\uac00-\ud7a3\uf900-\ufaff\ufe30-\ufe4f\uff00-\uff60\uffe0-\uffe6]")
_TOKENS = re.compile(r"\s+|" + _WIDE.pattern + r"|[^\s" + _WIDE.pattern[1:-1] + r"]+")


def display_width(text: str) -> int:
    """Columns ``text`` takes in a terminal: Chinese characters and full-width punctuation take two."""
    return len(text) + len(_WIDE.findall(text))


def _wrap_wide(text: str, width: int, indent: str, hang: str) -> list[str]:
    """``wrapped`` for text with Chinese in it: a line may break between any two Chinese characters or at a
    space, and is measured in terminal columns."""
    lines, line = [], indent
    for token in _TOKENS.findall(" ".join(text.split())):
        if token.isspace():
            line += " " if line.strip() else ""
            continue
        if display_width(line + token) > width and line.strip():
            lines.append(line.rstrip())
            line = hang
        while display_width(line + token) > width:  # a token longer than a whole line (no word): split it
            room = max(width - display_width(line), 1)
            lines.append(line + token[:room])
            line, token = hang, token[room:]
        line += token
    if line.strip():
        lines.append(line.rstrip())
    return lines or [indent.rstrip()]


def wrapped(text: str, width: int, indent: str, hang: str) -> list[str]:
    """``text`` in lines of at most ``width`` characters (terminal columns), broken between words (a token longer
    than a whole line, which is no word, is split so that no line runs past ``width``); Chinese text may break
    between any two characters."""
    if _WIDE.search(text):
        return _wrap_wide(text, max(width, len(hang) + 20), indent, hang)
    return textwrap.wrap(text, width=max(width, len(hang) + 20), initial_indent=indent, subsequent_indent=hang,
                         break_on_hyphens=False, break_long_words=True) or [indent.rstrip()]


def what_to_fix(outcomes: list[TestOutcome], width: int = WIDTH) -> list[str]:
    """The lines of "what to fix": each failure once (variants of an item with the same message share one
    entry), each wrapped between words."""
    groups: dict[tuple[str, str], list[TestOutcome]] = {}
    for t in outcomes:
        if t.status not in ("passed", "skipped"):
            groups.setdefault((t.item, readable(t.message)), []).append(t)
    lines = []
    for (item, message), rows in groups.items():
        where = ", ".join(t.name[len(item) + 1:-1] for t in rows)  # "cpu-float64, cpu-float32"
        lines += wrapped(f"- {item}[{where}]: {message}", width, "   ", "     ")
    return lines


def table(sub: SubmissionReport, width: int = WIDTH) -> str:
    """Item x device table with points, then the messages of what failed, every line at most ``width``
    characters wide and broken between words (the table's own rows excepted); in the submission's language."""
    with language(sub.language):
        return _table(sub, width)


def _table(sub: SubmissionReport, width: int) -> str:
    devices = ["cpu", "cuda"]
    if sub.grader_errors:
        head = tr("== {path}: NOT GRADED: the grader failed on {notebooks} (not the student's fault; see "
                  "below)").format(path=sub.path, notebooks=", ".join(sub.grader_errors))
        return "\n".join(wrapped(head, width, "", "   "))
    lines = [tr("== {path}: {score:g} / {max_score:g} points (seed {seed}, {seconds:.1f} s)").format(
        path=sub.path, score=sub.score, max_score=sub.max_score, seed=sub.seed,
        seconds=sum(nb.seconds for nb in sub.notebooks))]
    if not sub.gpu_exercised:
        lines += wrapped(f"! {gpu_not_exercised()}", width, "   ", "     ")
    if sub.isolation == "rlimits":
        lines += wrapped(f"! {tr(ISOLATION_NOTE['rlimits'])}", width, "   ", "     ")
    lines.append(f"   {'item':<30} {'cpu':<22} {'cuda':<22} points")
    for nb in sub.notebooks:
        for item in dict.fromkeys(t.item for t in nb.outcomes):
            rows = [t for t in nb.outcomes if t.item == item]
            cells = []
            for device in devices:
                mine = [t for t in rows if t.device == device]
                cells.append(" ".join(f"{SHORT.get(t.variant, t.variant)}:{SYMBOL[t.status]}" if t.variant
                                      else SYMBOL[t.status] for t in mine) or "")
            score = sum(t.score for t in rows)
            maximum = sum(t.max_score for t in rows)
            lines.append(f"   {item:<30} {cells[0]:<22} {cells[1]:<22} {score:g}/{maximum:g}")
        for note in nb.notes:
            lines += wrapped(tr("note: {notebook}: {note}").format(notebook=nb.notebook, note=readable(note)), width,
                             "   ", "     ")
    fixes = what_to_fix(sub.tests, width)
    if fixes:
        lines.append("   " + tr("what to fix:"))
        lines += fixes
    return "\n".join(lines)


def summary(subs: list[SubmissionReport], lang: str = "en") -> str:
    """One line per submission: its score, or that the grader could not grade it (in ``lang``)."""
    lines = [f"{'submission':<30} {'score':>8} {'max':>6}"]
    for sub in subs:
        if sub.grader_errors:
            lines.append(f"{Path(sub.path).name:<30} {tr('not graded (grader error)', lang):>15}")
            continue
        lines.append(f"{Path(sub.path).name:<30} {sub.score:>8g} {sub.max_score:>6g}")
    return "\n".join(lines)
