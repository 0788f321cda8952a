"""Grade one notebook of one submission: build the calls, run them in a worker, judge every case.

Scoring: an item's points (from its test cell in ``source/``) are split equally over the devices
exercised, then over its dtype variants; a variant earns its share times the fraction of cases
passed. A device that is not present is reported as ``skipped`` and counts for nothing.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from autograder.intake import IntakeError, PreparedNotebook, notebook_language_at, prepare, read_student_notebook
from autograder.needed import needed_cells, program_names
from autograder.pool import WorkerPool
from autograder.runner import CallResult, CallSpec, run_calls
from autograder.sandbox import Limits
from exercises.catalogue import Case, Item, available_devices, items_in
from exercises.diagnosis import diagnose, explain_error
from exercises.i18n import LANGUAGES, language, tr, translate_made
from exercises.judge import judge, reference_outputs
from exercises.rules import case_guard, shortcut_message, too_big
from exercises.scoring import CaseOutcome, Status, score_variant
from exercises.source import load_source
from exercises.worker_messages import PROGRAM_ERRORS, WORKER_ERRORS

GPU_NOT_EXERCISED = "GPU not exercised: no CUDA device on the grading machine"
GPU_NOT_ASKED = "GPU not exercised: cuda was left out of the devices to grade on (--device)"


def gpu_not_exercised(cuda_present: bool | None = None) -> str:
    """Why the cuda rows were not graded: no GPU here, or the run asked for other devices only."""
    if cuda_present is None:
        cuda_present = "cuda" in available_devices()
    return tr(GPU_NOT_ASKED) if cuda_present else tr(GPU_NOT_EXERCISED)


@dataclass
class TestOutcome:
    """One row of the report: an item on one device in one dtype variant."""

    __test__ = False  # not a pytest test class, despite the name

    item: str
    notebook: str
    device: str
    variant: str | None
    status: str
    score: float
    max_score: float
    message: str = ""
    cases_passed: int = 0
    cases_total: int = 0
    mistakes: list[str] = field(default_factory=list)
    forbidden: bool = False  # lost to a forbidden built-in (never re-graded with stand-ins)

    @property
    def name(self) -> str:
        return f"{self.item}[{self.device}-{self.variant}]" if self.variant else f"{self.item}[{self.device}]"


@dataclass
class NotebookResult:
    notebook: str
    outcomes: list[TestOutcome]
    notes: list[str]
    isolation: str
    seconds: float
    output: str = ""
    lang: str = "en"  # the language its messages were made in


def item_points(item: Item, points: dict[str, float]) -> float:
    return points.get(f"test_{item.name}", 0.0)


def _skipped(items: list[Item], notebook: str) -> list[TestOutcome]:
    reason = gpu_not_exercised()
    return [TestOutcome(item.name, notebook, "cuda", None, "skipped", 0.0, 0.0, reason) for item in items]


def _failed_everywhere(items: list[Item], notebook: str, points: dict[str, float], devices: list[str],
                       status: str, message: str) -> list[TestOutcome]:
    outcomes = []
    for item in items:
        for device in devices:
            variants = item.variants(device)
            share = item.share(item_points(item, points), device, devices)
            outcomes += [TestOutcome(item.name, notebook, device, v, status, 0.0, share, message) for v in variants]
    return outcomes


def _call_problem(item: Item, result: CallResult, prepared: PreparedNotebook) -> tuple[str, str]:
    """(status, message) for a call that did not return outputs."""
    error = result.error or {}
    where = f" ({error['where']})" if error.get("where") else ""
    if result.status == "timeout":
        return "timeout", error.get("message", tr("timed out"))
    if result.status in ("crashed", "missing", "harness"):
        return "error", error.get("message", tr("the worker died"))
    if error.get("type") == "NotImplementedError":
        return "error", _not_implemented(item.name)
    if result.status == "program" and item.name in prepared.cell_errors:
        return "error", _definition_problem(item, prepared)
    if result.status == "program":
        cause = prepared.syntax_errors.get(item.name)
        if item.name in prepared.missing_answers:
            cause = tr("the answer cell `{name}` is missing from the submission").format(name=item.name)
        return "error", (f"{cause}; " if cause else "") + translate_made(error.get("message", ""), PROGRAM_ERRORS)
    text = f"{error.get('type', 'Exception')}: {error.get('message', '')}"
    shown = f"{error.get('type', 'Exception')}: {translate_made(error.get('message', ''), WORKER_ERRORS)}"
    return "error", _with_hint(item.name, text, f"{shown}{where}")


def _not_implemented(name: str) -> str:
    return tr("not implemented: the answer cell `{name}` still raises NotImplementedError; replace the "
              "`raise NotImplementedError(...)` line with your code").format(name=name)


def _unanswered_paste(item: Item, prepared: PreparedNotebook) -> tuple[str, str] | None:
    """(missing name, the cell meant to define it) when ``item``'s cell failed on a name it builds on (one of
    its ``depends_on``, an earlier lesson's answer) whose paste cell is still unanswered (NotImplementedError)."""
    error = prepared.cell_errors.get(item.name, {})
    missing = re.search(r"name '(\w+)' is not defined", error.get("message", ""))
    if error.get("type") != "NameError" or not missing or missing.group(1) not in item.depends_on:
        return None
    name = missing.group(1)
    defines = re.compile(rf"^\s*(?:class|def)\s+{re.escape(name)}\b", re.M)
    snake = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()  # MultiHeadAttention -> multi_head_attention
    unanswered = [gid for gid, other in prepared.cell_errors.items() if other.get("type") == "NotImplementedError"]
    for gid in unanswered:
        if defines.search(prepared.answer_sources.get(gid, "")) or gid.startswith(snake):
            return name, gid
    return None


