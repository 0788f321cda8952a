"""The known mistakes (registered by the lesson modules in ``exercises/lessons/``): every mistake is caught and named.

For each mistake there is a fixture in ``tests/fixtures/mistakes/<item>__<mistake>.py``: the buggy
answer cell as a student would write it (student code, not the bank's variant). It is executed in a
namespace seeded from the reference package (so the item's dependencies are correct), run on every
case of its item (cpu, every dtype variant, two seeds) and judged like a submission: at least one
case must fail (no false pass) and, on some failing case, ``diagnose`` must name this mistake.
Mistakes that show as exceptions (``tests/fixtures/errors``) must be named by ``explain_error``.

Everything runs in-process (no workers). Reference and variant outputs are computed once per case.
"""

from __future__ import annotations

import functools
import importlib.util
import itertools
from pathlib import Path

import pytest
import torch

import solutions
from exercises import diagnosis as mistakes_module
from exercises.catalogue import ITEMS, NOTEBOOKS, Case
from exercises.compare import Outputs
from exercises.diagnosis import all_error_hints, all_mistakes, diagnose, explain_error, matching_mistakes
from exercises.judge import judge, reference_outputs, run_on
from exercises.mistakes import Mistake

REPO = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"
SEEDS = (0, 1)
DEVICE = "cpu"

MISTAKES = all_mistakes()
HINTS = all_error_hints()


def mistake_id(m: Mistake) -> str:
    return f"{m.item}__{m.name}"


def skip_absent_accelerator_seeding(mp: pytest.MonkeyPatch) -> None:
    """``torch.manual_seed`` also queues a seed for every absent accelerator, recording a stack trace each
    time (most of this module's run time on a CPU-only machine); absent devices need no seed."""
    for name, seed_all in (("cuda", "manual_seed_all"), ("xpu", "manual_seed_all"), ("mtia", "manual_seed_all"),
                           ("mps", "manual_seed")):
        backend = getattr(torch, name, None)
        if backend is not None and hasattr(backend, seed_all) and not backend.is_available():
            mp.setattr(backend, seed_all, lambda seed: None)


@pytest.fixture(scope="module", autouse=True)
def fast_and_memoised():
    """Each variant run once per case for the whole module (one thread: see conftest)."""
    memo: dict[tuple, Outputs | None] = {}
    original = mistakes_module.run_variant

    def run_variant(known, case, device, dtype):
        key = (known.item, known.name, id(case), device, dtype)
        if key not in memo:
            memo[key] = original(known, case, device, dtype)
        return memo[key]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(mistakes_module, "run_variant", run_variant)
        skip_absent_accelerator_seeding(mp)
        yield


@functools.cache
def graded_cases(item: str) -> list[tuple[str | None, Case, Outputs]]:
    """``(dtype, case, reference outputs)`` for every cpu case of ``item`` over SEEDS (kept alive: memo keys)."""
    out = []
    for seed in SEEDS:
        for dtype in ITEMS[item].variants(DEVICE):
            for case in ITEMS[item].cases(seed, dtype):
                out.append((dtype, case, reference_outputs(case, DEVICE, dtype)))
    return out


def run_student(namespace: dict, case: Case, dtype: str | None) -> Outputs | Exception:
    try:
        torch.manual_seed(0)  # as the worker and the kernel do
        return run_on(namespace, case, DEVICE, dtype)
    except Exception as exc:  # noqa: BLE001 - a raising case is a failing case
        return exc


def student_namespace(path: Path) -> dict:
    namespace = dict(vars(solutions))
    exec(compile(path.read_text(encoding="utf-8"), str(path), "exec"), namespace)
    return namespace


@functools.cache
def variant_results(m: Mistake) -> list[tuple[str | None, Case, Outputs, bool, frozenset[str]]]:
    """For each case: the variant's outputs, whether it passed, and the mistakes that match them."""
    results = []
    for dtype, case, reference in graded_cases(m.item):
        outputs = mistakes_module.run_variant(m, case, DEVICE, dtype)
        if outputs is None:
            continue  # the variant raises on this case (e.g. a shape error): nothing to name
        passed = judge(case, outputs, reference, DEVICE).passed
        named = frozenset() if passed else frozenset(
            x.name for x in matching_mistakes(m.item, case, outputs, DEVICE, dtype, reference=reference))
        results.append((dtype, case, outputs, passed, named))
    return results


