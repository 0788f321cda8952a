"""Pictures before running: chosen given cells' figures, drawn from ``source/``, attached to the release.

    python scripts/figures.py            # (re)draw the figures into release/<assignment>/, both editions
    python scripts/figures.py --check    # exit 1 when a figure is missing, stale or unexpected

Each edition's pictures are drawn from its own source (``source/self_attention_zh/`` for the Chinese
release), so a plotting cell whose labels the translation put in Chinese draws them in Chinese; the
lessons' ``given_cjk_font`` cell lets matplotlib take those glyphs from a CJK font.

``scripts/release.py`` runs this step after ``nbgrader generate_assignment``, so a release is never
without its figures; this script alone redraws them in place.

A released notebook carries no outputs: a student sees no picture until the cells run, and Run All
stops at the first unanswered exercise. For the figures listed in :data:`FIGURES`, a markdown cell
is put right before the code cell that draws it, holding that cell's figure as a PNG attachment.

**No picture can show an answer.** The figures are drawn by running the *given* cells of the source
notebook in order (``solution`` and ``grade`` cells are never run, so no graded name exists and no
reference solution is used); a listed cell must not name any graded item (checked in its syntax
tree) and must draw exactly one figure without an error. Figures of a graded item's output (e.g.
the causal mask, the sliding-window masks, a split into heads) are left out on purpose. Each
figure cell records the SHA-256 of the code that drew it, so a stale figure is found
(``--check``, and ``tests/test_figures.py``).
"""

from __future__ import annotations

import argparse
import ast
import base64
import contextlib
import hashlib
import io
import sys
from pathlib import Path

import nbformat
from nbformat.notebooknode import NotebookNode, from_dict

ROOT = Path(__file__).resolve().parents[1]
ASSIGNMENT = "self_attention"
ASSIGNMENTS = (ASSIGNMENT, f"{ASSIGNMENT}_zh")  # the editions (exercises/editions.py: assignment_for)
MARK = "selfattn_figure"  # cell metadata key of a figure cell: {"cell": grade_id, "code_sha256": ...}

#: notebook -> the given cells whose figure is attached (they teach; they show no answer)
FIGURES: dict[str, tuple[str, ...]] = {
    "01_attention_scores.ipynb": ("given_rnn_bottleneck_demo", "given_plot_embeddings"),
    "02_scaled_dot_product_attention.ipynb": ("given_saturation_demo",),
    "08_fast_generation.ipynb": ("given_cache_layout_picture",),
    "09_flash_attention_forward.ipynb": ("given_demo_tile_grid",),
}

CAPTION = ("*What the code cell below draws (generated from the lesson's own code by `scripts/figures.py`; "
           "run the cell to draw it yourself):*")


class FigureError(RuntimeError):
    """A listed figure cannot be drawn safely; the message says which and why."""


def _nbgrader(cell) -> dict:
    return cell.get("metadata", {}).get("nbgrader", {})


def graded_names(nb: NotebookNode) -> set[str]:
    """Every name an answer cell defines or stands for (its grade_id and its top-level definitions)."""
    names = set()
    for cell in nb.cells:
        meta = _nbgrader(cell)
        if meta.get("solution"):
            names.add(meta["grade_id"])
            with contextlib.suppress(SyntaxError):
                for node in ast.parse(cell.source).body:
                    if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                        names.add(node.name)
        if meta.get("grade"):
            names.add(meta["grade_id"].removeprefix("test_"))
    return names


def code_sha256(source: str) -> str:
    return hashlib.sha256(source.encode("utf-8")).hexdigest()


