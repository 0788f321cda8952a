"""``check(name, globals())``: the hidden test of an nbgrader test cell, run inside the student's kernel.

It builds the item's cases from a fresh seed, runs them against the notebook's namespace and
against ``solutions``, and raises ``AssertionError`` with every failing case's message. This is the
same catalogue and the same comparison the pytest autograder uses; the autograder additionally
isolates the student's code in a worker process.
"""

from __future__ import annotations

import secrets
import traceback
from typing import Any

import torch

from autograder.worker.program import ProgramError
from exercises.catalogue import ITEMS
from exercises.judge import judge, reference_outputs, run_on
from exercises.mistakes import diagnose


def devices() -> list[str]:
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def check(name: str, namespace: dict[str, Any], seed: int | None = None) -> None:
    """Grade ``name`` from ``namespace`` on every device and dtype; raise AssertionError on any failure."""
    item = ITEMS[name]
    if name not in namespace:
        raise AssertionError(f"`{name}` is not defined: run its answer cell (and keep the name `{name}`)")
    seed = secrets.randbits(31) if seed is None else seed
    failures: list[str] = []
    for device in devices():
        for dtype in item.variants(device):
            for case in item.cases(seed, dtype):
                reference = reference_outputs(case, device, dtype)
                try:
                    torch.manual_seed(0)
                    student = run_on(namespace, case, device, dtype)
                except NotImplementedError:
                    raise
                except ProgramError as exc:
                    failures.append(f"[{device}-{dtype}] case {case.name}: {exc}")
                    continue
                except Exception as exc:  # noqa: BLE001 - the student's exception is the feedback
                    where = traceback.extract_tb(exc.__traceback__)[-1]
                    failures.append(f"[{device}-{dtype}] case {case.name}: {type(exc).__name__}: {exc} "
                                    f"(line {where.lineno})")
                    continue
                verdict = judge(case, student, reference, device)
                if not verdict.passed:
                    mistake = diagnose(name, case, student, device, dtype)
                    hint = f" -- likely mistake: {mistake}" if mistake else ""
                    failures.append(f"[{device}-{dtype}] {verdict.message}{hint}")
    if failures:
        shown = failures[:6] + ([f"... and {len(failures) - 6} more"] if len(failures) > 6 else [])
        raise AssertionError(f"{name}: {len(failures)} hidden check(s) failed (seed {seed}):\n  " + "\n  ".join(shown))
