"""Build fixture submissions for the grader's tests: a source notebook with some answer cells replaced."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat

REPO = Path(__file__).resolve().parent.parent
SOURCE = REPO / "source" / "self_attention"
NB1 = "01_attention_scores.ipynb"


def answers_from_source(notebook: str) -> dict[str, str]:
    """Answer-cell text by grade_id, as a perfect student would submit it (delimiters dropped)."""
    nb = nbformat.read(SOURCE / notebook, as_version=4)
    out = {}
    for cell in nb.cells:
        meta = cell.metadata.get("nbgrader", {})
        if meta.get("solution"):
            out[meta["grade_id"]] = "\n".join(line for line in cell.source.splitlines()
                                              if "BEGIN SOLUTION" not in line and "END SOLUTION" not in line)
    return out


def write_submission(folder: Path, notebook: str, overrides: dict[str, str | None]) -> Path:
    """Write ``notebook`` into ``folder`` with answer cells replaced (``None`` deletes the cell)."""
    nb = nbformat.read(SOURCE / notebook, as_version=4)
    cells = []
    for cell in nb.cells:
        gid = cell.metadata.get("nbgrader", {}).get("grade_id")
        if gid in overrides:
            if overrides[gid] is None:
                continue
            cell.source = overrides[gid]
        cells.append(cell)
    nb.cells = cells
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / notebook
    path.write_text(json.dumps(nb), encoding="utf-8")
    return path


def course_points() -> float:
    """The course's total, read from ``source/``: every test cell's points (what a perfect submission scores)."""
    from exercises.catalogue import NOTEBOOKS
    from exercises.source import load_source

    return sum(sum(load_source(notebook).points.values()) for notebook in NOTEBOOKS)


def item_points(item: str) -> float:
    """The points of one graded item (its test cell ``test_<item>`` in ``source/``)."""
    from exercises.catalogue import ITEMS
    from exercises.source import load_source

    return load_source(ITEMS[item].notebook).points[f"test_{item}"]