# --- the bank itself ----------------------------------------------------------------------------------


def test_bank_is_large_and_covers_every_lesson():
    assert len(MISTAKES) >= 45
    assert len({mistake_id(m) for m in MISTAKES}) == len(MISTAKES), "mistake names repeat within an item"
    assert {m.item for m in MISTAKES} <= set(ITEMS)
    assert {ITEMS[m.item].notebook for m in MISTAKES} == set(NOTEBOOKS)
    for m in MISTAKES:
        assert m.diagnosis and m.hint and m.name.isidentifier(), m
        others = {x.name for x in MISTAKES if x.item == m.item}
        assert set(m.same_as) <= others - {m.name}, f"{mistake_id(m)}: same_as names an unknown mistake"
    for m in HINTS:
        assert m.item in ITEMS and m.diagnosis and m.hint


def test_every_mistake_has_a_student_fixture():
    fixtures = {p.stem for p in (FIXTURES / "mistakes").glob("*.py")}
    assert fixtures == {mistake_id(m) for m in MISTAKES}
    errors = {p.stem for p in (FIXTURES / "errors").glob("*.py")}
    assert errors == {f"{h.item}__{h.name}" for h in HINTS}


@pytest.mark.parametrize("m", MISTAKES, ids=mistake_id)
def test_variant_fails_and_names_itself(m: Mistake):
    """The bank's own variant is not the reference (fails a case) and is recognised where it fails."""
    results = variant_results(m)
    failing = [r for r in results if not r[3]]
    assert failing, f"{mistake_id(m)}: the variant passes every case (or raises on all of them)"
    assert any(m.name in named for *_, named in failing), f"{mistake_id(m)}: never recognised on its own outputs"


@pytest.mark.parametrize("m", MISTAKES, ids=mistake_id)
def test_student_fixture_is_caught_and_named(m: Mistake):
    namespace = student_namespace(FIXTURES / "mistakes" / f"{mistake_id(m)}.py")
    failed, named, told = 0, 0, []
    for dtype, case, reference in graded_cases(m.item):
        student = run_student(namespace, case, dtype)
        if isinstance(student, Exception):
            failed += 1
            continue
        if judge(case, student, reference, DEVICE).passed:
            continue
        failed += 1
        text = diagnose(m.item, case, student, DEVICE, dtype, reference=reference)
        told.append(f"{case.name}[{dtype}]: {text}")
        named += text is not None and f"({m.name})" in text
    assert failed, f"{mistake_id(m)}: the buggy answer passes every case (a false pass)"
    assert named, f"{mistake_id(m)}: no failing case names the mistake; diagnoses were:\n" + "\n".join(told)


@pytest.mark.parametrize("hint", HINTS, ids=lambda h: f"{h.item}__{h.name}")
def test_error_fixture_is_explained(hint):
    namespace = student_namespace(FIXTURES / "errors" / f"{hint.item}__{hint.name}.py")
    errors = []
    for dtype, case, _ in graded_cases(hint.item):
        result = run_student(namespace, case, dtype)
        if isinstance(result, Exception):
            errors.append(f"{type(result).__name__}: {result}")
    assert errors, "the fixture raises on no case"
    assert any(f"({hint.name})" in (explain_error(hint.item, e) or "") for e in errors), errors[:3]


def test_error_hints_do_not_fire_on_other_items():
    assert explain_error("softmax_stable", "The size of tensor a (5) must match the size of tensor b (8)") is None


def test_indistinguishable_pairs_are_declared():
    """Two mistakes whose outputs coincide on every case they fail cannot be told apart: ``same_as`` says so."""
    by_item: dict[str, list[Mistake]] = {}
    for m in MISTAKES:
        by_item.setdefault(m.item, []).append(m)
    found, declared = set(), set()
    for item, ms in by_item.items():
        always: dict[str, frozenset[str]] = {}
        for m in ms:
            sets = [named for *_, passed, named in variant_results(m) if not passed]
            always[m.name] = frozenset.intersection(*sets) - {m.name}
            declared |= {(item, *sorted((m.name, other))) for other in m.same_as}
        for a, b in itertools.combinations(sorted(always), 2):
            if b in always[a] and a in always[b]:
                found.add((item, a, b))
    assert found == declared


