"""The course's master notebooks (``source/``): their cells, answer cells and points, read as plain JSON.

The one source of truth for points: both graders read an item's points here, from the ``points`` of
its test cell. No Jupyter stack is needed (the grader runs on a bare GPU machine with torch alone).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SOURCE_DIR = REPO / "source"
ASSIGNMENT = "self_attention"


@dataclass
class SourceNotebook:
    """What the instructor's master copy says: cells in order, answer ids and points per test cell."""

    path: Path
    cells: list[dict]
    answer_ids: list[str]
    points: dict[str, float]  # test grade_id -> points


def nbgrader_metadata(cell: dict) -> dict:
    """A cell's ``nbgrader`` metadata, or ``{}`` when it has none (or it is not a mapping)."""
    meta = cell.get("metadata", {})
    data = meta.get("nbgrader", {}) if isinstance(meta, dict) else {}
    return data if isinstance(data, dict) else {}


def cell_text(source) -> str:
    """A cell's source as one string (nbformat allows a list of lines)."""
    if isinstance(source, list):
        return "".join(s for s in source if isinstance(s, str))
    return source if isinstance(source, str) else ""


def find_source_dir(explicit: Path | None, notebooks: tuple[str, ...]) -> Path:
    """The course's ``source/`` folder: ``explicit``, else this repository's, else ``./source``.

    Installed from a wheel, the package has no ``source/`` beside it: the course root is then the
    working directory (where nbgrader runs too). ``FileNotFoundError`` names what is missing.
    """
    candidates = [explicit] if explicit is not None else [SOURCE_DIR, Path.cwd() / "source"]
    for candidate in candidates:
        missing = [nb for nb in notebooks if not (candidate / ASSIGNMENT / nb).is_file()]
        if not missing:
            return candidate.resolve()
    where = explicit if explicit is not None else f"{SOURCE_DIR} or {Path.cwd() / 'source'}"
    raise FileNotFoundError(f"the course's master notebooks were not found in {where} (expected "
                            f"{ASSIGNMENT}/{notebooks[0]} and the others there): run from the course root "
                            "or pass --source PATH/TO/source")


def load_source(notebook_name: str, source_dir: Path = SOURCE_DIR) -> SourceNotebook:
    """Parse the master notebook ``notebook_name`` (trusted) from ``source/self_attention``."""
    path = source_dir / ASSIGNMENT / notebook_name
    # Plain JSON (the master notebooks are nbformat 4, checked by the suite): the grader needs no
    # Jupyter stack, so it runs on a bare GPU machine with torch alone.
    nb = json.loads(path.read_text(encoding="utf-8"))
    if nb.get("nbformat") != 4:
        raise ValueError(f"{path} is not an nbformat 4 notebook")
    cells, answers, points = [], [], {}
    for cell in nb["cells"]:
        meta = nbgrader_metadata(cell)
        cells.append({"cell_type": cell["cell_type"], "source": cell_text(cell.get("source")), "nbgrader": meta})
        if meta.get("solution"):
            answers.append(meta["grade_id"])
        if meta.get("grade") and not meta.get("solution"):
            points[meta["grade_id"]] = float(meta.get("points", 0))
    return SourceNotebook(path, cells, answers, points)