def _definition_problem(item: Item, prepared: PreparedNotebook) -> str:
    """What to fix when ``item`` is not defined because its own answer cell raised when it ran."""
    name = item.name
    error = prepared.cell_errors[name]
    if error.get("type") == "NotImplementedError":
        return _not_implemented(name)
    paste = _unanswered_paste(item, prepared)
    if paste:
        return tr("not implemented: the answer cell `{name}` needs `{needed}`, which the cell `{cell}` defines once "
                  "you paste your answer from the earlier lesson there (it still raises NotImplementedError)").format(
            name=name, needed=paste[0], cell=paste[1])
    text = f"{error.get('type', 'Exception')}: {error.get('message', '')}"
    return _with_hint(name, text, tr("the answer cell `{name}` raised {error} when it ran").format(name=name,
                                                                                                   error=text))


def _with_hint(name: str, error_text: str, message: str) -> str:
    """``message`` plus the known slip behind ``error_text`` (an item's error hint, or a device fault), if any."""
    hint = explain_error(name, error_text) or device_hint(error_text)
    return message + (tr(" -- likely mistake: {hint}").format(hint=hint) if hint else "")


DEVICE_FAULT = re.compile(r"Expected all tensors to be on the same device|expected .*device|device type cuda|"
                          r"found at least two devices|is on cpu, but expected|Input type \(.*\) and weight type")


def device_hint(error_text: str) -> str | None:
    """The GPU-specific fault behind a device-mismatch error: a tensor made on the CPU inside the code."""
    if DEVICE_FAULT.search(error_text):
        return tr("a tensor created inside your code is on the CPU while the inputs are on the GPU: register it as "
                  "a buffer (self.register_buffer) so .to(device) moves it, or create it with device=x.device")
    return None


