"""The worker: runs one student's notebook code and the grader's calls, in a process of its own.

Started by ``autograder.sandbox`` as ``python -I main.py WORKDIR`` inside a fresh working directory
that holds only this file, ``program.py``, ``protocol.py`` (the files and events it uses), ``op_guard.py``
(the operation monitor), ``plan.json``
and the input tensors. It never imports the
repository's packages (``solutions``, ``exercises``, ``autograder`` are blocked) and it writes only:
``progress.jsonl`` (one event per line), ``out_<id>.safetensors`` and ``out_<id>.json`` per call.
Everything else it learns about the grader is in ``plan.json``.

Warm mode (``python -I main.py SLOT --zygote``, see ``autograder/pool.py``): the heavy imports are
done once, then each job directory named on stdin gets a worker forked from this process, which
runs exactly as above with that directory as its WORKDIR. Nothing a job does reaches the next: the
job is a separate process (its globals, patches and threads die with it); its leftover processes
are killed and reaped (this process is their subreaper) before the job's end is reported, or this
process retires (``_reap_leftovers``), and under bubblewrap the private /tmp and /dev/shm are emptied
before the next job.
"""

from __future__ import annotations

import builtins
import contextlib
import importlib.abc
import importlib.util
import io
import json
import os
import sys
import time
import traceback

WORKDIR = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else ".")
BLOCKED = ("solutions", "exercises", "autograder")
MESSAGE_CAP = 600
HARNESS_TRACE_CAP = 4000
NOBODY = 65534

# Heavy imports happen before privileges are dropped and before student code can interfere.
import numpy  # noqa: E402,F401
import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

os.environ.setdefault("MPLBACKEND", "Agg")
try:  # matplotlib is optional for every lesson but the sixth
    import matplotlib  # noqa: E402

    matplotlib.use("Agg")
    import matplotlib.figure  # noqa: E402,F401
    import matplotlib.pyplot  # noqa: E402,F401
except ImportError:  # pragma: no cover - the course installs it
    pass
import collections  # noqa: E402,F401
import dataclasses  # noqa: E402,F401
import functools  # noqa: E402,F401
import itertools  # noqa: E402,F401
import math  # noqa: E402,F401
import random  # noqa: E402,F401
import typing  # noqa: E402,F401


def _load(name: str, filename: str):
    """A module from a file the grader copied into this directory (the repository is out of reach)."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(WORKDIR, filename))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


program = _load("grader_program", "program.py")
protocol = _load("grader_protocol", "protocol.py")
op_guard = _load("grader_op_guard", "op_guard.py")


class _BlockReference(importlib.abc.MetaPathFinder):
    """Refuse the grader's own packages: student code must not reach the reference."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] in BLOCKED:
            raise ImportError(f"importing `{fullname}` is not allowed while grading")
        return None


def _isolate_imports() -> None:
    for name in list(sys.modules):
        if name.split(".")[0] in BLOCKED:
            del sys.modules[name]
    sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in type(f).__module__.lower()
                        and "editable" not in repr(f).lower()]
    sys.meta_path.insert(0, _BlockReference())
    sys.path_hooks[:] = [h for h in sys.path_hooks if "editable" not in repr(h).lower()]


def _drop_privileges(uid: int = NOBODY) -> None:
    """Become the worker's own unprivileged user (one per concurrent worker: RLIMIT_NPROC counts per user)."""
    if os.geteuid() != 0:
        return
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)


# --- namespaces of the worker's own: nothing of an earlier job (or another worker) is visible ------------
CLONE_NEWNS, CLONE_NEWIPC, CLONE_NEWUSER = 0x00020000, 0x08000000, 0x10000000
MS_NOSUID, MS_NODEV, MS_BIND, MS_REC, MS_PRIVATE = 2, 4, 4096, 16384, 1 << 18
PRIVATE_DIRS = ("/tmp", "/dev/shm")
PRIVATE_DIR_BYTES = 1 << 30  # each is memory: bounded, so files there cannot take the machine's RAM


def _libc():
    import ctypes

    return ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        import ctypes

        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def _user_namespace() -> None:
    """Without root: a user namespace of our own to hold the others (our uid keeps its number inside; the
    capabilities it grants serve the mounts below and are given up before student code runs)."""
    uid, gid = os.geteuid(), os.getegid()
    _check(_libc().unshare(CLONE_NEWUSER), "unshare(user)")
    for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
        with open(f"/proc/self/{name}", "w") as fh:
            fh.write(text)