def test_diagnosis_names_several_only_when_they_coincide():
    """A message names the first match and then the others that give the same outputs on that case."""
    m = next(x for x in MISTAKES if x.item == "count_parameters" and x.name == "counts_frozen_parameters")
    dtype, case, outputs, passed, named = next(r for r in variant_results(m) if not r[3])
    text = diagnose(m.item, case, outputs, DEVICE, dtype)
    assert "(counts_frozen_parameters)" in text and "(counts_state_dict)" in text and ". Or, with the same" in text


# --- docs/CHECKS.md ---------------------------------------------------------------------------------------


def test_checks_doc_is_up_to_date():
    spec = importlib.util.spec_from_file_location("mistake_catalogue", REPO / "scripts" / "mistake_catalogue.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    committed = (REPO / "docs" / "CHECKS.md").read_text(encoding="utf-8")
    assert committed == module.render(), "docs/CHECKS.md is stale: run python scripts/mistake_catalogue.py"


def test_undetected_mistakes_really_pass():
    """``UNDETECTED`` lists what passes today; when a new case catches one, move it into the bank."""
    from exercises.mistake_bank import UNDETECTED, undetected_variants

    variants = undetected_variants()
    assert set(variants) == {(item, name) for item, name, _ in UNDETECTED}
    for (item, name), replace in variants.items():
        namespace = {**vars(solutions), **replace}
        for dtype, case, reference in graded_cases(item):
            outputs = run_student(namespace, case, dtype)
            assert not isinstance(outputs, Exception), f"{item}/{name} raises on {case.name}: {outputs}"
            assert judge(case, outputs, reference, DEVICE).passed, f"{item}/{name} is caught by {case.name}: " \
                "move it from UNDETECTED into the bank"


@pytest.mark.slow
@pytest.mark.parametrize("round_", [0, 1, 2])
def test_are_mistakes_named_through_the_sandboxed_grader(tmp_path, round_, warm_pool):
    """End to end: submissions with one known mistake in every item, graded in the worker; each item
    loses points and its message names the mistake of its fixture."""
    from grader_fixtures import write_submission

    from autograder.grading import grade_notebook
    from autograder.runner import default_bwrap
    from autograder.sandbox import Limits
    from exercises.catalogue import NOTEBOOKS

    by_item: dict[str, list[Path]] = {}
    for path in sorted((FIXTURES / "mistakes").glob("*.py")):
        by_item.setdefault(path.stem.split("__")[0], []).append(path)
    chosen = {item: paths[round_ % len(paths)] for item, paths in by_item.items()}
    for notebook in NOTEBOOKS:
        overrides = {item: p.read_text() for item, p in chosen.items() if ITEMS[item].notebook == notebook}
        student = write_submission(tmp_path / notebook.split("_")[0], notebook, overrides)
        result = grade_notebook(notebook, student, 200 + round_, ["cpu"], Limits(call_timeout=30), default_bwrap(),
                                pool=warm_pool)
        for item in overrides:
            rows = [r for r in result.outcomes if r.item == item and r.device == "cpu"]
            name = chosen[item].stem.split("__")[1]
            assert sum(r.score for r in rows) < sum(r.max_score for r in rows), f"{item}/{name} earned full marks"
            named = [r for r in rows if r.mistakes]
            assert all(any(f"({name})" in text for text in r.mistakes) for r in named), \
                f"{item}/{name} named as {[r.mistakes for r in named]}"
            # named, or, where the item's code calls another item that is wrong here too and the regrade with
            # the reference in its place cannot run (a stand-in has no graph), said to be not separable from it
            broken = [d for d in ITEMS[item].depends_on if d in overrides]
            apart = [r for r in rows if any(r.message.startswith(f"could not be judged apart from `{d}`")
                                            for d in broken)]
            assert any(f"({name})" in r.message for r in rows) or apart, f"{item}/{name} not named: {rows[0].message}"
