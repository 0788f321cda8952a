"""Example submissions built from the instructor's notebooks.

A submission is a *release* notebook (what a student receives) whose answer cells have been filled
in. :func:`build_submission` fills each answer cell (nbgrader ``solution: true``, found by
``grade_id``) with the source notebook's answer, the ``### BEGIN/END SOLUTION`` delimiter lines
removed, unless ``overrides`` gives that cell's whole text. Everything else (given code, test
cells, metadata, checksums) stays exactly as released, as it would in a real student's notebook.

``scripts/make_examples.py`` writes the bundled students to
``examples/submissions/<student>/self_attention/`` (nbgrader's ``submitted/`` layout) and the
nbgrader pipeline tests grade the same students:

* ``perfect``: every answer from ``source/``;
* ``empty``: the release, unchanged (every answer raises ``NotImplementedError``);
* ``one_wrong``: ``perfect`` with :data:`ONE_WRONG_ITEM` replaced by a classic mistake.

Each edition of the course has the same students, built from its own source and release: the Chinese
edition's are ``perfect_zh``, ``empty_zh`` and ``one_wrong_zh`` in ``<student>/self_attention_zh/``
(:func:`edition_students`), with the same answers, so both editions must score the same item by item.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from pathlib import Path

import nbformat
from nbformat.notebooknode import NotebookNode

from exercises.editions import LANGUAGES, MASTER_ASSIGNMENT, assignment_for

__all__ = [
    "ASSIGNMENT",
    "EDITIONS",
    "ONE_WRONG_ITEM",
    "ONE_WRONG_OVERRIDES",
    "STUDENTS",
    "answer_cells",
    "build_submission",
    "build_students",
    "edition_students",
    "strip_solution_delimiters",
    "notebook_text",
]

ASSIGNMENT = MASTER_ASSIGNMENT

#: The item the ``one_wrong`` student gets wrong, with a classic mistake: the training loop never
#: zeroes the gradients, so from the second step on each update uses the sum of all past gradients and
#: the curve leaves the training's. Every hidden case of the item fails (float64 and float32), and so does
#: the visible check that ``.grad`` holds only the last step's gradient, so both graders give it 0 and
#: nothing else changes: no other item calls ``train_language_model``. (A mistake that fails only some
#: hidden cases would earn partial credit from the pytest grader while nbgrader, seeing the visible check
#: fail, gives 0; the example is chosen so the two graders can be compared exactly.)
ONE_WRONG_ITEM = "train_language_model"

ONE_WRONG_OVERRIDES: dict[str, str] = {
    ONE_WRONG_ITEM: '''def train_language_model(model, tokens, steps, lr):
    """Train model with Adam and next_token_loss (this student never zeroes the gradients)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    losses = []
    for _ in range(steps):
        loss = next_token_loss(model(tokens), tokens)
        losses.append(loss.item())
        loss.backward()
        optimizer.step()
    return losses
''',
}

#: student name -> overrides (``None``: the release notebook unchanged).
STUDENTS: dict[str, dict[str, str] | None] = {
    "perfect": {},
    "empty": None,
    "one_wrong": ONE_WRONG_OVERRIDES,
}

#: language -> (nbgrader assignment, suffix of its students' names): the master's edition first
EDITIONS: dict[str, tuple[str, str]] = {lang: (assignment_for(lang), "" if lang == "en" else f"_{lang}")
                                         for lang in LANGUAGES}


def edition_students(students: Mapping[str, object] = STUDENTS) -> dict[str, tuple[str, str]]:
    """Every example student of every edition: ``{name: (base student, assignment)}``, e.g.
    ``{"perfect": ("perfect", "self_attention"), "perfect_zh": ("perfect", "self_attention_zh"), ...}``."""
    return {f"{student}{suffix}": (student, assignment)
            for assignment, suffix in EDITIONS.values() for student in students}


_DELIMITER = re.compile(r"^\s*#+\s*(BEGIN|END) SOLUTION\s*$")


def strip_solution_delimiters(source: str) -> str:
    """``source`` without its ``### BEGIN SOLUTION`` / ``### END SOLUTION`` lines."""
    return "\n".join(line for line in source.split("\n") if not _DELIMITER.match(line))


def _nbgrader(cell: NotebookNode) -> Mapping:
    return cell.get("metadata", {}).get("nbgrader", {})


def answer_cells(nb: NotebookNode) -> dict[str, NotebookNode]:
    """The answer cells (``solution: true``) of ``nb`` by ``grade_id``."""
    return {_nbgrader(c)["grade_id"]: c for c in nb.cells if _nbgrader(c).get("solution")}


def build_submission(
    source_nb: NotebookNode, release_nb: NotebookNode, overrides: Mapping[str, str] | None = None
) -> NotebookNode:
    """The release notebook with every answer cell filled in (see the module docstring).

    ``overrides`` maps a ``grade_id`` to the full text of that answer cell; keys that are not
    answer cells of this notebook are ignored (one mapping can serve a whole assignment; see
    :func:`build_students`, which checks that every key was used).
    """
    overrides = overrides or {}
    answers = answer_cells(source_nb)
    nb = copy.deepcopy(release_nb)
    for cell in nb.cells:
        meta = _nbgrader(cell)
        if not meta.get("solution"):
            continue
        grade_id = meta["grade_id"]
        if grade_id in overrides:
            cell.source = overrides[grade_id]
        elif grade_id in answers:
            cell.source = strip_solution_delimiters(answers[grade_id].source)
        else:
            raise KeyError(f"answer cell {grade_id!r} of the release is not an answer cell of the source")
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
    return nb


def notebook_text(nb: NotebookNode) -> str:
    """The canonical file text of a notebook (nbformat's layout, trailing newline)."""
    text = nbformat.writes(nb)
    return text if text.endswith("\n") else text + "\n"


def build_students(
    source_dir: Path, release_dir: Path, students: Mapping[str, Mapping[str, str] | None] = STUDENTS
) -> dict[str, dict[str, str]]:
    """``{student: {notebook file name: file text}}`` for every notebook of ``release_dir``.

    ``source_dir`` and ``release_dir`` are the assignment folders (``source/self_attention``,
    ``release/self_attention``). Raises ``ValueError`` when an override names no answer cell of
    any notebook, or when a release notebook has no source notebook.
    """
    source_dir, release_dir = Path(source_dir), Path(release_dir)
    releases = sorted(release_dir.glob("*.ipynb"))
    if not releases:
        raise FileNotFoundError(f"no release notebooks in {release_dir}")
    out: dict[str, dict[str, str]] = {}
    for student, overrides in students.items():
        used: set[str] = set()
        files: dict[str, str] = {}
        for release_path in releases:
            source_path = source_dir / release_path.name
            if not source_path.exists():
                raise ValueError(f"{release_path.name} is in the release but not in {source_dir}")
            release_nb = nbformat.read(release_path, as_version=4)
            if overrides is None:
                files[release_path.name] = notebook_text(release_nb)
                continue
            source_nb = nbformat.read(source_path, as_version=4)
            nb = build_submission(source_nb, release_nb, overrides)
            used |= set(overrides) & set(answer_cells(release_nb))
            files[release_path.name] = notebook_text(nb)
        unused = set(overrides or {}) - used
        if unused:
            raise ValueError(f"student {student!r}: overrides name no answer cell: {sorted(unused)}")
        out[student] = files
    return out