def grade_notebook(notebook: str, student_path: Path | None, seed: int, devices: list[str], limits: Limits,
                   use_bwrap: str | None, source_dir: Path | None = None, pool: WorkerPool | None = None,
                   references: ReferenceCache | None = None, all_cells: bool = False,
                   lang: str = "auto") -> NotebookResult:
    """Grade every item of ``notebook`` found at ``student_path`` (None: not submitted).

    ``pool``: fork the workers from warm ones; ``references``: the reference outputs of a batch (one
    seed), shared by its submissions; ``all_cells``: run the lesson's demos too, not only the given
    cells the graded code needs (``autograder/needed.py``); ``lang``: the language of the rows' messages,
    ``auto`` for the student's notebook's own (its edition, ``intake.notebook_language_at``).
    """
    chosen = lang if lang in LANGUAGES else notebook_language_at(student_path)
    with language(chosen):  # every message made while grading this notebook, in this thread, speaks it
        result = _grade_notebook(notebook, student_path, seed, devices, limits, use_bwrap, source_dir, pool,
                                 references, all_cells)
    result.lang = chosen
    return result


def _grade_notebook(notebook: str, student_path: Path | None, seed: int, devices: list[str], limits: Limits,
                    use_bwrap: str | None, source_dir: Path | None, pool: WorkerPool | None,
                    references: ReferenceCache | None, all_cells: bool) -> NotebookResult:
    started = time.monotonic()
    items = items_in(notebook)
    source = load_source(notebook, source_dir) if source_dir else load_source(notebook)
    skipped = [] if "cuda" in devices else _skipped(items, notebook)
    if student_path is None:
        outcomes = _failed_everywhere(items, notebook, source.points, devices, "failed",
                                      tr("{notebook} was not found in the submission").format(notebook=notebook))
        return NotebookResult(notebook, outcomes + skipped, [], "none", time.monotonic() - started)
    try:
        prepared = prepare(source, read_student_notebook(student_path))
    except IntakeError as exc:
        outcomes = _failed_everywhere(items, notebook, source.points, devices, "error", str(exc))
        return NotebookResult(notebook, outcomes + skipped, [str(exc)], "none", time.monotonic() - started)

    plan, calls = build_calls(items, devices, seed)
    if not all_cells:
        keep = needed_cells(prepared.cells, program_names([c.program for c in calls]))
        prepared.cells = [cell for cell, kept in zip(prepared.cells, keep, strict=True) if kept]
    references = references if references is not None else ReferenceCache()
    prefetch = threading.Thread(target=references.fill, args=(plan,), daemon=True)
    prefetch.start()  # the reference outputs are computed here while the worker runs the student's code
    run = run_calls(prepared.cells, calls, limits, use_bwrap, pool)
    prefetch.join()
    notes = list(prepared.notes) + run.notes
    for spec, cell in zip(prepared.cells, run.cells, strict=True):
        if cell.status in ("timeout", "crashed"):
            notes.append(tr("cell `{cell}` {problem}").format(cell=spec.grade_id,
                                                             problem=cell.error.get("message", cell.status)))
        elif cell.status == "error" and spec.kind == "answer":
            err = cell.error
            prepared.cell_errors[spec.grade_id] = err
            notes.append(tr("answer cell `{cell}` raised {type}: {message}").format(
                cell=spec.grade_id, type=err.get("type"), message=err.get("message", "")[:200]))

    outcomes = judge_run(items, notebook, devices, plan, run.calls, source.points, prepared, references)
    retried = _isolate_failures(items, notebook, devices, plan, calls, outcomes, source.points, prepared, references,
                                limits, use_bwrap, pool)
    return NotebookResult(notebook, retried + skipped, notes, run.isolation, time.monotonic() - started,
                          run.output)


Plan = list[tuple[Item, str, "str | None", Case, int]]  # (item, device, dtype, case, call id) per call


def build_calls(items: list[Item], devices: list[str], seed: int) -> tuple[Plan, list[CallSpec]]:
    """Every case of every item, on every device and in every dtype variant: what each call is, and the calls."""
    plan: Plan = []
    calls: list[CallSpec] = []
    for item in items:
        for device in devices:
            for dtype in item.variants(device):
                for case in item.cases(seed, dtype):
                    call_id = len(calls)
                    calls.append(CallSpec(call_id, case.program, case.inputs, device, dtype, group=item.name,
                                          guard=case_guard(item, case)))
                    plan.append((item, device, dtype, case, call_id))
    return plan, calls