def _drop_capabilities() -> None:
    """After a user namespace: give up the capabilities it granted (the student gets none of them)."""
    import ctypes

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]

    header, data = Header(0x20080522, 0), (Data * 2)()
    _check(_libc().capset(ctypes.byref(header), data), "capset")


def _make_passable(path: str) -> None:
    """Re-create ``path`` in a fresh /tmp with every missing folder 0711, as the grader made them: others pass
    through, never list (``os.makedirs`` gives only the last folder its mode: the slot above a job was 0755)."""
    current = "/"
    for part in path.strip("/").split("/"):
        current = os.path.join(current, part)
        if not os.path.isdir(current):
            os.mkdir(current, 0o711)


def _python_under_private() -> list[str]:
    """The folders of this Python (its prefixes and import path) that lie under ``PRIVATE_DIRS``, outermost only."""
    found = set()
    for entry in {sys.prefix, sys.base_prefix, sys.exec_prefix, *sys.path}:
        path = os.path.normpath(os.path.abspath(entry)) if entry else ""  # as Python will look it up
        if os.path.isdir(path) and any(path.startswith(folder + "/") for folder in PRIVATE_DIRS):
            found.add(path)
    return sorted(p for p in found if not any(p.startswith(other + "/") for other in found))


def private_namespaces() -> list[str]:
    """A fresh IPC namespace (System V shared memory, semaphores, queues) and empty /tmp and /dev/shm of this
    worker's own, before any student code: a forked job sees nothing of the job before it, a worker nothing
    of another. Returns what it got (the ready event says so); a part the system refuses is left out."""
    got: list[str] = []
    libc = _libc()
    try:
        if os.geteuid() != 0:
            _user_namespace()
            got.append("user")
        _check(libc.unshare(CLONE_NEWIPC | CLONE_NEWNS), "unshare(ipc, mount)")
        got.append("ipc")
        _check(libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "mount --make-rprivate /")
        # the worker's directory and the Python it runs (a venv of a course cloned under /tmp) may lie under a
        # folder that is about to be emptied: held open now, bound back at the same place afterwards
        keep = {path: os.open(path, os.O_RDONLY | os.O_DIRECTORY) for path in [WORKDIR, *_python_under_private()]}
        for folder in PRIVATE_DIRS:
            if os.path.isdir(folder):
                _check(libc.mount(b"tmpfs", folder.encode(), b"tmpfs", MS_NOSUID | MS_NODEV,
                                  f"mode=1777,size={PRIVATE_DIR_BYTES}".encode()),
                       f"mount tmpfs {folder}")
                got.append(folder)
        for path, fd in keep.items():
            if not os.path.isdir(path) or not os.path.samestat(os.stat(path), os.fstat(fd)):
                _make_passable(path)
                _check(libc.mount(f"/proc/self/fd/{fd}".encode(), path.encode(), None, MS_BIND, None),
                       f"bind {path} back")
            os.close(fd)
        os.chdir(WORKDIR)
    except OSError as exc:
        got.append(f"refused: {exc}")
    if "user" in got:
        try:
            _drop_capabilities()
        except OSError as exc:
            got.append(f"refused: {exc}")
    return got


# --- the operation monitor (``op_guard.py``, a copy of exercises/op_guard.py) -------------------------
# Around each call of an item with a rule (forbidden built-ins, a bound on tensor sizes) the plan names
# ``guard``: the call runs inside ``op_guard.OpGuard`` and its report goes back in the call's event.


def run_call(call: dict, namespace: dict, inputs: dict, guards: list) -> object:
    """Run one call's program, inside the operation monitor when the plan asks for it (appended to ``guards``)."""
    settings = call.get("guard")
    guard = None if settings is None else op_guard.OpGuard(max_numel=settings.get("max_numel"),
                                                           span=settings.get("span"))
    if guard is not None:
        guards.append(guard)
    with guard if guard is not None else contextlib.nullcontext():
        return program.run_program(call["program"], namespace, inputs, call["device"], call["dtype"])


