"""Which known mistakes do the notebooks' *visible* checks catch, before any hidden test runs?

A student learns at home only what the visible part of a test cell tells them. For every known
mistake (``exercises.diagnosis.all_mistakes()``, its student-written fixture
``tests/fixtures/mistakes/<item>__<mistake>.py``) and every error fixture (``tests/fixtures/errors``),
the visible part of the item's test cell (from ``source/``, the ``### BEGIN HIDDEN TESTS`` region
removed) runs in a namespace made like the student's kernel: the notebook's given cells that the
answers and the visible checks need (``autograder.needed``), in order, the reference answer for every
other answer cell, and the fixture in place of the item's answer. The mistake is *caught* when the
visible checks raise.

Every mistake must be caught, or be listed in ``NOT_CAUGHT`` with the reason it cannot be seen at
home; a listed mistake that becomes caught fails too (the list is stale). Control: with the reference
answers every visible check passes. Generic over ``exercises.catalogue``: a lesson added there is
covered, and an item without fixtures is simply not exercised.
"""

from __future__ import annotations

import contextlib
import functools
import io
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from autograder.needed import needed_cells
from autograder.runner import CellSpec
from exercises.catalogue import ITEMS, NOTEBOOKS, items_in
from exercises.diagnosis import all_error_hints, all_mistakes
from exercises.source import load_source

FIXTURES = Path(__file__).resolve().parent / "fixtures"
HIDDEN = re.compile(r"^[ \t]*### BEGIN HIDDEN TESTS.*?### END HIDDEN TESTS[^\n]*\n?", re.S | re.M)
SEEDS = (0, 1)  # caught means caught under every seed: a check that catches by luck does not count

# (item, mistake) -> why the visible checks cannot catch it at home. Keep it short and honest.
NOT_CAUGHT: dict[tuple[str, str], str] = {
}


@dataclass
class Prepared:
    """One item's test cell, and the notebook's namespace just before the item's answer cell."""

    before: dict  # the namespace before the answer cell
    between: list[str]  # needed given cells between the answer cell and the test cell
    answer: str  # the reference answer cell (source, with its solution)
    visible: str  # the test cell without its hidden region


def visible_part(test_source: str) -> str:
    return HIDDEN.sub("", test_source)


def quiet_exec(code: str, namespace: dict, name: str) -> None:
    with contextlib.redirect_stdout(io.StringIO()):
        exec(compile(code, name, "exec"), namespace)


def close_figures() -> None:
    import matplotlib.pyplot as plt

    plt.close("all")


@functools.cache
def prepared(notebook: str) -> dict[str, Prepared]:
    """Run ``notebook``'s needed given cells and its reference answers in order, once."""
    import matplotlib

    matplotlib.use("Agg")
    source = load_source(notebook)

    def is_test(c: dict) -> bool:
        return bool(c["nbgrader"].get("grade")) and not c["nbgrader"].get("solution")

    code = [c for c in source.cells if c["cell_type"] == "code"]
    tests = {c["nbgrader"].get("grade_id"): c["source"] for c in code if is_test(c)}
    runnable = [c for c in code if not is_test(c)]
    specs = [CellSpec(c["nbgrader"].get("grade_id", f"cell{i}"), c["source"],
                      "answer" if c["nbgrader"].get("solution") else "given") for i, c in enumerate(runnable)]
    # the visible checks read names too: a pseudo answer cell made of them keeps what they need
    probe = CellSpec("visible checks", "\n".join(visible_part(t) for t in tests.values()), "answer")
    keep = dict(zip((id(c) for c in runnable), needed_cells([*specs, probe], set())[:-1], strict=True))
    spec_of = dict(zip((id(c) for c in runnable), specs, strict=True))
    out: dict[str, Prepared] = {}
    pending: dict[str, Prepared] = {}
    namespace: dict = {"__name__": "__main__"}
    torch.manual_seed(0)
    for cell in code:
        grade_id = cell["nbgrader"].get("grade_id", "")
        if is_test(cell):
            item = grade_id.removeprefix("test_")
            if item in pending:
                pending[item].visible = visible_part(cell["source"])
                out[item] = pending.pop(item)
            continue
        spec = spec_of[id(cell)]
        if spec.kind == "answer" and grade_id in ITEMS:
            pending[grade_id] = Prepared(dict(namespace), [], spec.source, "")
        elif keep[id(cell)]:
            for waiting in pending.values():  # a given cell between an answer cell and its test cell
                waiting.between.append(spec.source)
        if keep[id(cell)]:
            try:
                quiet_exec(spec.source, namespace, spec.grade_id)
            except Exception:  # noqa: BLE001 - a given demo's error is tolerated, as in the notebook
                if spec.kind == "answer":
                    raise
    close_figures()
    return out


