"""Which given cells does grading run, and are the scores the same as when every cell runs?

``autograder/needed.py`` leaves out the lesson's demos, plots and trainings. The fast tests pin its
rules on small cells; the slow one grades the bundled examples and every fixture answer (known
mistakes, errors, correct alternatives) both ways and compares every row's status and score.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pytest
from grader_fixtures import write_submission
from soak_depth import depth

from autograder.grading import ReferenceCache, grade_notebook
from autograder.needed import needed_cells, program_names
from autograder.pool import WorkerPool
from autograder.runner import CellSpec, default_bwrap
from autograder.sandbox import Limits
from exercises.catalogue import ITEMS, NOTEBOOKS
from exercises.source import load_source

REPO = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"
# Submissions per notebook made of fixture answers (at most one per item in each): one answer of every item
# that has a fixture, within the suite's time budget (ten lessons, two cores). Every round of every notebook
# passed (99 rounds: 2026-11-27 with eight lessons, 2026-12-08 with ten); ``SELFATTN_SOAK=full`` checks them all
# again (tests/soak_depth.py).
ROUNDS = depth(1, 99)


def kept(*cells: tuple[str, str], roots=("graded",)) -> list[str]:
    """Which of ``cells`` ((kind, source), given cells named g0, g1, ...) run."""
    specs = [CellSpec(f"g{i}", source, kind) for i, (kind, source) in enumerate(cells)]
    return [spec.grade_id for spec, keep in zip(specs, needed_cells(specs, set(roots)), strict=True) if keep]


IMPORTS = ("given", "import torch\nimport matplotlib.pyplot as plt\n")
ANSWER = ("answer", "def graded(x):\n    return torch.softmax(x, -1) * SCALE\n")


def test_is_a_demo_that_only_draws_and_prints_left_out():
    demo = ("given", "w = torch.rand(3)\nprint(graded(w))\nplt.plot(w)\nplt.show()\n")
    assert kept(IMPORTS, ("given", "SCALE = 1.0\n"), ANSWER, demo) == ["g0", "g1", "g2"]


def test_is_a_constant_an_answer_uses_kept_with_what_it_needs():
    cells = (IMPORTS, ("given", "BASE = 2.0\n"), ("given", "SCALE = BASE / 2\n"), ANSWER)
    assert kept(*cells) == ["g0", "g1", "g2", "g3"]


@pytest.mark.parametrize("change", [
    "SCALE_BOX[0] = 3.0",  # assigns into it
    "SCALE_BOX.append(3.0)",  # calls a method of it
    "fill(SCALE_BOX)",  # passes it to a function
    "torch.set_default_dtype(torch.float64)",  # changes a library's process-wide setting
    "globals()['SCALE_BOX'] = [3.0]",  # writes through the namespace
    "exec('SCALE_BOX = [3.0]')",  # cannot be read
    "from math import *",  # cannot be read
])
def test_is_a_demo_that_may_change_what_graded_code_sees_kept(change):
    answer = ("answer", "def graded(x):\n    return x * SCALE_BOX[0]\n")
    cells = (IMPORTS, ("given", "SCALE_BOX = [1.0]\ndef fill(b):\n    b[0] = 2.0\n"), answer, ("given", change))
    assert "g3" in kept(*cells)


def test_is_a_reseeding_or_thread_setting_demo_left_out():
    demo = ("given", "torch.manual_seed(0)\ntorch.set_num_threads(1)\nx = torch.rand(2)\nprint(graded(x))\n")
    assert kept(IMPORTS, ("given", "SCALE = 1.0\n"), ANSWER, demo) == ["g0", "g1", "g2"]


def test_does_an_answer_that_reads_a_demos_variable_keep_that_demo():
    answer = ("answer", "def graded(x):\n    return x * demo_scale\n")
    assert kept(IMPORTS, ("given", "demo_scale = 3.0\nprint(demo_scale)\n"), answer) == ["g1", "g2"]


@pytest.mark.parametrize("helper", [
    "def tiles(q, *, tile):\n    return q.split(tile, dim=-2)\n",  # keyword-only, no default
    "def tiles(q, *, tile=SCALE):\n    return q\n",  # keyword-only with a default that reads a given name
    "async def tiles(q, *, tile):\n    return q\n",
])
def test_does_an_answer_with_a_keyword_only_parameter_get_analysed(helper):
    """A keyword-only parameter without a default puts None in ``kw_defaults``: the analysis crashed on it and
    the whole submission was not graded (issue 16). The answer still needs the cells its names come from."""
    answer = ("answer", helper + "def graded(x):\n    return torch.softmax(x, -1) * SCALE\n")
    assert kept(IMPORTS, ("given", "SCALE = 1.0\n"), answer, ("given", "print(1)\n")) == ["g0", "g1", "g2"]


def test_does_a_name_the_graded_calls_look_up_keep_its_cell():
    assert kept(IMPORTS, ("given", "class Toy:\n    pass\n"), roots=("Toy",)) == ["g1"]
    assert program_names([[{"op": "new", "cls": "Toy", "out": "m"}, {"op": "call", "fn": "m.forward"},
                           {"op": "call", "fn": "torch.clone"}]]) == {"Toy", "torch"}


def test_are_the_lessons_demos_left_out():
    """Most given cells of the course are demos: far fewer run than the lessons hold."""
    total = run = 0
    for notebook in NOTEBOOKS:
        source = load_source(notebook)
        specs = [CellSpec(c["nbgrader"].get("grade_id", "given"), c["source"],
                          "answer" if c["nbgrader"].get("solution") else "given")
                 for c in source.cells if c["cell_type"] == "code" and not (
                     c["nbgrader"].get("grade") and not c["nbgrader"].get("solution"))]
        given = [s for s in specs if s.kind == "given"]
        keep = needed_cells(specs, {item for item, spec in ITEMS.items() if spec.notebook == notebook})
        total += len(given)
        run += sum(k for s, k in zip(specs, keep, strict=True) if s.kind == "given")
    assert run <= total // 2, f"{run} of {total} given cells run"


# --- the proof: the same scores as running every cell ----------------------------------------------------
def _fixture_submissions(tmp_path: Path) -> list[tuple[str, Path]]:
    """(notebook, path): the examples, then fixture answers: at most one per item in each submission, and at most
    ``ROUNDS`` submissions per notebook. An example notebook the same, byte for byte, as one already in the list
    (one_wrong's nine notebooks that are perfect's) is graded once."""
    found, seen = [], set()
    for who in ("perfect", "one_wrong", "empty"):
        for nb in NOTEBOOKS:
            path = REPO / "examples" / "submissions" / who / "self_attention" / nb
            key = (nb, path.read_bytes())
            if key not in seen:
                seen.add(key)
                found.append((nb, path))
    by_notebook: dict[str, list[dict[str, str]]] = defaultdict(list)
    for fixture in sorted(FIXTURES.glob("*/*.py")):
        item = fixture.stem.split("__")[0]
        if item not in ITEMS:
            continue
        rounds = by_notebook[ITEMS[item].notebook]
        slot = next((r for r in rounds if item not in r), None)
        if slot is None:
            if len(rounds) == ROUNDS:
                continue
            slot = {}
            rounds.append(slot)
        slot[item] = fixture.read_text(encoding="utf-8")
    for notebook, rounds in sorted(by_notebook.items()):
        for index, overrides in enumerate(rounds):
            found.append((notebook, write_submission(tmp_path / f"{notebook}-{index}", notebook, overrides)))
    return found


@pytest.mark.slow
def test_are_the_scores_the_same_when_every_cell_runs(tmp_path):
    limits = Limits(call_timeout=20.0, cell_timeout=30.0)
    bwrap = default_bwrap()
    pool, references = WorkerPool(limits, bwrap), ReferenceCache()
    differences = []
    try:
        for notebook, path in _fixture_submissions(tmp_path):
            rows = {}
            for all_cells in (False, True):
                result = grade_notebook(notebook, path, 11, ["cpu"], limits, bwrap, pool=pool,
                                        references=references, all_cells=all_cells)
                rows[all_cells] = [(o.name, o.status, round(o.score, 9)) for o in result.outcomes]
            if rows[False] != rows[True]:
                differences.append((path, rows[False], rows[True]))
    finally:
        pool.shutdown()
    assert not differences, differences[:3]
