"""Read a submission: find its notebooks, pair each with its ``source/`` master, pick the cells to run.

What runs comes from the instructor's copy: the given cells' text from ``source/``, and for every
answer cell (``solution: true`` in ``source/``) the student's cell with the same ``grade_id``. Test
cells, points and locks are never taken from the student's copy.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from autograder.runner import CellSpec
from exercises.editions import LANGUAGES, assignment_for
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


def read_student_notebook(path: Path) -> list[dict]:
    """Read the student's notebook as plain JSON within caps; IntakeError with a reason otherwise."""
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise IntakeError(f"cannot read {path.name}: {exc.strerror}") from exc
    if size > MAX_NOTEBOOK_BYTES:
        raise IntakeError(f"{path.name} is {size >> 20} MiB; the limit is {MAX_NOTEBOOK_BYTES >> 20} MiB "
                          "(clear the outputs before submitting)")
    try:
        data = json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError) as exc:
        raise IntakeError(f"{path.name} is not a valid notebook (invalid JSON: {str(exc)[:120]}); "
                          "re-download it or restore it from a checkpoint") from exc
    cells = data.get("cells") if isinstance(data, dict) else None
    if not isinstance(cells, list):
        raise IntakeError(f"{path.name} is not a Jupyter notebook (no list of cells)")
    if len(cells) > MAX_CELLS:
        raise IntakeError(f"{path.name} has {len(cells)} cells; the limit is {MAX_CELLS}")
    return [c for c in cells if isinstance(c, dict)]


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
        prepared.notes.append(f"answer cell `{gid}` appears more than once; the first copy was graded")
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
            prepared.notes.append(f"answer cell `{gid}` is missing from the submission (deleted, or its "
                                  "metadata was changed); restore it from the released notebook")
            continue
        code, dropped = strip_magics(by_id[gid])
        if dropped:
            prepared.notes.append(f"answer cell `{gid}`: {dropped} IPython magic/shell line(s) were not run")
        try:
            parse(code)
        except SyntaxError as exc:
            prepared.syntax_errors[gid] = f"SyntaxError in answer cell `{gid}` line {exc.lineno}: {exc.msg}"
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
    if not path.is_file():  # a FIFO or a device is never read (it could block): it is no copy to prefer
        return -1
    try:
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
        why = ("it has more answers written" if written[chosen] > max(written[p] for p in others)
               else "it was saved last" if mtime(chosen) > max(mtime(p) for p in others) else "it comes first")
        found[name] = (ranked, f"{name} was submitted {len(paths)} times ({', '.join(shown)}); graded: {shown[0]} "
                               f"({why}); not graded: {', '.join(shown[1:])}. Submit each notebook in one "
                               "edition only")
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