def _report(guard) -> dict:
    """The guard's report, read by the class's own method: one the code set on the object is not consulted."""
    return _GUARD_REPORT(guard)


_GUARD_REPORT = op_guard.OpGuard.report  # taken before any student code runs


# --- progress and results ---------------------------------------------------------------------
_progress = None  # progress.jsonl of this worker, opened by main()


def emit(**event) -> None:
    event["t"] = time.time()
    _progress.write(json.dumps(event) + "\n")
    _progress.flush()


def describe(exc: BaseException) -> dict:
    """Type, capped message and the line in student code (cells are compiled as ``<cell ...>``)."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename.startswith("<cell ")]
    where = f"{frames[-1].filename[1:-1]}, line {frames[-1].lineno}" if frames else ""
    if isinstance(exc, SystemExit):
        message = f"the code called sys.exit({exc.code!r}); remove it"
    else:
        message = str(exc)
    return {"type": type(exc).__name__, "message": message[:MESSAGE_CAP], "where": where}


def run_cells(plan: dict, namespace: dict) -> None:
    skip = set(plan.get("skip_cells", []))
    for index, cell in enumerate(plan["cells"]):
        if index in skip:
            continue
        emit(event=protocol.CELL_START, index=index)
        before = set(namespace)
        try:
            code = compile(cell["source"], f"<cell {cell['grade_id']}>", "exec")
            exec(code, namespace)  # noqa: S102 - running the student's cell is the point
            emit(event=protocol.CELL_DONE, index=index, defined=sorted(set(namespace) - before)[:50])
        except BaseException as exc:  # noqa: BLE001 - SystemExit and KeyboardInterrupt are student errors too
            emit(event=protocol.CELL_DONE, index=index, error=describe(exc),
                 defined=sorted(set(namespace) - before)[:50])


# --- stand-ins for a dependency, answered by the grader (the reference never enters this process) ---
_rpc_count = [0]
RPC_WAIT_SECONDS = 120.0


def _rpc(kind: str, name: str, tensors: dict, spec: dict) -> tuple[dict, dict]:
    n = _rpc_count[0] = _rpc_count[0] + 1
    request_tensors, request_json = protocol.rpc_request(n)
    save_file(tensors, os.path.join(WORKDIR, request_tensors))
    with open(os.path.join(WORKDIR, request_json), "w", encoding="utf-8") as fh:
        json.dump({"kind": kind, "name": name, **spec}, fh)
    emit(event=protocol.RPC, n=n)
    answer_tensors, answer_json = protocol.rpc_response(n)
    answers = os.path.join(WORKDIR, protocol.ANSWERS)
    answer = os.path.join(answers, answer_json)
    deadline = time.monotonic() + RPC_WAIT_SECONDS
    while not os.path.exists(answer):
        if time.monotonic() > deadline:
            raise TimeoutError(f"no answer from the grader for the stand-in of `{name}`")
        time.sleep(0.002)
    with open(answer, encoding="utf-8") as fh:
        meta = json.load(fh)
    if meta.get("error"):
        raise RuntimeError(meta["error"])
    return meta, load_file(os.path.join(answers, answer_tensors))


def _device_of(args, kwargs, default="cpu"):
    for value in [*args, *kwargs.values()]:
        if isinstance(value, torch.Tensor):
            return value.device
    return torch.device(default)


def _answer_call(name: str, args: tuple, kwargs: dict):
    """A stand-in function's call, answered by the grader (what it makes is the grader's work: ``stand_ins``)."""
    tensors: dict = {}
    spec = program.encode_arguments(args, kwargs, tensors)
    meta, out = _rpc("call", name, tensors, {**spec, "device": str(_device_of(args, kwargs))})
    return program.deserialise(meta["outputs"], out, "out", _device_of(args, kwargs))


def _answer_new(module, name: str, args: tuple, kwargs: dict) -> None:
    """A stand-in class's construction: its parameters, as the grader's reference makes them."""
    module._ctor = program.encode_arguments(args, kwargs, {})
    meta, params = _rpc("new", name, {}, {"ctor": module._ctor})
    for full, value in params.items():
        owner: torch.nn.Module = module
        *path, leaf = full.split(".")
        for part in path:
            if not hasattr(owner, part):
                owner.add_module(part, torch.nn.Module())
            owner = getattr(owner, part)
        owner.register_parameter(leaf, torch.nn.Parameter(value))


def _answer_forward(module, name: str, args: tuple, kwargs: dict):
    """A stand-in class's forward, answered by the grader with the module's current parameters."""
    tensors = {f"p.{k}": v.detach().to("cpu").contiguous().clone() for k, v in module.named_parameters()}
    spec = program.encode_arguments(args, kwargs, tensors)
    device = _device_of(args, kwargs)
    meta, out = _rpc("forward", name, tensors,
                     {**spec, "ctor": module._ctor, "training": module.training, "device": str(device)})
    return program.deserialise(meta["outputs"], out, "out", device)


STAND_IN_BODIES = (_answer_call, _answer_new, _answer_forward)  # op_guard.stand_ins, before any student code


def function_oracle(name: str):
    def oracle(*args, **kwargs):
        return _answer_call(name, args, kwargs)
    oracle.__name__ = name
    return oracle


def class_oracle(name: str):
    class Oracle(torch.nn.Module):
        def __init__(self, *args, **kwargs):
            super().__init__()
            _answer_new(self, name, args, kwargs)

        def forward(self, *args, **kwargs):
            return _answer_forward(self, name, args, kwargs)

    Oracle.__name__ = Oracle.__qualname__ = name
    return Oracle


def install_oracles(plan: dict, namespace: dict) -> None:
    for name, kind in plan.get("oracles", {}).items():
        namespace[name] = class_oracle(name) if kind == "class" else function_oracle(name)


def describe_harness(exc: BaseException) -> dict:
    """A failure of this file's own work (not of student code): type, message and the whole traceback."""
    text = "".join(traceback.format_exception(exc))
    return {"type": type(exc).__name__, "message": str(exc)[:MESSAGE_CAP], "traceback": text[-HARNESS_TRACE_CAP:]}