class ReferenceCache(dict):
    """The reference's outputs per (item, case, device, dtype), each computed once.

    One cache serves one seed: a notebook's grading (an item graded again with stand-ins reuses them),
    or a whole batch, whose submissions all get the same inputs (``GradingSession``).
    """

    def fill(self, plan: Plan) -> None:
        """Compute every call's reference outputs now (in a thread of its own while a worker runs)."""
        for item, device, dtype, case, _call_id in plan:
            try:
                self.get_for(item.name, case, device, dtype)
            except Exception:  # noqa: BLE001 - judging computes it again and reports the failure where it belongs
                continue

    def get_for(self, item: str, case: Case, device: str, dtype: str | None):
        key = (item, case.name, device, dtype)
        if key not in self:
            self[key] = reference_outputs(case, device, dtype)
        return self[key]


def judge_run(items: list[Item], notebook: str, devices: list[str], plan: Plan, results: dict[int, CallResult],
              points: dict[str, float], prepared: PreparedNotebook,
              references: ReferenceCache | None = None) -> list[TestOutcome]:
    """Judge every call of a finished run against the reference: one outcome per item, device and variant."""
    references = references if references is not None else ReferenceCache()
    outcomes: list[TestOutcome] = []
    for item in items:
        for device in devices:
            variants = item.variants(device)
            share = item.share(item_points(item, points), device, devices)
            for dtype in variants:
                rows = [(cid, case, results[cid]) for it, dev, dt, case, cid in plan
                        if it is item and dev == device and dt == dtype and cid in results]
                outcomes.append(_judge_variant(item, notebook, device, dtype, rows, share, prepared, references))
    return outcomes


def plan_regrades(items: list[Item], outcomes: list[TestOutcome], missing_answers: set[str]) -> dict[str, list[str]]:
    """Which failed items to grade again, and with which of their dependencies replaced by stand-ins.

    A dependency counts as failed when its own outcome on that device is not ``passed``, or when it is
    graded in another notebook (``CausalAttention`` pasted into lesson 5). Items that timed out, broke
    the forbidden-call rule or whose answer cell is missing are not graded again.
    """
    from exercises.catalogue import ITEMS

    status = {(o.item, o.device, o.variant): o.status for o in outcomes}
    local = {item.name for item in items}
    retry: dict[str, list[str]] = {}
    for item in items:
        if not item.depends_on or item.name in missing_answers:
            continue
        mine = [o for o in outcomes if o.item == item.name and o.status != Status.PASSED]
        if not mine or any(o.status == Status.TIMEOUT or o.forbidden for o in mine):
            continue
        broken = [d for d in item.depends_on if d not in local or any(
            status.get((d, o.device, v)) != Status.PASSED for o in mine for v in ITEMS[d].variants(o.device))]
        if broken:
            retry[item.name] = broken
    return retry


def merge_regrades(outcomes: list[TestOutcome], again: list[TestOutcome],
                   retry: dict[str, list[str]]) -> list[TestOutcome]:
    """The rows after re-grading: a row that passes with stand-ins earns its points, saying what to fix;
    one that still fails keeps its score and says what is wrong with the dependency out of the way."""
    again_by_key = {(o.item, o.device, o.variant): o for o in again}
    result = []
    for o in outcomes:
        other = again_by_key.get((o.item, o.device, o.variant))
        if o.status == Status.PASSED or other is None:
            result.append(o)
            continue
        names = tr(" and ").join(f"`{d}`" for d in retry[o.item])
        if other.status == Status.ERROR and o.status == Status.FAILED:
            # the code could not run with the stand-ins (a stand-in has no autograd graph, e.g. a loss inside a
            # training loop). That says nothing of the student's code, but the first verdict's outputs were made
            # with the broken dependency in the loop, so a mistake of this item named from them may be the
            # dependency's doing: the score stands, the diagnosis goes, and the row says what to fix first
            separator = tr(" -- likely mistake: {hint}").split("{hint}")[0]
            before = o.message.split(separator)[0] if o.mistakes else o.message
            o.message = tr("could not be judged apart from {names}: it uses {names}, which failed its own checks, "
                           "and it cannot run with the reference {names} in its place; fix {names} first. As "
                           "submitted: {before}").format(names=names, before=before)[:2000]
            o.mistakes = []
            result.append(o)
            continue
        if other.status == Status.PASSED:
            other.message = tr("correct once {names} is fixed: graded with the reference {names} in its place (full "
                               "points here, gradients not re-checked; fix {names} for its own points). Before: "
                               "{before}").format(names=names, before=o.message)[:2000]
            result.append(other)
        else:
            o.message = tr("wrong on its own as well (graded again with the reference {names} in its place: "
                           "{again}). As submitted: {before}").format(names=names, again=other.message,
                                                                      before=o.message)[:2000]
            o.mistakes = list(dict.fromkeys(o.mistakes + other.mistakes))
            result.append(o)
    return result