def run_visible(item: str, answer: str | None, seed: int, replace: dict | None = None) -> BaseException | None:
    """The exception the visible checks of ``item`` raise, if any, with ``answer`` as the item's answer cell
    (None: the reference's), then the names in ``replace`` put in (a bank variant)."""
    prep = prepared(ITEMS[item].notebook)[item]
    namespace = dict(prep.before)
    torch.manual_seed(seed)
    try:
        quiet_exec(prep.answer if answer is None else answer, namespace, f"answer {item}")
        namespace.update(replace or {})
        for code in prep.between:
            with contextlib.suppress(Exception):
                quiet_exec(code, namespace, "given")
        torch.manual_seed(seed)
        quiet_exec(prep.visible, namespace, f"test_{item}")
    except Exception as exc:  # noqa: BLE001 - any exception is a caught mistake
        return exc
    finally:
        close_figures()
    return None


def caught(item: str, fixture: Path, variant=None) -> tuple[bool, str]:
    """Whether the visible checks raise under every seed, for the student-written fixture and (a registered
    mistake) for the bank's variant, the reference with only that mistake; and what they said.

    Both must be caught: a fixture may differ from the reference in more than its mistake (a float mask, say)
    and be caught for that alone, while a student with only the mistake passes."""
    answer = fixture.read_text(encoding="utf-8")
    errors = [run_visible(item, answer, seed) for seed in SEEDS]
    if variant is not None:
        errors += [run_visible(item, None, seed, variant()) for seed in SEEDS]
    said = "; ".join(f"{type(e).__name__}: {str(e)[:160]}" for e in errors if e is not None)
    return all(e is not None for e in errors), said


# (item, mistake, student fixture, the bank's variant or None for an error fixture)
KNOWN = [(m.item, m.name, FIXTURES / "mistakes" / f"{m.item}__{m.name}.py", m.variant) for m in all_mistakes()]
KNOWN += [(h.item, h.name, FIXTURES / "errors" / f"{h.item}__{h.name}.py", None) for h in all_error_hints()]


def graded_items() -> list[str]:
    return [item.name for notebook in NOTEBOOKS for item in items_in(notebook)]


@pytest.mark.parametrize("item", graded_items())
def test_reference_passes_every_visible_check(item):
    """Control: the visible checks pass with the reference answers (so the test below can fail)."""
    assert item in prepared(ITEMS[item].notebook), f"no test cell test_{item} after the answer cell {item}"
    for seed in SEEDS:
        error = run_visible(item, None, seed)
        assert error is None, f"{item}: the reference fails its visible checks: {type(error).__name__}: {error}"


@pytest.mark.parametrize(("item", "name", "fixture", "variant"), KNOWN,
                         ids=[f"{i}__{n}" + ("" if v else "__error") for i, n, _, v in KNOWN])
def test_visible_checks_catch_the_known_mistake(item, name, fixture, variant):
    if not fixture.is_file():
        pytest.fail(f"{fixture.name} is missing (tests/test_mistake_bank.py requires one per mistake)")
    if item not in prepared(ITEMS[item].notebook):
        pytest.fail(f"no test cell test_{item} after the answer cell {item} (the control test says so too)")
    hit, said = caught(item, fixture, variant)
    if (item, name) in NOT_CAUGHT:
        assert not hit, f"{item}/{name} is caught now ({said}): remove it from NOT_CAUGHT"
    else:
        assert hit, (f"the visible checks of test_{item} pass with the known mistake {name}: hidden grading "
                     "punishes it, so a visible check should tell the student at home")


