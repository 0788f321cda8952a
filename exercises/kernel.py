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

import contextlib
import inspect
import linecache
import secrets
import sys
import textwrap
import threading
import traceback
import warnings
from typing import Any

import torch

from exercises import program as program_module
from exercises.catalogue import ITEMS, available_devices
from exercises.compare import Outputs
from exercises.diagnosis import diagnose, explain_error
from exercises.i18n import kernel_language, language, tr, translate_made
from exercises.judge import judge, reference_outputs
from exercises.op_guard import OpGuard, install_tripwires
from exercises.program import ProgramError, compute_dtype, run_program, serialise_outputs
from exercises.rules import case_guard, shortcut_message, too_big
from exercises.scoring import CaseOutcome, Status, score_variant
from exercises.worker_messages import PROGRAM_ERRORS, WORKER_ERRORS


class CourseNotFound(RuntimeError):
    """The course's ``source/`` could not be read: the installation's fault, and the message says so."""


def item_points(name: str) -> float:
    """The item's points from its test cell in ``source/`` (one source of truth)."""
    from exercises.source import load_source

    try:
        points = load_source(ITEMS[name].notebook).points.get(f"test_{name}")
    except (OSError, ValueError) as exc:
        raise CourseNotFound(tr("the points of `{name}` could not be read from the course's source/ ({why}), so "
                                "partial credit cannot be computed: this is a fault of the course's installation, "
                                "not of your answer; tell your instructor").format(name=name, why=exc)) from exc
    if points is None:
        raise CourseNotFound(tr("`{name}` has no test cell `test_{name}` with points in the course's source/").format(
            name=name))
    return points


def _functions_of(obj: Any) -> list[Any]:
    """The plain functions behind ``obj``: itself, or a class's methods, static/class methods and properties."""
    if inspect.isfunction(obj):
        return [obj]
    found = []
    for value in vars(obj).values() if inspect.isclass(obj) else []:
        for candidate in (value, getattr(value, "__func__", None), getattr(value, "fget", None)):
            if inspect.isfunction(candidate):
                found.append(candidate)
    return found


def cell_source(obj: Any) -> str | None:
    """The whole text of the notebook cell that defined ``obj``, as the pytest grader reads the answer cell.

    IPython keeps every cell in ``linecache`` under the file name its code objects carry; a class has no
    such name itself (``inspect.getsource`` fails on a class defined in a notebook), its methods do.
    """
    for function in _functions_of(obj):
        lines = linecache.getlines(function.__code__.co_filename)
        if lines:
            return "".join(lines)
    try:
        return textwrap.dedent(inspect.getsource(obj))
    except (OSError, TypeError):
        return None


# Threads of the kernel itself (Jupyter's, the test runner's) may be alive during a graded call; any other thread
# is the student's (see ``op_guard.OpGuard``). A student can dress a thread up as one of these: the in-kernel
# check runs in the student's own process and is no stronger than that process (see docs/ARCHITECTURE.md).
HOST_MODULES = ("ipykernel", "IPython", "zmq", "jupyter_client", "tornado", "traitlets", "_pytest", "pytest",
                "execnet", "xdist", "nbclient", "nbconvert", "nbgrader")


def _is_host_module(name: object) -> bool:
    return isinstance(name, str) and name.split(".")[0] in HOST_MODULES


def host_threads() -> frozenset[int]:
    """Idents of the live threads that belong to the kernel or the test runner, not to the student's code: a
    ``threading.Thread`` by its class or target's module, any thread (``_thread``'s too: xdist's reader is one)
    by the module of the function at the bottom of its stack."""
    found = set()
    for thread in threading.enumerate():
        target = getattr(thread, "_target", None)
        modules = (type(thread).__module__, getattr(target, "__module__", None) or "")
        if any(_is_host_module(module) for module in modules) and thread.ident is not None:
            found.add(thread.ident)
    me = threading.get_ident()
    for ident, frame in sys._current_frames().items():
        if ident == me or ident in found:
            continue
        while frame.f_back is not None:
            frame = frame.f_back
        if _is_host_module(frame.f_globals.get("__name__")):
            found.add(ident)
    return frozenset(found)


_READY: list[bool] = []


def _prepare_monitor() -> None:
    """Once per kernel: the monitor's tripwires and audit hook (as the worker sets them before student code)."""
    if not _READY:
        install_tripwires(trusted=(program_module,))
        _READY.append(True)


_REPORT = OpGuard.report  # the class's own method, taken on import: one the code sets later is not consulted


