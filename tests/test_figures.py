"""Pictures before running (``scripts/figures.py``): in place, up to date, and never an answer.

The release may carry images only in the figure cells that the script makes, each drawn by a
*given* cell that names no graded item, run with the given cells only (no answer, no reference
solution). The slow test redraws the committed figures and compares the pixels, so a hand-edited
or stale picture is found.
"""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import re
from pathlib import Path

import nbformat
import numpy as np
import pytest
from nbformat.v4 import new_code_cell, new_notebook

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "source" / "self_attention"
RELEASE = ROOT / "release" / "self_attention"

_spec = importlib.util.spec_from_file_location("_selfattn_figures_test", ROOT / "scripts" / "figures.py")
figures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(figures)


def _meta(cell) -> dict:
    return cell.get("metadata", {}).get("nbgrader", {})


def _attached(nb) -> dict[str, bytes]:
    return {name: base64.b64decode(data["image/png"]) for cell in nb.cells
            if figures.MARK in cell.get("metadata", {}) for name, data in cell.get("attachments", {}).items()}


def test_release_figures_are_in_place_and_drawn_by_the_current_code():
    assert figures.problems(RELEASE, SOURCE) == [], "run python scripts/release.py (or scripts/figures.py)"
    assert sum(len(v) for v in figures.FIGURES.values()) >= 3
    drawn = {name: _attached(nbformat.read(RELEASE / name, as_version=4)) for name in figures.FIGURES}
    for name, gids in figures.FIGURES.items():
        assert sorted(drawn[name]) == sorted(f"{gid}.png" for gid in gids), name
        for png in drawn[name].values():
            assert png.startswith(b"\x89PNG") and 5_000 < len(png) < 400_000


def test_no_other_image_in_the_release():
    """Images only in figure cells: none in other cells' attachments, markdown, HTML or outputs."""
    for path in sorted(RELEASE.glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            if figures.MARK in cell.get("metadata", {}):
                continue
            where = f"{path.name}: {_meta(cell).get('grade_id') or cell.source[:40]!r}"
            assert not cell.get("attachments"), where
            assert not re.search(r"data:image|<img|!\[[^\]]*\]\(", cell.source), where
            assert not any("image/" in key for out in cell.get("outputs", []) for key in out.get("data", {})), where
    assert not [p for p in RELEASE.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".svg", ".gif")]


def test_listed_figures_come_from_given_cells_that_name_no_graded_item():
    import ast

    from exercises.catalogue import items_in

    for name, gids in figures.FIGURES.items():
        source = nbformat.read(SOURCE / name, as_version=4)
        graded = figures.graded_names(source)
        items = {item.name for item in items_in(name)}
        assert items and items <= graded  # the filter sees every answer of the notebook
        cells = {_meta(c).get("grade_id"): c for c in source.cells}
        for gid in gids:
            meta = _meta(cells[gid])
            assert not meta.get("solution") and not meta.get("grade") and meta.get("locked"), gid
            used = {n.id for n in ast.walk(ast.parse(cells[gid].source)) if isinstance(n, ast.Name)}
            assert not used & graded, (gid, used & graded)


def _tiny_course():
    answer = new_code_cell("def secret_answer():\n    return [1, 2, 3]",
                           metadata={"nbgrader": {"solution": True, "grade": False, "grade_id": "secret_answer"}})
    given = {"nbgrader": {"solution": False, "grade": False, "locked": True}}
    cells = [
        new_code_cell("import matplotlib.pyplot as plt", metadata={"nbgrader": dict(given, grade_id="given_imports")}),
        answer,
        new_code_cell("plt.plot(secret_answer())\nplt.show()",
                      metadata={"nbgrader": dict(given, grade_id="given_uses_answer")}),
        new_code_cell("plt.plot([3, 1, 2])\nplt.show()", metadata={"nbgrader": dict(given, grade_id="given_plot")}),
        new_code_cell("plt.figure()\nplt.figure()", metadata={"nbgrader": dict(given, grade_id="given_two")}),
        new_code_cell("undefined_name + 1", metadata={"nbgrader": dict(given, grade_id="given_broken")}),
    ]
    return new_notebook(cells=cells)


def test_render_draws_a_given_figure_and_refuses_anything_that_could_show_an_answer():
    nb = _tiny_course()
    (png,) = figures.render(nb, ("given_plot",)).values()
    assert png.startswith(b"\x89PNG")
    for gid, why in [("given_uses_answer", "graded name"), ("secret_answer", "answer or test cell"),
                     ("given_two", "2 figures"), ("given_broken", "NameError"), ("given_nothing", "no given")]:
        with pytest.raises(figures.FigureError, match=why):
            figures.render(nb, (gid,))


def test_add_figures_puts_one_cell_before_its_code_and_replaces_old_ones():
    nb = _tiny_course()
    once = figures.add_figures(nb, _tiny_course(), ("given_plot",))
    twice = figures.add_figures(once, _tiny_course(), ("given_plot",))
    marks = [i for i, c in enumerate(twice.cells) if figures.MARK in c.metadata]
    assert len(marks) == 1
    assert _meta(twice.cells[marks[0] + 1])["grade_id"] == "given_plot"
    assert json.loads(json.dumps(twice.cells[marks[0]].metadata))[figures.MARK]["code_sha256"] == \
        figures.code_sha256("plt.plot([3, 1, 2])\nplt.show()")
    removed = figures.add_figures(twice, _tiny_course(), ())  # no longer listed: its figure goes
    assert [c.source for c in removed.cells] == [c.source for c in _tiny_course().cells]


@pytest.mark.slow
def test_committed_figures_are_what_the_code_draws():
    """Redrawn here, each figure matches the committed one (approximately: fonts and versions vary)."""
    from matplotlib.image import imread

    for name, gids in figures.FIGURES.items():
        committed = _attached(nbformat.read(RELEASE / name, as_version=4))
        drawn = figures.render(nbformat.read(SOURCE / name, as_version=4), gids)
        for gid, png in drawn.items():
            old, new = imread(io.BytesIO(committed[f"{gid}.png"])), imread(io.BytesIO(png))
            assert abs(old.shape[0] - new.shape[0]) <= 4 and abs(old.shape[1] - new.shape[1]) <= 4, gid
            h, w = min(old.shape[0], new.shape[0]), min(old.shape[1], new.shape[1])
            assert float(np.abs(old[:h, :w, :3] - new[:h, :w, :3]).mean()) < 0.02, gid
