"""Is the repository consistent: notebooks without outputs, one definition per graded item, lint clean?"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from exercises.catalogue import ITEMS, NOTEBOOKS

REPO = Path(__file__).resolve().parent.parent
SOURCE = REPO / "source" / "self_attention"
HIDDEN = re.compile(r"### BEGIN HIDDEN TESTS\s*\nfrom exercises\.kernel import check\s*\n"
                    r"check\(\"(\w+)\", globals\(\)\)\s*\n### END HIDDEN TESTS")


def source_notebooks():
    return [nbformat.read(SOURCE / name, as_version=4) for name in NOTEBOOKS]


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_are_source_notebooks_committed_without_outputs(name):
    nb = nbformat.read(SOURCE / name, as_version=4)
    dirty = [i for i, cell in enumerate(nb.cells)
             if cell.cell_type == "code" and (cell.get("outputs") or cell.get("execution_count") is not None)]
    assert not dirty, f"{name}: cells {dirty} carry outputs or execution counts; clear them before committing"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_does_each_graded_item_have_an_answer_cell_and_a_test_cell_with_points(name):
    nb = nbformat.read(SOURCE / name, as_version=4)
    ids = [c.metadata.get("nbgrader", {}).get("grade_id") for c in nb.cells]
    for item in (i for i in ITEMS.values() if i.notebook == name):
        assert item.name in ids, f"{name}: no answer cell with grade_id {item.name!r}"
        answer = nb.cells[ids.index(item.name)]
        assert answer.metadata.nbgrader["solution"] and not answer.metadata.nbgrader["grade"]
        test = nb.cells[ids.index(item.name) + 1]
        meta = test.metadata.get("nbgrader", {})
        assert meta.get("grade_id") == f"test_{item.name}", f"{item.name}: its test cell must follow the answer cell"
        assert meta.get("grade") and meta.get("locked") and float(meta.get("points", 0)) > 0
        found = HIDDEN.findall(test.source)
        assert found == [item.name], f"test_{item.name} must end with the hidden check of {item.name!r}: {found}"


def test_is_every_hidden_check_a_catalogue_item():
    graded = {m for nb in source_notebooks() for c in nb.cells for m in HIDDEN.findall(c.source)}
    assert graded == set(ITEMS)


def test_is_the_code_lint_clean():
    ruff = shutil.which("ruff") or str(Path(sys.executable).with_name("ruff"))
    if not Path(ruff).exists():
        pytest.fail("ruff is not installed: pip install -e '.[dev]'")
    result = subprocess.run([ruff, "check", "."], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:]