def _run_case(name: str, namespace: dict[str, Any], case, device: str, dtype: str | None,
              reports: list[dict[str, Any] | None]) -> tuple[bool, str]:
    reference = reference_outputs(case, device, dtype)
    watch = case_guard(ITEMS[name], case)
    guard = OpGuard(case.max_numel, watch["span"], allow=host_threads()) if watch is not None else None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.manual_seed(0)
            try:
                with guard if guard is not None else contextlib.nullcontext():  # the grader's monitor, as in the worker
                    raw = run_program(case.program, namespace, case.inputs, device, dtype)
            finally:
                reports.append(_REPORT(guard) if guard is not None else None)
            student = Outputs(*serialise_outputs(raw, compute_dtype(dtype, case.inputs)))
    except NotImplementedError:
        raise
    except ProgramError as exc:
        return False, tr("case {case}: ").format(case=case.name) + translate_made(str(exc), PROGRAM_ERRORS)
    except Exception as exc:  # noqa: BLE001 - the student's exception is the feedback
        where = traceback.extract_tb(exc.__traceback__)[-1]
        text = f"{type(exc).__name__}: {exc}"
        hint = explain_error(name, text)
        suffix = tr(" -- likely mistake: {hint}").format(hint=hint) if hint else ""
        shown = f"{type(exc).__name__}: {translate_made(str(exc), WORKER_ERRORS)}"
        return False, tr("case {case}: ").format(case=case.name) + tr("{error} (line {line})").format(
            error=shown, line=where.lineno) + suffix
    oversized = too_big(name, reports[-1], case.max_numel)
    if oversized:
        return False, tr("case {case}: ").format(case=case.name) + oversized
    verdict = judge(case, student, reference, device)
    if verdict.passed:
        return True, ""
    mistake = diagnose(name, case, student, device, dtype, reference=reference)
    return False, verdict.message + (tr(" -- likely mistake: {hint}").format(hint=mistake) if mistake else "")


def check(name: str, namespace: dict[str, Any], seed: int | None = None, lang: str | None = None) -> float | None:
    """Grade ``name`` from ``namespace`` on every device and dtype; see the module docstring.

    ``lang``: the language of what it says; default: the notebook's edition as the kernel can tell it
    (``exercises.i18n.kernel_language``: ``SELFATTN_LANG``, else the notebook's path, else English).
    """
    with language(lang or kernel_language(namespace, ITEMS[name].notebook if name in ITEMS else None)):
        return _check(name, namespace, seed)


def _check(name: str, namespace: dict[str, Any], seed: int | None) -> float | None:
    item = ITEMS[name]
    if name not in namespace:
        raise AssertionError(tr("`{name}` is not defined: run its answer cell (and keep the name `{name}`)").format(
            name=name))
    seed = secrets.randbits(31) if seed is None else seed
    _prepare_monitor()
    failures: list[str] = []
    devs = available_devices()
    reports: list[dict[str, Any] | None] = []  # the operation monitor's, one per case that ran
    cases_seen = []
    variants: list[tuple[float, list[CaseOutcome]]] = []  # (share of the item, cases) per device and dtype
    for device in devs:
        for dtype in item.variants(device):
            outcomes = []
            for case in item.cases(seed, dtype):
                cases_seen.append(case)
                ok, message = _run_case(name, namespace, case, device, dtype, reports)
                outcomes.append(CaseOutcome(case.name, Status.PASSED if ok else Status.FAILED, message))
                if not ok:
                    failures.append(f"[{device}-{dtype}] {message}")
            variants.append((item.share(1.0, device, devs), outcomes))
    shortcut = shortcut_message(name, item.forbidden, cases_seen, reports, cell_source(namespace[name]) or "")
    # the pytest grader's scoring, with the item's points as 1: the fraction of them earned
    fraction = sum(score_variant(share, outcomes, shortcut).score for share, outcomes in variants)
    if shortcut:
        raise AssertionError(shortcut)
    if not failures:
        return None
    shown = failures[:6] + ([tr("... and {count} more").format(count=len(failures) - 6)] if len(failures) > 6 else [])
    report = tr("{name}: {count} hidden check(s) failed (seed {seed}):").format(
        name=name, count=len(failures), seed=seed) + "\n  " + "\n  ".join(shown)
    if fraction == 0:
        raise AssertionError(report)
    points = item_points(name)  # raises CourseNotFound, naming the cause, rather than scoring zero unexplained
    print(report)
    return round(points * fraction, 6)
