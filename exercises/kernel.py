"""``check(name, globals())``: the hidden test of an nbgrader test cell, run inside the student's kernel.

It builds the item's cases from a fresh seed, runs them against the notebook's namespace and
against ``solutions``, and scores them exactly as the pytest autograder does: the item's points
split over devices and dtype variants, each share times the fraction of its cases passed.

- every case passes: returns ``None`` (nbgrader then gives the cell's full points);
- some pass: prints what failed (to stdout) and returns the partial score, which nbgrader reads
  from the cell's result as partial credit;
- none pass: raises ``AssertionError`` with what failed.
Warnings raised by student code are silenced here: nbgrader scores any stderr output as zero.
"""

from __future__ import annotations

import inspect
import secrets
import textwrap
import traceback
import warnings
from typing import Any

import torch

from autograder.worker.program import ProgramError
from exercises.catalogue import ITEMS, available_devices
from exercises.judge import judge, reference_outputs, run_on
from exercises.mistakes import diagnose, explain_error
from exercises.rules import forbidden_message, recording


def item_points(name: str) -> float | None:
    """The item's points from its test cell in ``source/`` (one source of truth), if the course is here."""
    from autograder.intake import load_source

    try:
        return load_source(ITEMS[name].notebook).points.get(f"test_{name}")
    except (OSError, ValueError):
        return None


def _static_uses(obj: Any) -> set[str]:
    """Forbidden built-ins named in the source of the student's function or class (IPython keeps cell sources)."""
    from autograder.intake import static_forbidden_calls

    try:
        return static_forbidden_calls(textwrap.dedent(inspect.getsource(obj)))
    except (OSError, TypeError):
        return set()


def _run_case(name: str, namespace: dict[str, Any], case, device: str, dtype: str | None,
              used: set[str]) -> tuple[bool, str]:
    reference = reference_outputs(case, device, dtype)
    try:
        with warnings.catch_warnings(), recording(used):
            warnings.simplefilter("ignore")
            torch.manual_seed(0)
            student = run_on(namespace, case, device, dtype)
    except NotImplementedError:
        raise
    except ProgramError as exc:
        return False, f"case {case.name}: {exc}"
    except Exception as exc:  # noqa: BLE001 - the student's exception is the feedback
        where = traceback.extract_tb(exc.__traceback__)[-1]
        text = f"{type(exc).__name__}: {exc}"
        hint = explain_error(name, text)
        suffix = f" -- likely mistake: {hint}" if hint else ""
        return False, f"case {case.name}: {text} (line {where.lineno}){suffix}"
    verdict = judge(case, student, reference, device)
    if verdict.passed:
        return True, ""
    mistake = diagnose(name, case, student, device, dtype, reference=reference)
    return False, verdict.message + (f" -- likely mistake: {mistake}" if mistake else "")


def check(name: str, namespace: dict[str, Any], seed: int | None = None) -> float | None:
    """Grade ``name`` from ``namespace`` on every device and dtype; see the module docstring."""
    item = ITEMS[name]
    if name not in namespace:
        raise AssertionError(f"`{name}` is not defined: run its answer cell (and keep the name `{name}`)")
    seed = secrets.randbits(31) if seed is None else seed
    failures: list[str] = []
    fraction = 0.0
    devs = available_devices()
    used: set[str] = set()
    for device in devs:
        variants = item.variants(device)
        for dtype in variants:
            cases = item.cases(seed, dtype)
            passed = 0
            for case in cases:
                ok, message = _run_case(name, namespace, case, device, dtype, used)
                passed += ok
                if not ok:
                    failures.append(f"[{device}-{dtype}] {message}")
            fraction += item.share(1.0, device, devs) * passed / len(cases)
    shortcut = forbidden_message(name, item.forbidden, _static_uses(namespace[name]), used) if item.forbidden else None
    if shortcut:
        raise AssertionError(shortcut)
    if not failures:
        return None
    shown = failures[:6] + ([f"... and {len(failures) - 6} more"] if len(failures) > 6 else [])
    report = f"{name}: {len(failures)} hidden check(s) failed (seed {seed}):\n  " + "\n  ".join(shown)
    points = item_points(name)
    if fraction == 0 or points is None:
        raise AssertionError(report)
    print(report)
    return round(points * fraction, 6)