def write_outputs(call_id: int, tensors: dict, meta: dict) -> None:
    tensors_file, meta_file = protocol.output_files(call_id)
    save_file(tensors, os.path.join(WORKDIR, tensors_file))
    with open(os.path.join(WORKDIR, meta_file), "w", encoding="utf-8") as fh:
        json.dump(meta, fh)


def run_calls(plan: dict, namespace: dict, inputs_by_id: dict[int, dict]) -> None:
    for call in plan["calls"]:
        if call["id"] < plan.get("start_call", 0):
            continue
        emit(event=protocol.CALL_START, id=call["id"])
        inputs = inputs_by_id[call["id"]]
        guards: list = []
        try:
            torch.manual_seed(0)
            raw = run_call(call, namespace, inputs, guards)
            if call["device"].startswith("cuda"):
                torch.cuda.synchronize()
            tensors, meta = program.serialise_outputs(raw, program.compute_dtype(call["dtype"], inputs))
        except BaseException as exc:  # noqa: BLE001
            kind = "program" if isinstance(exc, program.ProgramError) else "exception"
            emit(event=protocol.CALL_DONE, id=call["id"], status=kind, error=describe(exc),
                 **({"guard": _report(guards[0])} if guards else {}))
            continue
        watched = {"guard": _report(guards[0])} if guards else {}
        try:
            write_outputs(call["id"], tensors, meta)
        except BaseException as exc:  # noqa: BLE001 - the grader decides whose fault this is (runner.py)
            emit(event=protocol.CALL_DONE, id=call["id"], status="harness", error=describe_harness(exc), **watched)
            continue
        emit(event=protocol.CALL_DONE, id=call["id"], status="ok", **watched)


