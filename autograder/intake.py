"""Read a submission: find its notebooks, pair each with its ``source/`` master, pick the cells to run.

What runs comes from the instructor's copy: the given cells' text from ``source/``, and for every
answer cell (``solution: true`` in ``source/``) the student's cell with the same ``grade_id``. Test
cells, points and locks are never taken from the student's copy.
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

from autograder.runner import CellSpec
from exercises.editions import LANGUAGES, assignment_for
from exercises.i18n import path_language, student_language, tr
from exercises.rules import parse
from exercises.source import (
    SourceNotebook,
    cell_text,
    nbgrader_metadata,
)

MAX_NOTEBOOK_BYTES = 8 << 20
MAX_CELLS = 400
MAX_CELL_CHARS = 200_000
MAGIC = re.compile(r"^\s*(%|!)")
EDITION_FOLDERS = frozenset(assignment_for(lang) for lang in LANGUAGES)  # self_attention, self_attention_zh


class IntakeError(Exception):
    """The notebook cannot be graded at all; the message says why."""


@dataclass
class PreparedNotebook:
    """The cells the worker will run, plus notes for the report and each answer cell's static facts."""

    cells: list[CellSpec]
    notes: list[str] = field(default_factory=list)
    missing_answers: set[str] = field(default_factory=set)
    syntax_errors: dict[str, str] = field(default_factory=dict)
    answer_sources: dict[str, str] = field(default_factory=dict)
    # filled once the worker ran the cells: the error each answer cell raised when it ran (not when called)
    cell_errors: dict[str, dict] = field(default_factory=dict)