def test_allowlist_names_known_mistakes():
    known = {(item, name) for item, name, *_ in KNOWN}
    assert set(NOT_CAUGHT) <= known, set(NOT_CAUGHT) - known
    assert all(reason.strip() for reason in NOT_CAUGHT.values())


def coverage() -> dict[str, tuple[int, int]]:
    """Per notebook: (known mistakes, caught by the visible checks). For reports: ``python -m`` this file."""
    table: dict[str, list[int]] = {nb: [0, 0] for nb in NOTEBOOKS}
    for item, _, fixture, variant in KNOWN:
        table[ITEMS[item].notebook][0] += 1
        table[ITEMS[item].notebook][1] += fixture.is_file() and caught(item, fixture, variant)[0]
    return {nb: (n, c) for nb, (n, c) in table.items()}


if __name__ == "__main__":
    for item, name, fixture, variant in KNOWN:
        hit, said = caught(item, fixture, variant)
        if not hit:
            print(f"MISSED {item}/{name}")
        elif "-v" in sys.argv:
            print(f"caught {item}/{name}: {said[:300]}")
    for nb, (n, c) in coverage().items():
        print(f"{nb}: {n} known, {c} caught")


ALTERNATIVES = sorted((FIXTURES / "alternatives").glob("*.py"))
# Alternatives that hidden grading credits (it judges behaviour) while a visible check deliberately asks for
# what the notebook's text asks for: each with the reason. A listed one that passes fails as stale.
STRICTER_THAN_GRADING = {
    "CausalAttention__book_triu_mask": "the book's float triu buffer; the notebook asks for a boolean mask "
                                       "buffer, True = may attend (the course's convention)",
    "CausalAttention__functional_dropout_finfo": "F.dropout instead of the nn.Dropout module the spec asks for",
    "SelfAttention_v1__randn_init": "the visible check reproduces the book's printed numbers, which fixes "
                                    "torch.rand initialisation; grading loads the parameters",
    "transfer_weights__new_parameters": "replaces the Parameter objects; the notebook asks for a copy in place "
                                        "(an optimiser holding the old ones would train nothing)",
    "count_parameters__numpy_prod_of_shapes": "a NumPy integer; the notebook asks for a Python int, grading "
                                              "credits any integer (exercises/compare.py, ACCEPTED_KINDS)",
    "simple_self_attention__returns_a_list": "a list; the notebook asks for the tuple (context, weights), grading "
                                             "credits a list of the same length (exercises/compare.py, ACCEPTED_KINDS)",
}


@pytest.mark.parametrize("fixture", ALTERNATIVES, ids=[p.stem for p in ALTERNATIVES])
def test_does_a_correct_alternative_pass_the_visible_checks(fixture):
    """A correct answer written another way (full marks in hidden grading) must not fail a visible check."""
    item = fixture.stem.split("__")[0]
    errors = [run_visible(item, fixture.read_text(encoding="utf-8"), seed) for seed in SEEDS]
    if fixture.stem in STRICTER_THAN_GRADING:
        assert any(errors), f"{fixture.stem} passes the visible checks now: remove it from STRICTER_THAN_GRADING"
        return
    for error in errors:
        assert error is None, (f"{fixture.stem}: a correct alternative fails the visible checks of test_{item}: "
                               f"{type(error).__name__}: {str(error)[:300]}")


OVERSIZED = sorted((FIXTURES / "oversized").glob("*.py"))


@pytest.mark.parametrize("fixture", OVERSIZED, ids=[p.stem for p in OVERSIZED])
def test_do_the_visible_checks_refuse_one_full_mask_as_grading_does(fixture):
    """Right values, but one (n_q, n_k) mask built up front: grading forbids any tensor of n_q * n_k elements
    (``max_numel``), and so must the visible checks. The first edition's threshold, 2 * n_q * n_k, let it pass."""
    item = fixture.stem.split("__")[0]
    for seed in SEEDS:
        error = run_visible(item, fixture.read_text(encoding="utf-8"), seed)
        assert isinstance(error, AssertionError) and "256 * 256 elements" in str(error), (
            f"{fixture.stem}: the visible checks of test_{item} let a full (256, 256) mask pass: {error!r}")