def start(plan: dict) -> tuple[dict[int, dict], list[str]]:
    """Everything before student code runs; returns every call's inputs, read now while nothing can interfere,
    and the private namespaces the worker got (``private_namespaces``)."""
    _isolate_imports()
    namespaces = private_namespaces() if plan.get("private_namespaces", True) else []
    if plan.get("drop_privileges", True):
        _drop_privileges(int(plan.get("worker_uid") or NOBODY))
    # Read back what we can reach as the user we now are: a grader fault shows here, before any student code.
    inputs_by_id = {call["id"]: load_file(os.path.join(WORKDIR, protocol.input_file(call["id"])))
                    for call in plan["calls"] if call["id"] >= plan.get("start_call", 0)}
    if any(call.get("guard") is not None for call in plan["calls"]):
        # before any student code: torch's switches for the monitor watched, threads and processes refused during
        # graded calls, findings kept by an audit hook; the grader's own modules are not the student's code
        op_guard.stand_ins(*STAND_IN_BODIES)  # what a stand-in makes is the grader's work (not measured)
        op_guard.install_tripwires(trusted=(program, protocol, sys.modules[__name__]), strict=True)
    fraction = plan.get("cuda_memory_fraction")
    if fraction and torch.cuda.is_available():  # a GPU bound CUDA tolerates, unlike an address-space limit
        torch.cuda.set_per_process_memory_fraction(float(fraction))
    return inputs_by_id, namespaces


def main() -> None:
    global _progress
    try:
        _progress = open(os.path.join(WORKDIR, protocol.PROGRESS), "a", buffering=1, encoding="utf-8")
        with open(os.path.join(WORKDIR, protocol.PLAN), encoding="utf-8") as fh:
            plan = json.load(fh)
        inputs_by_id, namespaces = start(plan)
    except BaseException:  # noqa: BLE001 - no student code has run: this is the grader's fault, say so
        traceback.print_exc(file=sys.stdout)
        sys.stdout.flush()
        os._exit(protocol.HARNESS_EXIT)
    emit(event=protocol.READY, pid=os.getpid(), uid=os.getuid(), namespaces=namespaces)
    namespace: dict = {"__name__": "__main__", "__builtins__": builtins}
    sys.stdin = io.StringIO("")
    run_cells(plan, namespace)
    install_oracles(plan, namespace)
    run_calls(plan, namespace, inputs_by_id)
    emit(event=protocol.FINISHED)
    sys.stdout.flush()
    os._exit(0)  # skip interpreter teardown: a student's atexit hook or daemon thread cannot delay us


# --- warm mode: fork a worker per job from an interpreter that has already imported torch ------------
PR_SET_CHILD_SUBREAPER = 36
SIGKILL = 9
# A job's leftovers are all gone within this, or the zygote retires (the grader's JOB_END_WAIT is 10 s). Not a
# number of rounds: a killed process takes its time to exit (tens of ms to free a large address space or tear
# down its private namespaces on a loaded machine), and so much longer the orphans it re-parents to us.
REAP_SECONDS = 5.0
WORKER_UID_BASE = 1_700_000_000  # sandbox.WORKER_UID_BASE: the first uid of a worker's own


def _prctl(option: int, value: int) -> None:
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0)


def _status_fields(pid: int) -> tuple[int, int] | None:
    """(parent pid, real uid) of ``pid`` from /proc, or None once it is gone."""
    try:
        with open(f"/proc/{pid}/status", "rb") as fh:
            fields = dict(line.split(b":", 1) for line in fh.read().splitlines() if b":" in line)
        return int(fields[b"PPid"]), int(fields[b"Uid"].split()[0])
    except (OSError, KeyError, ValueError, IndexError):
        return None


def _children() -> list[int]:
    """This process's children (a job's worker, and any orphan of it re-parented to us)."""
    me, found = os.getpid(), []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                stat = fh.read()
            if int(stat[stat.rindex(b")") + 2:].split()[1]) == me:
                found.append(int(entry))
        except (OSError, ValueError):
            continue
    return found


def _leftovers(own_pid_namespace: bool, job_uid: int | None) -> list[int]:
    """Every process a job may have left: our children (every descendant comes back to us, the subreaper, as its
    parent dies), every process of the sandbox's pid namespace but its init and us, every process of the jobs'
    own uid. Zombies count until they are reaped: the next job would see them."""
    me, found = os.getpid(), set(_children())
    if own_pid_namespace or job_uid is not None:
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) in (1, me):
                continue
            fields = _status_fields(int(entry))
            if fields is not None and (own_pid_namespace or fields[1] == job_uid):
                found.add(int(entry))
    return sorted(found)