def render(source_nb: NotebookNode, grade_ids: tuple[str, ...]) -> dict[str, bytes]:
    """PNG bytes of each listed given cell's figure, drawn by running the given cells in order.

    Raises :class:`FigureError` when a listed cell is not a given cell, names a graded item, raises,
    or does not draw exactly one figure.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    wanted = set(grade_ids)
    graded = graded_names(source_nb)
    found: dict[str, bytes] = {}
    namespace: dict = {"__name__": "__main__"}
    with matplotlib.rc_context(), contextlib.redirect_stdout(io.StringIO()):
        matplotlib.rcdefaults()
        show = plt.show
        plt.show = lambda *a, **k: None  # keep the figures open to save them
        try:
            for cell in source_nb.cells:
                meta = _nbgrader(cell)
                gid = meta.get("grade_id")
                if cell.cell_type != "code":
                    continue
                if meta.get("solution") or meta.get("grade"):
                    if gid in wanted:
                        raise FigureError(f"`{gid}` is an answer or test cell: its figure would show an answer")
                    continue  # never run: no answer, no reference solution
                plt.close("all")
                if gid not in wanted:
                    # a demo that calls an answer fails here (NameError), as in a notebook with unanswered cells
                    with contextlib.suppress(Exception):
                        exec(compile(cell.source, f"<{gid}>", "exec"), namespace)
                    continue
                used = {n.id for n in ast.walk(ast.parse(cell.source)) if isinstance(n, ast.Name)}
                if used & graded:
                    raise FigureError(f"`{gid}` uses the graded name(s) {sorted(used & graded)}: "
                                      "its figure would show an answer")
                try:
                    exec(compile(cell.source, f"<{gid}>", "exec"), namespace)
                except Exception as exc:  # noqa: BLE001 - reported with the cell's name
                    raise FigureError(f"`{gid}` failed when run with the given cells only: "
                                      f"{type(exc).__name__}: {exc}") from exc
                numbers = plt.get_fignums()
                if len(numbers) != 1:
                    raise FigureError(f"`{gid}` drew {len(numbers)} figures, expected 1")
                buffer = io.BytesIO()
                plt.figure(numbers[0]).savefig(buffer, format="png", dpi=72, bbox_inches="tight",
                                                  metadata={"Software": None})  # as Jupyter draws it
                found[gid] = buffer.getvalue()
        finally:
            plt.show = show
            plt.close("all")
    missing = wanted - set(found)
    if missing:
        raise FigureError(f"no given code cell with grade_id {sorted(missing)}")
    return found


def figure_cell(gid: str, code: str, png: bytes) -> NotebookNode:
    """The markdown cell that shows ``png`` (drawn by the cell ``gid`` whose code is ``code``)."""
    return from_dict({
        "cell_type": "markdown",
        "id": f"figure-{gid}"[:64],  # stable, so the release is reproducible
        "metadata": {MARK: {"cell": gid, "code_sha256": code_sha256(code)}},
        "source": f"{CAPTION}\n\n![{gid}](attachment:{gid}.png)",
        "attachments": {f"{gid}.png": {"image/png": base64.b64encode(png).decode("ascii")}},
    })


def add_figures(release_nb: NotebookNode, source_nb: NotebookNode, grade_ids: tuple[str, ...]) -> NotebookNode:
    """``release_nb`` with its figure cells (re)made: old ones removed, one before each listed cell."""
    pngs = render(source_nb, grade_ids) if grade_ids else {}
    cells = [c for c in release_nb.cells if MARK not in c.get("metadata", {})]
    out = []
    for cell in cells:
        gid = _nbgrader(cell).get("grade_id")
        if gid in pngs:
            out.append(figure_cell(gid, cell.source, pngs[gid]))
        out.append(cell)
    release_nb.cells = out
    return release_nb


def add_figures_to_release(release_dir: Path, source_dir: Path) -> list[str]:
    """Draw and attach every figure of :data:`FIGURES` in the release folder; the notebooks changed."""
    changed = []
    for path in sorted(Path(release_dir).glob("*.ipynb")):
        release_nb = nbformat.read(path, as_version=4)
        if not FIGURES.get(path.name) and not any(MARK in c.get("metadata", {}) for c in release_nb.cells):
            continue
        source_nb = nbformat.read(Path(source_dir) / path.name, as_version=4)
        nb = add_figures(release_nb, source_nb, FIGURES.get(path.name, ()))
        text = nbformat.writes(nb)
        path.write_text(text if text.endswith("\n") else text + "\n", encoding="utf-8")
        changed.append(path.name)
    return changed


def problems(release_dir: Path, source_dir: Path) -> list[str]:
    """What is wrong with the release's figures: missing, stale, misplaced or not listed (empty: fine)."""
    found = []
    for path in sorted(Path(release_dir).glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        source = {(_nbgrader(c).get("grade_id")): c for c in nbformat.read(Path(source_dir) / path.name,
                                                                           as_version=4).cells}
        listed = set(FIGURES.get(path.name, ()))
        seen = set()
        for i, cell in enumerate(nb.cells):
            mark = cell.get("metadata", {}).get(MARK)
            if mark is None:
                continue
            gid = mark.get("cell")
            seen.add(gid)
            nxt = nb.cells[i + 1] if i + 1 < len(nb.cells) else None
            if gid not in listed:
                found.append(f"{path.name}: a figure of `{gid}`, which scripts/figures.py does not list")
            elif nxt is None or _nbgrader(nxt).get("grade_id") != gid:
                found.append(f"{path.name}: the figure of `{gid}` is not right before that cell")
            elif mark.get("code_sha256") != code_sha256(source[gid].source):
                found.append(f"{path.name}: the figure of `{gid}` was drawn by older code (stale)")
        found += [f"{path.name}: the figure of `{gid}` is missing" for gid in sorted(listed - seen)]
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="report missing or stale figures, change nothing")
    parser.add_argument("--root", type=Path, default=ROOT, help="course root (default: this repository)")
    args = parser.parse_args(argv)
    found, changed = [], []
    for assignment in ASSIGNMENTS:
        release, source = args.root / "release" / assignment, args.root / "source" / assignment
        if not release.is_dir() and assignment != ASSIGNMENT:
            continue  # an edition not released yet (scripts/release.py makes it)
        if args.check:
            found += [f"{assignment}/{problem}" for problem in problems(release, source)]
            continue
        try:
            changed += [f"{assignment}/{name}" for name in add_figures_to_release(release, source)]
        except FigureError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    if args.check:
        print("\n".join(found) or "the release's figures are in place and up to date",
              file=sys.stderr if found else sys.stdout)
        return 1 if found else 0
    print(f"figures drawn into {', '.join(changed) or 'no notebook'}")
    return 0

if __name__ == "__main__":
    sys.exit(main())
