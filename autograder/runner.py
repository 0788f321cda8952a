"""Drive a worker through a plan of cells and calls, surviving hangs, crashes and exits.

The worker reports each step (cell or call) as it starts and ends in ``progress.jsonl``. When a step
runs past its limit, or the process dies in the middle of one, that step alone is charged (timeout
or crash) and a fresh worker picks up after it: earlier cells are re-run (they define the names),
earlier calls are not.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load, save

from autograder import sandbox
from autograder.pool import WORKERS_PER_GPU, ColdWorker, ForkedJob, WorkerPool, Zygote
from autograder.safe_io import WorkerDir
from autograder.worker import protocol
from exercises.compare import Outputs
from exercises.i18n import tr

POLL_SECONDS = 0.02
RSS_POLL_SECONDS = 0.5  # finding the worker's processes scans /proc: not on every 20 ms poll
MESSAGE_TAIL = 1500  # characters of a worker's output quoted when it dies before its first step
STARTUP_TRIES = 2  # a worker that fails before any student code runs is started again once before giving up


class GraderError(Exception):
    """The grader could not run student code correctly: not the student's fault, so nobody is graded.

    Raised when the worker fails before any student code has run (start-up, reading its plan and
    inputs), and when it cannot write or read back outputs even with no student code in it.
    """


@dataclass
class CellSpec:
    grade_id: str
    source: str
    kind: str  # "given" or "answer"


@dataclass
class CallSpec:
    id: int
    program: list[dict[str, Any]]
    inputs: dict[str, torch.Tensor]
    device: str
    dtype: str | None
    group: str = ""  # calls of one graded item: after one hangs or kills the worker, the rest are not run
    guard: dict[str, Any] | None = None  # run inside the operation monitor with these settings (rules.guarded)


@dataclass
class CallResult:
    status: str  # ok | exception | program | timeout | crashed | missing (outputs unreadable) | harness (unwritable)
    outputs: Outputs | None = None
    error: dict[str, Any] = field(default_factory=dict)
    guard: dict[str, Any] | None = None  # the operation monitor's report (op_guard.OpGuard.report), if it watched
    seconds: float = 0.0

    @property
    def used(self) -> list[str]:
        """The families of built-ins the call was seen to use (``exercises/op_guard.py``)."""
        return sorted((self.guard or {}).get("used") or {})


@dataclass
class CellResult:
    status: str  # ok | error | timeout | crashed | not run
    error: dict[str, Any] = field(default_factory=dict)
    defined: list[str] = field(default_factory=list)


@dataclass
class RunResult:
    cells: list[CellResult]
    calls: dict[int, CallResult]
    isolation: str
    output: str
    seconds: float
    notes: list[str] = field(default_factory=list)  # what the report must say of this run (namespaces refused)


# A worker the system refused namespaces of its own (a grader that is not root where unprivileged user
# namespaces are turned off, as on Ubuntu 24.04's default AppArmor policy) still grades, but must say so.
NAMESPACES_REFUSED = ("isolation reduced: this system refused the worker's private namespaces, so jobs of this "
                      "machine's user shared /tmp, /dev/shm and System V shared memory: ")

PROGRESS_CAP = 32 << 20  # bytes of events one worker may write; beyond it the step in flight is charged
JSON_CAP = 16 << 20  # bytes of one call's output metadata or one stand-in request's JSON


class Progress:
    """The worker's events, read through the descriptor the grader opened on ``progress.jsonl`` before the
    worker started: a file put in its place later is never read, and no more than ``PROGRESS_CAP`` bytes."""

    def __init__(self, fd: int):
        self.fd, self.offset, self.pending, self.overflow = fd, 0, b"", False

    def events(self) -> list[dict[str, Any]]:
        """The complete events written since the last call (a line cut short waits for its end)."""
        room = PROGRESS_CAP - self.offset - len(self.pending)
        data = os.pread(self.fd, min(room + 1, 1 << 20), self.offset + len(self.pending)) if room >= 0 else b""
        if len(data) > room:
            self.overflow = True
            data = data[:max(room, 0)]
        lines = (self.pending + data).split(b"\n")
        self.pending = lines.pop()
        self.offset += sum(len(line) + 1 for line in lines)
        events = []
        for line in lines:
            try:
                event = json.loads(line)
            except ValueError:
                continue  # the student wrote into our file: ignore what is not ours
            if isinstance(event, dict):
                events.append(event)
        return events

    def has_more(self) -> bool:
        """Whether bytes were written that ``events`` has not read yet (and may still read)."""
        return not self.overflow and os.fstat(self.fd).st_size > self.offset + len(self.pending)

    def close(self) -> None:
        """Let the descriptor go (after the worker's last event was read)."""
        try:
            os.close(self.fd)
        except OSError:
            pass


def _read_outputs(wdir: WorkerDir, call_id: int, limits: sandbox.Limits) -> Outputs | None:
    try:
        tensors_file, meta_file = protocol.output_files(call_id)
        meta = json.loads(wdir.read(meta_file, JSON_CAP).decode("utf-8"))
        tensors = load(wdir.read(tensors_file, limits.file_bytes))
    except (OSError, ValueError, RuntimeError):
        return None
    if not isinstance(meta, dict) or not all(type(t) is torch.Tensor for t in tensors.values()):
        return None
    return Outputs(tensors, meta)


Responder = Callable[[dict[str, Any], dict[str, torch.Tensor]], tuple[dict, dict]]


def run_plan(cells: list[CellSpec], calls: list[CallSpec], limits: sandbox.Limits, cuda: bool = False,
             use_bwrap: str | None = None, oracles: dict[str, str] | None = None,
             responder: Responder | None = None, verify_harness: bool = True,
             pool: WorkerPool | None = None) -> RunResult:
    """Run every cell then every call in as many fresh workers as it takes.

    Never raises for student faults; raises ``GraderError`` for the grader's own (see there). When a
    call's outputs could not be written or read back after student code ran, a worker without any
    student code is tried (``verify_harness``): if it fails too, the fault is the grader's.
    ``pool``: fork the workers from warm ones (CPU only: ``autograder/pool.py``), else start each cold.
    """
    started = time.monotonic()
    cell_results = [CellResult("not run") for _ in cells]
    call_results: dict[int, CallResult] = {}
    skip_cells: set[int] = set()
    remaining = sorted(c.id for c in calls)
    output_parts: list[str] = []
    refusals: set[str] = set()
    isolation = "bubblewrap" if use_bwrap else "rlimits"
    drop = sandbox.can_drop_privileges(use_bwrap)
    warm = pool is not None and not cuda and pool.use_bwrap == use_bwrap  # CPU only, its own isolation mode only
    root = None
    user = None
    if not warm:
        try:
            root = sandbox.make_grading_root(drop and not use_bwrap)
            user = sandbox.WorkerUid() if drop else None  # this run's workers' own user, one after another
        except OSError as exc:
            raise GraderError(tr("could not make the worker's directory: {why}").format(why=exc)) from exc
    try:
        startup_failures = 0
        for attempt in range(len(cells) + len(calls) + 1 + STARTUP_TRIES):
            zygote: Zygote | None = None
            try:
                if warm:
                    zygote = pool.acquire()
                    workdir = zygote.new_job_dir()
                else:
                    workdir = root / f"w{attempt}"
                    workdir.mkdir()
            except OSError as exc:
                raise GraderError(tr("could not make the worker's directory: {why}").format(why=exc)) from exc
            plan = {"cells": [{"grade_id": c.grade_id, "source": c.source, "kind": c.kind} for c in cells],
                    "skip_cells": sorted(skip_cells), "start_call": remaining[0] if remaining else 1 << 30,
                    "calls": [{"id": c.id, "program": c.program, "device": c.device, "dtype": c.dtype,
                               "guard": c.guard} for c in calls if c.id in remaining],
                    "drop_privileges": drop, "worker_uid": zygote.uid if zygote else (user.uid if user else None),
                    "private_namespaces": True, "oracles": oracles or {},
                    "cuda_memory_fraction": limits.cuda_memory_fraction if cuda else None}
            wdir = WorkerDir(workdir)
            try:
                worker, progress = _start_worker(wdir, plan, calls, remaining, limits, cuda, use_bwrap, zygote,
                                                 stand_ins=bool(oracles))
                isolation = worker.isolation
                guarded = {c.id for c in calls if c.guard is not None}
                watch = _monitor(wdir, progress, worker, limits, len(cells), cuda,
                                 responder if oracles else None, guarded)
                progress.close()
                for index, cell in watch.cells.items():
                    cell_results[index] = cell
                call_results.update(watch.calls)
                refusals.update(watch.refused)
                worker.stop(wait=JOB_END_WAIT if watch.finished else 0.0)
                output_parts.append(worker.output())
                for cid in list(call_results):
                    if call_results[cid].status == "ok" and call_results[cid].outputs is None:
                        outputs = _read_outputs(wdir, cid, limits)
                        if outputs is None:
                            call_results[cid] = CallResult("missing", error={
                                "type": "GraderError", "message": tr("the worker's output could not be read back")})
                        else:
                            call_results[cid].outputs = outputs
            finally:
                wdir.close()
            if not watch.ready:  # no student code ran in this worker: whatever stopped it is ours
                _release(pool, zygote, workdir)
                startup_failures += 1
                if startup_failures < STARTUP_TRIES:  # a passing shortage (processes, memory) gets a second try
                    time.sleep(1.0)
                    continue
                raise GraderError(_startup_failure(worker, drop, cuda, watch.timed_out, limits, output_parts[-1]))
            finished, step, step_started = watch.finished, watch.step, watch.step_started
            _release(pool, zygote, workdir)
            remaining = [cid for cid in remaining if cid not in call_results]
            if finished or (step is None and not remaining):
                break
            if step is None:  # died or hung between steps, after start-up (a student's thread, a forged event)
                if watch.calls:  # it got somewhere: a fresh worker goes on (each try finishes a call at least)
                    continue
                message = output_parts[-1][-MESSAGE_TAIL:] or tr("the worker stopped between two steps")
                for cid in remaining:
                    call_results[cid] = CallResult("crashed", error={"type": "WorkerError", "message": message})
                break
            kind, index, why = step
            if kind == "cell":
                cell_results[index] = CellResult(why, error={"type": why, "message": _why(why, limits, "cell")})
                skip_cells.add(index)
            else:
                call_results[index] = CallResult(why, error={"type": why, "message": _why(why, limits, "call")},
                                                 seconds=time.monotonic() - step_started)
                group = next(c.group for c in calls if c.id == index)
                for other in calls:
                    if group and other.group == group and other.id in remaining and other.id != index:
                        call_results[other.id] = CallResult(why, error={
                            "type": why, "message": _why(why, limits, "call") + tr(
                                " (an earlier case of this item; its other cases were not run)")})
                remaining = [cid for cid in remaining if cid not in call_results]
            if not remaining and kind == "call":
                break
    finally:
        if root is not None:
            shutil.rmtree(root, ignore_errors=True)
        if user is not None:  # every worker of this run was terminated
            user.release()
    for c in calls:
        call_results.setdefault(c.id, CallResult("crashed", error={
            "type": "WorkerError", "message": tr("the worker stopped before this call ran")}))
    unreadable = [cid for cid, r in call_results.items() if r.status in ("missing", "harness")]
    if unreadable and verify_harness:
        device = next(c.device for c in calls if c.id == unreadable[0])
        verify_output_path(limits, cuda, use_bwrap, device, call_results[unreadable[0]].error, pool)
        for cid in unreadable:  # the worker works without the student's code: their code got in its way
            error = call_results[cid].error
            call_results[cid].error = {"type": "WorkerError", "message": tr(
                "this call's outputs could not be written or read back after your code ran, although the worker "
                "manages without it: does your code delete, replace or patch files, `safetensors`, `json` or "
                "`open`? ({type}: {message})").format(type=error.get("type", "error"),
                                                      message=str(error.get("message", ""))[:300])}
    text = "".join(output_parts)
    notes = [tr(NAMESPACES_REFUSED) + "; ".join(sorted(refusals))] if refusals else []
    return RunResult(cell_results, call_results, isolation, text[:limits.output_bytes * 2],
                     time.monotonic() - started, notes)


def _start_worker(wdir: WorkerDir, plan: dict[str, Any], calls: list[CallSpec], remaining: list[int],
                  limits: sandbox.Limits, cuda: bool, use_bwrap: str | None, zygote: Zygote | None,
                  stand_ins: bool) -> tuple[ColdWorker | ForkedJob, Progress]:
    """Fill the fresh directory (plan, inputs, an empty progress file, the worker's code), then start the worker.

    The grader opens the progress file before the worker exists and reads only through that descriptor; the
    answers folder is made only when the run planned stand-ins.
    """
    wdir.create(protocol.PLAN, json.dumps(plan).encode("utf-8"))
    for c in calls:
        if c.id in remaining:
            wdir.create(protocol.input_file(c.id), save({k: v.contiguous() for k, v in c.inputs.items()}))
    wdir.create(protocol.PROGRESS, b"")
    sandbox.prepare_workdir(wdir, copy_worker=zygote is None, uid=plan["worker_uid"] or sandbox.NOBODY)
    if stand_ins:
        wdir.make_answers()
    progress = Progress(wdir.open_for_reading(protocol.PROGRESS))
    try:
        worker = zygote.start(wdir) if zygote else ColdWorker(Path(wdir.path), limits, cuda, use_bwrap)
    except BaseException:
        progress.close()
        raise
    return worker, progress


def run_calls(cells: list[CellSpec], calls: list[CallSpec], limits: sandbox.Limits, use_bwrap: str | None,
              pool: WorkerPool | None = None, **options: Any) -> RunResult:
    """``run_plan`` for calls on any devices: with a pool, the CPU calls in a forked worker and the CUDA calls in a
    cold one (CUDA does not survive ``fork``) holding a GPU slot (``pool.WORKERS_PER_GPU`` per GPU, each with
    that share of the memory fraction), so the CPU work of other notebooks goes on meanwhile. Without a pool,
    one cold worker runs them all.
    """
    on_gpu = [c for c in calls if c.device.startswith("cuda")]
    if pool is None or not on_gpu:
        return run_plan(cells, calls, limits, cuda=bool(on_gpu), use_bwrap=use_bwrap, pool=pool, **options)
    on_cpu = [c for c in calls if not c.device.startswith("cuda")]
    runs = [run_plan(cells, on_cpu, limits, cuda=False, use_bwrap=use_bwrap, pool=pool, **options)] if on_cpu else []
    shared = replace(limits, cuda_memory_fraction=limits.cuda_memory_fraction / WORKERS_PER_GPU)
    with pool.gpu_slot():  # WORKERS_PER_GPU cold CUDA workers at most on each GPU, each with its share
        runs.append(run_plan(cells, on_gpu, shared, cuda=True, use_bwrap=use_bwrap, pool=pool, **options))
    return RunResult(runs[0].cells, {cid: r for run in runs for cid, r in run.calls.items()}, runs[-1].isolation,
                     "".join(run.output for run in runs), sum(run.seconds for run in runs),
                     list(dict.fromkeys(note for run in runs for note in run.notes)))


JOB_END_WAIT = 10.0  # seconds a warm job that said it finished gets to end before its zygote is killed


def _release(pool: WorkerPool | None, zygote: Zygote | None, workdir: Path) -> None:
    """After a warm job: its directory goes, its zygote back to the pool (or closed, if it was killed)."""
    if zygote is not None:
        shutil.rmtree(workdir, ignore_errors=True)
        pool.release(zygote)


def _startup_failure(worker: ColdWorker | ForkedJob, drop: bool, cuda: bool, timed_out: bool, limits: sandbox.Limits,
                     output: str) -> str:
    """What a grader error at worker start-up says: the cause as far as known, the configuration, the output."""
    user = "nobody (privileges dropped)" if drop else f"uid {os.geteuid()} (no privilege drop)"
    if timed_out:
        cause = tr("the worker did not start within {seconds:g} s").format(seconds=limits.startup_timeout)
    else:
        cause = tr("the worker exited with status {status} before running any student code ({tries} tries)").format(
            status=worker.returncode, tries=STARTUP_TRIES)
    warm = " (forked from a warm worker)" if isinstance(worker, ForkedJob) else ""
    config = (f"isolation: {worker.isolation}{warm}; worker user: {user}; "
              f"devices: {'cpu and cuda' if cuda else 'cpu'}; "
              f"memory limit: {limits.memory_bytes >> 20} MiB{' (not applied with CUDA)' if cuda else ''}; "
              f"python: {sys.executable}")
    tail = output.strip()[-MESSAGE_TAIL * 2:] or tr("(no output)")
    return f"{cause}.\n  {config}\n  " + tr("the worker's output:") + f"\n{tail}"


PROBE_PROGRAM = [{"op": "call", "fn": "torch.clone", "args": [{"tensor": "x"}], "out": "y"},
                 {"op": "output", "key": "out", "var": "y"}]


def verify_output_path(limits: sandbox.Limits, cuda: bool, use_bwrap: str | None, device: str,
                       first_error: dict[str, Any], pool: WorkerPool | None = None) -> None:
    """Run one trivial call in a worker without student code; ``GraderError`` if its outputs do not come back.

    The probe's worker is started the way the failed one was (cold, or forked from the pool).
    """
    probe = CallSpec(0, PROBE_PROGRAM, {"x": torch.arange(6, dtype=torch.float32)}, device, None)
    run = run_plan([], [probe], limits, cuda, use_bwrap, verify_harness=False, pool=pool)
    result = run.calls[0]
    if result.status != "ok" or result.outputs is None or not torch.equal(
            result.outputs.tensors.get("out", torch.empty(0)), probe.inputs["x"]):
        detail = result.error.get("traceback") or result.error.get("message") or result.status
        first = first_error.get("traceback") or first_error.get("message", "")
        raise GraderError(tr("the worker cannot hand back a call's outputs even without student code (isolation: "
                             "{isolation}; device: {device}).").format(isolation=run.isolation, device=device)
                          + "\n  " + tr("the probe: {detail}").format(detail=detail)
                          + "\n  " + tr("the first failure: {first}").format(first=first)
                          + "\n  " + tr("the worker's output:") + f"\n{run.output[-MESSAGE_TAIL:]}")


def _why(why: str, limits: sandbox.Limits, what: str) -> str:
    if why == "timeout":
        bound = limits.cell_timeout if what == "cell" else limits.call_timeout
        template = tr("this cell ran longer than {bound:g} s and was stopped (an infinite loop?)") if what == "cell" \
            else tr("this call ran longer than {bound:g} s and was stopped (an infinite loop?)")
        return template.format(bound=bound)
    template = tr("the worker process died while running this cell (os._exit, a crash, or the memory limit of {mib} "
                  "MiB)") if what == "cell" else tr("the worker process died while running this call (os._exit, a "
                                                    "crash, or the memory limit of {mib} MiB)")
    return template.format(mib=limits.memory_bytes >> 20)


def _rss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


RPC_MAX = 10_000  # stand-in requests answered per worker at most


def _answer_rpc(wdir: WorkerDir, n: Any, responder: Responder, limits: sandbox.Limits) -> None:
    """Answer stand-in request ``n``: response tensors first, then the JSON whose appearance releases the worker.

    Only ever called in a run that planned stand-ins; the answer goes into the grader's own ``answers/``.
    """
    try:
        request_tensors, request_json = protocol.rpc_request(n)
        request = json.loads(wdir.read(request_json, JSON_CAP).decode("utf-8"))
        tensors = load(wdir.read(request_tensors, limits.file_bytes))
        if not isinstance(request, dict):
            raise ValueError("a stand-in request is a JSON object")
        meta, out = responder(request, tensors)
    except Exception as exc:  # noqa: BLE001 - any failure becomes the stand-in's exception in the worker
        meta, out = {"error": tr("stand-in failed: {type}: {error}").format(type=type(exc).__name__,
                                                                           error=str(exc)[:300])}, {}
    answer_tensors, answer_json = protocol.rpc_response(n)
    try:
        wdir.answer(answer_tensors, save({k: v.contiguous() for k, v in out.items()}))
        wdir.answer(answer_json, json.dumps(meta).encode("utf-8"))
    except OSError:  # only a worker that wrote into our folder (same user, no privilege drop) gets here
        pass


MISSING_REPORT = "the operation monitor's report of this call is missing (the worker's events were tampered with)"


def _guard_report(report: Any) -> dict[str, Any] | None:
    """The operation monitor's report from a call's event, in its expected shape (else None: judged as missing)."""
    if not isinstance(report, dict) or not isinstance(report.get("used"), dict):
        return None
    big = report.get("too_big")
    if big is not None and not (isinstance(big, dict) and isinstance(big.get("numel"), int)
                                and isinstance(big.get("shape"), list)):
        return None
    wide = report.get("wide")
    if wide is not None and not (isinstance(wide, dict) and isinstance(wide.get("shape"), list)):
        return None
    return {"used": {str(k): str(v) for k, v in report["used"].items()}, "too_big": big,
            "wide": None if wide is None else {"shape": [int(s) for s in wide["shape"]], "op": str(wide.get("op"))},
            "exported": str(report["exported"]) if report.get("exported") else None,
            "tampered": str(report["tampered"]) if report.get("tampered") else None}


@dataclass
class Watch:
    """How one worker's run ended, as ``_monitor`` saw it."""

    finished: bool  # the worker said it finished every step
    ready: bool  # it got through start-up (student code may have run after this, never before)
    step: tuple[str, int, str] | None  # the step in flight when it stopped: (cell|call, index, timeout|crashed)
    step_started: float
    timed_out: bool = False  # start-up ran past ``limits.startup_timeout``
    cells: dict[int, CellResult] = field(default_factory=dict)  # the cells this worker finished, by index
    calls: dict[int, CallResult] = field(default_factory=dict)  # the calls it finished, by id
    refused: list[str] = field(default_factory=list)  # private namespaces the system refused this worker


def _monitor(wdir: WorkerDir | None, progress: Progress, worker: ColdWorker | ForkedJob, limits: sandbox.Limits,
             n_cells: int, cuda: bool, responder: Responder | None = None, guarded: set[int] | None = None) -> Watch:
    """Follow progress events until the worker finishes, dies, or runs a step past its limit.

    Returns what it saw (``Watch``), the steps this worker finished included; writes nothing of its caller's.
    ``responder``: stand-in requests are answered only when there is one (a run that planned stand-ins).
    ``guarded``: the calls the operation monitor watches; one whose report is missing is not clean.
    """
    cell_results: dict[int, CellResult] = {}
    call_results: dict[int, CallResult] = {}
    guarded = guarded or set()
    answered: set[int] = set()

    def stop(finished: bool, in_flight: tuple[str, int, str] | None, timed_out: bool = False) -> Watch:
        return Watch(finished, ready, in_flight, step_started, timed_out, cell_results, call_results, refused)

    step: tuple[str, int, str] | None = None
    step_started = idle_since = time.monotonic()
    ready = False
    refused: list[str] = []
    launched_at = time.monotonic()
    rss_checked = launched_at
    while True:
        events = progress.events()
        for event in events:
            kind = event.get("event")
            if kind == protocol.READY:
                if not ready:  # the worker's own (emitted before student code): a later one could be forged
                    refused = [str(n)[:200] for n in event.get("namespaces") or [] if str(n).startswith("refused")]
                ready, idle_since = True, time.monotonic()
            elif kind == protocol.RPC:
                n = event.get("n")
                if (responder is not None and wdir is not None and type(n) is int and 0 < n <= RPC_MAX
                        and n not in answered):
                    answered.add(n)
                    _answer_rpc(wdir, n, responder, limits)
            elif (kind == protocol.CELL_START and isinstance(event.get("index"), int)
                  and event["index"] < n_cells):
                step, step_started = ("cell", event["index"], "timeout"), time.monotonic()
            elif kind == protocol.CELL_DONE and step and step[0] == "cell" and event.get("index") == step[1]:
                error = event.get("error") or {}
                cell_results[step[1]] = CellResult("error" if error else "ok", error, event.get("defined", []))
                step, idle_since = None, time.monotonic()
            elif kind == protocol.CALL_START and isinstance(event.get("id"), int):
                step, step_started = ("call", event["id"], "timeout"), time.monotonic()
                if responder is not None and hasattr(responder, "begin_call"):
                    responder.begin_call()  # the stand-ins' random stream starts over with each call
            elif kind == protocol.CALL_DONE and step and step[0] == "call" and event.get("id") == step[1]:
                status = event.get("status", "exception")
                report = _guard_report(event.get("guard"))
                if report is None and step[1] in guarded:  # no report is not a clean report
                    report = {"used": {}, "too_big": None, "tampered": tr(MISSING_REPORT)}
                call_results[step[1]] = CallResult(status if status in protocol.CALL_STATUSES else "exception",
                                                   None, event.get("error") or {}, report,
                                                   time.monotonic() - step_started)
                step, idle_since = None, time.monotonic()
            elif kind == protocol.FINISHED:
                if step is not None:  # only student code can say so mid-step (a forged event): charge that step
                    return stop(False, (step[0], step[1], "crashed"))
                return stop(True, None)
        if progress.overflow:  # only student code writes that much: the step in flight pays
            return stop(False, (step[0], step[1], "crashed") if step else None)
        if worker.poll() is not None:
            if progress.has_more():  # what it wrote just before it ended
                continue
            if step is not None:
                step = (step[0], step[1], "crashed")
            return stop(False, step)
        now = time.monotonic()
        if not ready and now - launched_at > limits.startup_timeout:
            return stop(False, None, timed_out=True)
        if ready and step is None and now - idle_since > max(limits.cell_timeout, limits.call_timeout):
            return stop(False, None)  # a healthy worker goes straight to its next step: only student code waits here
        if step is not None:
            bound = limits.cell_timeout if step[0] == "cell" else limits.call_timeout
            if now - step_started > bound:
                return stop(False, step)
            if cuda and now - rss_checked > RSS_POLL_SECONDS:
                rss_checked = now
                if sum(_rss_bytes(pid) for pid in sandbox.tagged_pids(worker.tag)) > limits.gpu_rss_bytes:
                    return stop(False, (step[0], step[1], "crashed"))
        time.sleep(POLL_SECONDS)


def default_bwrap() -> str | None:
    """bubblewrap unless ``SELFATTN_NO_BWRAP=1`` asks for the reduced mode (used by the tests of both)."""
    if os.environ.get("SELFATTN_NO_BWRAP") == "1":
        return None
    return sandbox.bubblewrap()