def _kill_all_at_once(own_pid_namespace: bool, job_uid: int | None) -> None:
    """SIGKILL to every leftover in one system call, so none can fork away (a pid that changes every few
    milliseconds) or run on while the parent it would be re-parented from is still dying.

    In the sandbox's own pid namespace (bubblewrap) ``kill(-1)`` reaches every process but its init and us;
    with a uid of the jobs' own (root drops to it), ``kill(-1)`` from a helper of that uid reaches exactly its
    processes. Otherwise (the grader's own user, no pid namespace) there is no such call: the tree walk
    of ``_reap_leftovers`` alone, bounded by its deadline."""
    if own_pid_namespace:
        try:
            os.kill(-1, SIGKILL)
        except OSError:  # nothing left to signal
            pass
    elif job_uid is not None and os.geteuid() == 0:
        pid = os.fork()
        if pid == 0:  # only system calls here: this process has threads
            try:
                os.setgroups([])
                os.setgid(job_uid)
                os.setuid(job_uid)
                os.kill(-1, SIGKILL)
            finally:
                os._exit(0)
        os.waitpid(pid, 0)


def _reap_leftovers(own_pid_namespace: bool = False, job_uid: int | None = None) -> bool:
    """Kill and reap whatever the last job left (daemons, orphans, zombies) before the next job starts; True once
    nothing is left, False if something still is after ``REAP_SECONDS`` (the zygote must not serve another job)."""
    deadline = time.monotonic() + REAP_SECONDS
    pause = 0.0005
    while True:
        left = _leftovers(own_pid_namespace, job_uid)
        if not left:
            return True
        if time.monotonic() > deadline:
            return False
        _kill_all_at_once(own_pid_namespace, job_uid)
        for pid in left:
            try:
                os.kill(pid, SIGKILL)
            except OSError:
                pass
        while True:  # reap every child that has finished dying
            try:
                pid, _status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                pid = 0
            if pid == 0:
                break
        if _leftovers(own_pid_namespace, job_uid):
            time.sleep(pause)  # a killed process is still exiting: give it the CPU
            pause = min(pause * 2, 0.02)


def _empty_private_dirs() -> None:
    """Under bubblewrap /tmp and /dev/shm are this sandbox's own: what a job wrote there goes with it."""
    import shutil

    for folder in ("/tmp", "/dev/shm"):
        try:
            entries = os.listdir(folder)
        except OSError:
            continue
        for name in entries:
            path = os.path.join(folder, name)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                try:
                    os.unlink(path)
                except OSError:
                    pass


def _run_job(job: str, out: int) -> None:
    """In the forked child: become an ordinary worker on ``job``, printing into pipe ``out`` (never returns)."""
    global WORKDIR
    try:
        os.setsid()
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(out, 1)
        os.dup2(out, 2)
        os.close(out)
        os.close(null)
        sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), line_buffering=True)
        sys.stderr = sys.stdout
        WORKDIR = job
        os.chdir(job)
        os.environ.update(HOME=job, MPLCONFIGDIR=os.path.join(job, ".mpl"))
        main()
    finally:
        os._exit(protocol.HARNESS_EXIT)


class _Drain:
    """Read a job's output pipe to its end in a thread; keep the first ``cap`` bytes (as a cold worker's pipe is)."""

    def __init__(self, fd: int, cap: int):
        import threading

        self.fd, self.cap, self.kept, self.dropped = fd, cap, bytearray(), 0
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            while chunk := os.read(self.fd, 65536):
                room = max(self.cap - len(self.kept), 0)
                self.kept += chunk[:room]
                self.dropped += len(chunk) - min(room, len(chunk))
        except OSError:
            pass

    def finish(self, path: str, wait: float = 10.0) -> None:
        """Wait for the end of the output (every writer gone, at most ``wait`` seconds), then write what was kept
        to ``path``."""
        self.thread.join(timeout=wait)
        os.close(self.fd)
        note = f"\n[... {self.dropped} more bytes of output dropped]".encode() if self.dropped else b""
        try:  # whatever the job left at this path (a link, a fifo) goes first: the job and its leftovers are dead
            os.unlink(path)
        except OSError:
            pass
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(bytes(self.kept) + note)
        except OSError:  # the output is for the report only: never let it stop the zygote
            pass