def _isolate_failures(items: list[Item], notebook: str, devices: list[str], plan, calls: list[CallSpec],
                      outcomes: list[TestOutcome], points: dict[str, float], prepared: PreparedNotebook,
                      references: ReferenceCache, limits: Limits, use_bwrap: str | None,
                      pool: WorkerPool | None = None) -> list[TestOutcome]:
    """Grade failed items again with their failed dependencies replaced by reference stand-ins.

    Three stages: ``plan_regrades`` (which items, which stand-ins), one worker run of their calls
    (gradient cases excepted: stand-ins return plain tensors without a graph), ``merge_regrades``.
    """
    from autograder.oracle import OracleResponder

    # an item whose class could not even be defined for want of a pasted answer has nothing to grade again
    unanswered = {item.name for item in items if _unanswered_paste(item, prepared)}
    retry = plan_regrades(items, outcomes, prepared.missing_answers | unanswered)
    if not retry:
        return outcomes
    oracles = {d: "class" if d[0].isupper() else "function" for deps in retry.values() for d in deps}
    again = [c for c, (it, *_rest) in zip(calls, plan, strict=True)
             if it.name in retry and not any(step["op"] == "backward" for step in c.program)]
    run = run_calls(prepared.cells, again, limits, use_bwrap, pool, oracles=oracles,
                    responder=OracleResponder(oracles))
    second = judge_run([i for i in items if i.name in retry], notebook, devices, plan, run.calls, points, prepared,
                        references)
    return merge_regrades(outcomes, second, retry)


def _judge_variant(item: Item, notebook: str, device: str, dtype: str | None,
                   rows: list[tuple[int, Case, CallResult]], share: float, prepared: PreparedNotebook,
                   references: ReferenceCache) -> TestOutcome:
    forbidden = shortcut_message(item.name, item.forbidden, [case for _, case, _ in rows],
                                 [result.guard for _, _, result in rows], prepared.answer_sources.get(item.name, ""))
    cases: list[CaseOutcome] = []
    for _call_id, case, result in rows:
        if result.status != "ok" or result.outputs is None:
            status, message = _call_problem(item, result, prepared)
            cases.append(CaseOutcome(case.name, Status(status), tr("case {case}: ").format(case=case.name) + message))
            continue
        oversized = too_big(item.name, result.guard, case.max_numel)
        if oversized:
            cases.append(CaseOutcome(case.name, Status.FAILED, tr("case {case}: ").format(case=case.name) + oversized))
            continue
        reference = references.get_for(item.name, case, device, dtype)
        verdict = judge(case, result.outputs, reference, device)
        if verdict.passed:
            cases.append(CaseOutcome(case.name, Status.PASSED))
            continue
        mistake = diagnose(item.name, case, result.outputs, device, dtype, reference=reference)
        cases.append(CaseOutcome(case.name, Status.FAILED,
                                 verdict.message + (tr(" -- likely mistake: {hint}").format(hint=mistake)
                                                    if mistake else ""), mistake))
    scored = score_variant(share, cases, forbidden)
    return TestOutcome(item.name, notebook, device, dtype, scored.status, scored.score, scored.max_score,
                       scored.message, scored.passed, scored.total, scored.mistakes, scored.forbidden)