def read_notebook_bytes(path: Path, cap: int | None = None) -> bytes:
    """The bytes of the student's notebook file, never blocking and never following a link.

    Opened ``O_NONBLOCK | O_NOFOLLOW`` (a FIFO opens at once instead of waiting for a writer, a link is
    refused), then ``fstat`` on that descriptor: a regular file only, at most ``cap`` bytes, the cap
    checked on what was read too (a file that grows while it is read). ``IntakeError`` otherwise."""
    cap = MAX_NOTEBOOK_BYTES if cap is None else cap
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise IntakeError(tr("{name} is a symbolic link; submit the notebook itself").format(
                name=path.name)) from exc
        raise IntakeError(tr("cannot read {name}: {why}").format(name=path.name, why=exc.strerror)) from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise IntakeError(tr("{name} is not a regular file; submit the notebook itself").format(name=path.name))
        too_big = IntakeError(tr("{name} is {size} MiB; the limit is {limit} MiB (clear the outputs before "
                                 "submitting)").format(name=path.name, size=max(info.st_size, cap + 1) >> 20,
                                                       limit=cap >> 20))
        if info.st_size > cap:
            raise too_big
        chunks, total = [], 0
        while total <= cap:
            chunk = os.read(fd, min(1 << 20, cap + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        if total > cap:
            raise too_big
        return b"".join(chunks)
    except OSError as exc:
        raise IntakeError(tr("cannot read {name}: {why}").format(name=path.name, why=exc.strerror)) from exc
    finally:
        os.close(fd)


def read_student_notebook(path: Path) -> list[dict]:
    """Read the student's notebook as plain JSON within caps; IntakeError with a reason otherwise."""
    raw = read_notebook_bytes(path)
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # deep nesting: RecursionError, the student's
        raise IntakeError(tr("{name} is not a valid notebook (invalid JSON: {why}); re-download it or restore it "
                             "from a checkpoint").format(name=path.name, why=str(exc)[:120])) from exc
    cells = data.get("cells") if isinstance(data, dict) else None
    if not isinstance(cells, list):
        raise IntakeError(tr("{name} is not a Jupyter notebook (no list of cells)").format(name=path.name))
    if len(cells) > MAX_CELLS:
        raise IntakeError(tr("{name} has {count} cells; the limit is {limit}").format(name=path.name,
                                                                                     count=len(cells), limit=MAX_CELLS))
    return [c for c in cells if isinstance(c, dict)]


def notebook_language_at(path: Path | None) -> str:
    """The language of the student's notebook at ``path`` (``exercises.i18n.student_language``: its edition, else
    its folder), read within the same caps; English for no notebook, and its folder's for one that cannot be read."""
    if path is None:
        return "en"
    try:
        return student_language(json.loads(read_notebook_bytes(path)), path)
    except Exception:  # noqa: BLE001 - a hostile file (deep nesting: RecursionError) only loses its language
        pass
    return path_language(path) or "en"


def strip_magics(code: str) -> tuple[str, int]:
    """Drop IPython magics and shell escapes (they mean nothing outside IPython); count them."""
    kept, dropped = [], 0
    for line in code.splitlines():
        if MAGIC.match(line):
            dropped += 1
            kept.append("pass  # dropped by the grader: IPython magic or shell command")
        else:
            kept.append(line)
    return "\n".join(kept) + "\n", dropped


def prepare(source: SourceNotebook, student_cells: list[dict]) -> PreparedNotebook:
    """Choose the cells to run: given cells from ``source``, answer cells from the student, in order."""
    by_id: dict[str, str] = {}
    duplicates: set[str] = set()
    for cell in student_cells:
        if cell.get("cell_type") != "code":
            continue
        gid = nbgrader_metadata(cell).get("grade_id")
        if not isinstance(gid, str):
            continue
        if gid in by_id:
            duplicates.add(gid)
            continue
        by_id[gid] = cell_text(cell.get("source"))[:MAX_CELL_CHARS]
    prepared = PreparedNotebook(cells=[])
    for gid in sorted(duplicates & set(source.answer_ids)):
        prepared.notes.append(tr("answer cell `{cell}` appears more than once; the first copy was graded").format(
            cell=gid))
    for cell in source.cells:
        if cell["cell_type"] != "code":
            continue
        meta = cell["nbgrader"]
        gid = meta.get("grade_id", "given")
        if meta.get("grade") and not meta.get("solution"):
            continue  # test cells never run in the worker: the grader judges
        if not meta.get("solution"):
            code, _ = strip_magics(cell["source"])
            prepared.cells.append(CellSpec(gid, code, "given"))
            continue
        if gid not in by_id:
            prepared.missing_answers.add(gid)
            prepared.notes.append(tr("answer cell `{cell}` is missing from the submission (deleted, or its metadata "
                                     "was changed); restore it from the released notebook").format(cell=gid))
            continue
        code, dropped = strip_magics(by_id[gid])
        if dropped:
            prepared.notes.append(tr("answer cell `{cell}`: {count} IPython magic/shell line(s) were not run").format(
                cell=gid, count=dropped))
        try:
            parse(code)
        except SyntaxError as exc:
            prepared.syntax_errors[gid] = tr("SyntaxError in answer cell `{cell}` line {line}: {error}").format(
                cell=gid, line=exc.lineno, error=exc.msg)
        prepared.answer_sources[gid] = code
        prepared.cells.append(CellSpec(gid, code, "answer"))
    return prepared


def find_notebooks(path: Path, names: tuple[str, ...]) -> dict[str, Path]:
    """Notebooks of a submission, by file name: the path itself, or directly or one level down a folder.

    A student with a notebook in both editions (``self_attention/`` and ``self_attention_zh/``) has it
    graded once: the copy :func:`edition_copies` chooses (its note says which and why)."""
    return {name: copies[0] for name, (copies, _) in edition_copies(path, names).items()}


def answers_written(path: Path) -> int:
    """How many answer cells of a student's notebook no longer hold the release's stub (-1: unreadable).

    Only used to choose between two editions of one notebook: it reads the student's own metadata, which
    decides nothing but which of the student's two copies is graded."""
    try:  # a FIFO, a device or a link is never read (it could block, or point anywhere): no copy to prefer
        cells = read_student_notebook(path)
    except IntakeError:
        return -1
    return sum(1 for c in cells if c.get("cell_type") == "code" and nbgrader_metadata(c).get("solution")
               and "NotImplementedError" not in cell_text(c.get("source")))


def edition_copies(path: Path, names: tuple[str, ...]) -> dict[str, tuple[list[Path], str | None]]:
    """Per notebook name, its copies in the submission (the graded one first) and a note when there are two.

    The copies are the path itself, or the notebooks directly in the folder or one level down. When a
    notebook is there more than once (a student who worked in both editions, ``self_attention/`` and
    ``self_attention_zh/``), the copy with the most answers written is graded (then the newest; then the
    first in name order), never both, and the note names the copy left out so the student can see it."""
    if path.is_file():
        return {path.name: ([path], None)} if path.name in names else {}
    copies: dict[str, list[Path]] = {}
    for candidate in sorted(path.glob("*.ipynb")) + sorted(path.glob("*/*.ipynb")):
        if candidate.name in names and ".ipynb_checkpoints" not in candidate.parts:
            copies.setdefault(candidate.name, []).append(candidate)
    found: dict[str, tuple[list[Path], str | None]] = {}
    for name, paths in copies.items():
        if len(paths) == 1:
            found[name] = (paths, None)
            continue
        written = {p: answers_written(p) for p in paths}

        def mtime(p: Path) -> float:
            try:
                return p.stat().st_mtime
            except OSError:
                return 0.0

        ranked = sorted(paths, key=lambda p: (-written[p], -mtime(p), paths.index(p)))
        chosen, others = ranked[0], ranked[1:]
        shown = [p.relative_to(path).as_posix() for p in ranked]
        lang = notebook_language_at(chosen)  # the note is the student's: in the graded copy's language
        if written[chosen] > max(written[p] for p in others):
            why = tr("it has more answers written", lang)
        elif mtime(chosen) > max(mtime(p) for p in others):
            why = tr("it was saved last", lang)
        else:
            why = tr("it comes first", lang)
        found[name] = (ranked, tr("{name} was submitted {count} times ({copies}); graded: {graded} ({why}); not "
                                  "graded: {others}. Submit each notebook in one edition only", lang).format(
            name=name, count=len(paths), copies=", ".join(shown), graded=shown[0], why=why,
            others=", ".join(shown[1:])))
    return found


def expand_batch(path: Path, names: tuple[str, ...]) -> list[Path]:
    """A folder that holds notebooks (directly or one level down) is one submission; otherwise, when its
    sub-folders are submissions, it is a batch and each sub-folder is one student."""
    if path.is_file() or any(p.name in names for p in path.glob("*.ipynb")):
        return [path]
    students = [p for p in sorted(path.iterdir()) if p.is_dir() and not p.name.startswith(".")]
    # One sub-folder with notebooks is the assignment folder of one student (<student>/<assignment>/);
    # several are several students. (A batch of a single student reads as that student: the same.)
    with_notebooks = [p for p in students if find_notebooks(p, names)]
    if len(with_notebooks) <= 1 and any(p.name in names for p in path.glob("*/*.ipynb")):
        return [path]
    # <student>/self_attention/ and <student>/self_attention_zh/: one student who has both editions
    if with_notebooks and all(p.name in EDITION_FOLDERS for p in with_notebooks):
        return [path]
    return students if students else [path]