def _warm_up() -> None:
    """Pay once, before any fork, what a fresh process pays on first use: an optimizer's first construction
    imports torch._dynamo and sympy (about 1.4 s), autograd, masking and a first figure draw warm up
    too. Nothing of it stays in the state a job sees: each call re-seeds, the figure is closed."""
    import matplotlib.pyplot as plt

    layer = torch.nn.Linear(4, 4)
    x = torch.rand(3, 4)
    scores = (layer(x) @ x.T).masked_fill(torch.ones(3, 3, dtype=torch.bool).triu(1), float("-inf"))
    loss = torch.nn.functional.dropout(torch.softmax(scores, dim=-1), 0.1).sum()
    for optimizer in (torch.optim.SGD(layer.parameters(), lr=0.1), torch.optim.Adam(layer.parameters())):
        optimizer.zero_grad()
        loss.backward(retain_graph=True)
        optimizer.step()
    fig, ax = plt.subplots()
    ax.imshow(scores.detach().numpy())
    ax.set_title("warm-up")
    fig.canvas.draw()
    plt.close(fig)
    # the operation monitor's first use imports torch's mode machinery (about 2 s, a loaded machine's 4 s
    # call limit gone): paid here once, it leaves nothing active (the monitor undoes itself on exit)
    with op_guard.OpGuard(max_numel=None):
        torch.softmax(scores.detach(), dim=-1).sum()


def zygote(private_dirs: bool, output_cap: int, job_uid: int | None = None) -> None:
    """Serve jobs named on stdin, one at a time; report each one's end on stdout (``protocol.job_done``).

    Each job prints into a pipe that a thread of this process drains (the first ``output_cap`` bytes are
    kept, in the job's ``output.txt``); no thread is left when the next job is forked. No process of a job is
    left either (``_reap_leftovers``): if one still is after ``REAP_SECONDS``, the zygote says so
    (``protocol.ZYGOTE_RETIRED``) before the job's end and exits, and the grader starts a fresh one.

    ``private_dirs``: bubblewrap's sandbox, whose pid namespace is ours (we are its pid 2, under its init).
    ``job_uid``: the uid the jobs drop to, when it is theirs alone (``sandbox.WorkerUid``).
    """
    slot = WORKDIR
    own_pid_namespace = private_dirs and os.getpid() == 2  # outside a new namespace pid 2 is the kernel's
    if job_uid is not None and job_uid < WORKER_UID_BASE:  # never a uid that other processes may share
        job_uid = None
    _prctl(PR_SET_CHILD_SUBREAPER, 1)
    try:
        _warm_up()
    except Exception:  # noqa: BLE001 - only a matter of speed: the jobs pay it themselves then
        traceback.print_exc(file=sys.stdout)
    control = sys.stdout
    control.write(protocol.ZYGOTE_READY + "\n")
    control.flush()
    for line in sys.stdin:
        name = line.strip()
        if not protocol.valid_job_name(name):
            continue
        job = os.path.join(slot, name)
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read_end)
            _run_job(job, write_end)
        os.close(write_end)
        drain = _Drain(read_end, output_cap)
        _, status = os.waitpid(pid, 0)
        cleared = _reap_leftovers(own_pid_namespace, job_uid)  # also closes the pipe's write ends they held
        # a leftover that could not be cleared may still hold the pipe: the job's end must reach the grader
        # well within its JOB_END_WAIT, or the student's finished job would count as stopped
        drain.finish(os.path.join(job, protocol.OUTPUT), wait=10.0 if cleared else 1.0)
        if private_dirs:
            _empty_private_dirs()
        if not cleared:  # said before the job's end, so the grader never hands this zygote another job
            control.write(protocol.ZYGOTE_RETIRED + "\n")
        control.write(protocol.job_done(name, os.waitstatus_to_exitcode(status)) + "\n")
        control.flush()
        if not cleared:
            os._exit(protocol.HARNESS_EXIT)


if __name__ == "__main__":
    if "--zygote" in sys.argv[2:]:
        caps = [int(a.split("=", 1)[1]) for a in sys.argv[2:] if a.startswith("--output-cap=")]
        uids = [int(a.split("=", 1)[1]) for a in sys.argv[2:] if a.startswith("--job-uid=")]
        zygote(private_dirs="--private-tmp" in sys.argv[2:], output_cap=caps[0] if caps else 64 << 10,
               job_uid=uids[0] if uids else None)
    else:
        main()
