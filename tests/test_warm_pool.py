"""Do workers forked from a warm one grade exactly as cold ones, and does nothing of one student reach the next?

The warm pool (``autograder/pool.py``) is what the CLI uses on the CPU. Here: every hostile-submission
test of ``test_grader_hostile.py`` that involves the worker runs again, unchanged, with its notebook
graded by a forked worker (those decided before any worker runs are not repeated);
then students graded one after another in the *same* warm slot try to leave state behind for the next
(a global, a patched torch, a thread, a daemon process, a file in /tmp or /dev/shm, a System V
shared-memory segment) and the next must not see it; and two students graded at once, one of them
a fork bomb, each keep their own processes.
"""

from __future__ import annotations

import inspect

import pytest
import test_grader_hostile as hostile
from grader_fixtures import NB1, answers_from_source, write_submission

from autograder import sandbox
from autograder.grading import grade_notebook
from autograder.pool import WorkerPool

pytestmark = pytest.mark.slow


def _graded_by_a_fresh_pool(*args, use_bwrap=None, limits=None, **kwargs):
    """``grade_notebook`` with its workers forked from a warm pool made for this call (and closed after it)."""
    pool = WorkerPool(limits, use_bwrap)
    try:
        return grade_notebook(*args, use_bwrap=use_bwrap, limits=limits, **kwargs, pool=pool)
    finally:
        pool.shutdown()


# Decided before any worker runs, or by the same code whichever worker ran: nothing of the forked path to test.
NOT_ABOUT_THE_WORKER = ("test_is_a_syntax_error_charged_only_to_its_cell", "test_is_invalid_json_graded_as_failing",
                        "test_are_magics_dropped_with_a_note", "test_is_a_missing_answer_cell_reported",
                        "test_are_wrong_kinds_of_answers_named")


def _hostile_cases():
    for name, test in sorted(vars(hostile).items()):
        if not name.startswith("test_") or not callable(test) or name in NOT_ABOUT_THE_WORKER:
            continue
        marks = [m for m in getattr(test, "pytestmark", []) if m.name == "parametrize"]
        # the test is called directly, so its own skips (``needs_bwrap``: not on a machine graded without
        # bubblewrap) must come with it, or it runs where it cannot pass
        skips = [m for m in getattr(test, "pytestmark", []) if m.name in ("skip", "skipif")]
        if not marks:
            yield pytest.param(test, {}, id=name, marks=skips)
            continue
        argnames = [a.strip() for a in marks[0].args[0].split(",")]
        for index, values in enumerate(marks[0].args[1]):
            yield pytest.param(test, dict(zip(argnames, values, strict=True)), id=f"{name}[{index}]", marks=skips)


@pytest.mark.parametrize("test, params", list(_hostile_cases()))
def test_does_a_hostile_submission_fare_the_same_in_a_forked_worker(test, params, tmp_path, monkeypatch):
    monkeypatch.setattr(hostile, "grade_notebook", _graded_by_a_fresh_pool)
    wanted = inspect.signature(test).parameters
    test(**{"tmp_path": tmp_path, **params} if "tmp_path" in wanted else params)


# --- students one after another in one warm slot ----------------------------------------------------------
LEAVER = """import builtins, os, threading, time, torch
builtins.LEFT_BEHIND = "a global"
torch.allclose = lambda *a, **k: True
torch.Tensor.softmax = lambda self, dim=-1: self * 0
def _keep_patching():
    while True:
        torch.exp = lambda x: x
        time.sleep(0.01)
threading.Thread(target=_keep_patching, daemon=True).start()
if os.fork() == 0:
    os.setsid()
    while True:
        time.sleep(0.05)
import ctypes
_libc = ctypes.CDLL(None, use_errno=True)
if _libc.shmget(0x5E1F, 4096, 0o1666) == -1:  # IPC_CREAT | 0666: a System V segment outlives its process
    raise OSError(ctypes.get_errno(), "shmget")
_left = ["a System V segment"]
for _folder in ("/tmp", "/dev/shm"):
    try:  # bubblewrap's own /tmp and /dev/shm are root's: a job's private ones (worker/main.py) are everyone's
        with open(_folder + "/left-behind", "w") as fh:
            fh.write("for the next student")
        _left.append(_folder)
    except OSError:
        pass
print("left behind:", ", ".join(_left))
def softmax_naive(x, dim=-1):
    return x * 0
"""

# The next student's answer cell looks for everything the first one left, and answers wrong if it sees any of it.
LOOKER = """import builtins, os, torch
_seen = [what for what, there in [
    ("a global", hasattr(builtins, "LEFT_BEHIND")),
    ("torch.allclose patched", torch.allclose.__name__ == "<lambda>"),
    ("a Tensor method patched", getattr(torch.Tensor, "soft" + "max").__name__ == "<lambda>"),
    ("torch.exp patched", torch.exp.__name__ == "<lambda>"),
    ("a file in /tmp", os.path.exists("/tmp/left-behind") and CHECK_TMP),
    ("a file in /dev/shm", os.path.exists("/dev/shm/left-behind") and CHECK_TMP),
    ("a System V shared-memory segment", __import__("ctypes").CDLL(None).shmget(0x5E1F, 0, 0) != -1),
] if there]
if _seen:
    raise RuntimeError("state of an earlier student reached this one: " + ", ".join(_seen))
"""


def _one_slot_pool(use_bwrap):
    return WorkerPool(hostile.LIMITS, use_bwrap)


@pytest.mark.parametrize("use_bwrap", [pytest.param(hostile.BWRAP, id="bubblewrap", marks=hostile.needs_bwrap),
                                       pytest.param(None, id="rlimits")])
def test_does_anything_of_one_student_reach_the_next_in_the_same_slot(tmp_path, use_bwrap):
    answers = answers_from_source(NB1)
    first = write_submission(tmp_path / "first", NB1, {"softmax_naive": LEAVER})
    # Every job has a /tmp and /dev/shm of its own (worker/main.py, private_namespaces), without bubblewrap too
    looker = LOOKER.replace("CHECK_TMP", "True")
    second = write_submission(tmp_path / "second", NB1, {"context_vectors": looker + answers["context_vectors"]})
    pool = _one_slot_pool(use_bwrap)
    try:
        graded_first = grade_notebook(NB1, first, 7, ["cpu"], hostile.LIMITS, use_bwrap, pool=pool)
        # not "error": the whole cell ran, so everything it leaves behind was left
        first_rows = [o for o in graded_first.outcomes if o.item == "softmax_naive" and o.device == "cpu"]
        assert first_rows and all(o.score == 0 and o.status != "error" for o in first_rows), \
            [(o.name, o.status, o.message) for o in first_rows]
        assert len(pool.idle) == 1, "the slot should have been kept warm after a job that ended normally"
        zygote = pool.idle[0]
        assert sandbox.tagged_pids(zygote.tag) == [zygote.launched.process.pid] or use_bwrap, \
            "the first student's daemon outlived its job"
        graded_second = grade_notebook(NB1, second, 7, ["cpu"], hostile.LIMITS, use_bwrap, pool=pool)
        assert pool.idle == [zygote], "the second student should have been graded in the same warm slot"
    finally:
        pool.shutdown()
    lost = [(o.name, o.message) for o in graded_second.outcomes if o.device == "cpu" and o.status != "passed"]
    assert not lost, (lost, graded_second.notes)
    # and the check was not empty: every kind of leftover was there to be found
    assert "left behind: a System V segment, /tmp, /dev/shm" in graded_first.output, graded_first.output[-2000:]


def test_does_the_looker_see_what_is_left_in_its_own_process(tmp_path):
    """The check above can fail: the same two cells in one student's notebook (one process) trip it."""
    looker = LOOKER.replace("CHECK_TMP", "False")
    path = write_submission(tmp_path / "one", NB1, {"softmax_naive": LEAVER,
                                                     "context_vectors": looker + answers_from_source(NB1)[
                                                         "context_vectors"]})
    pool = _one_slot_pool(None)
    try:
        graded = grade_notebook(NB1, path, 7, ["cpu"], hostile.LIMITS, None, pool=pool)
    finally:
        pool.shutdown()
    assert any("state of an earlier student reached this one: a global, torch.allclose patched" in note
               for note in graded.notes), graded.notes


@pytest.mark.skipif(hostile.BWRAP is None, reason="bubblewrap not available: its pid namespace is not exercised")
def test_are_the_first_students_processes_gone_before_the_next_job(tmp_path):
    """Under bubblewrap the zygote's pid namespace holds only bwrap, the zygote, and the job in flight.

    It failed about one run in three (pids ``[1, 2, 13, 14]``): 13 was the first student's daemon, killed but still
    exiting when the zygote's reaping gave up (200 rounds without a pause), then a zombie the next job could see."""
    first = write_submission(tmp_path / "first", NB1, {"softmax_naive": LEAVER})
    probe = ("import os\n_pids = [p for p in os.listdir('/proc') if p.isdigit()]\n"
             "if len(_pids) > 3:\n    raise RuntimeError(f'processes left from before: {_pids}')\n")
    second = write_submission(tmp_path / "second", NB1, {"context_vectors": probe + answers_from_source(NB1)[
        "context_vectors"]})
    pool = _one_slot_pool(hostile.BWRAP)
    try:
        grade_notebook(NB1, first, 7, ["cpu"], hostile.LIMITS, hostile.BWRAP, pool=pool)
        zygote = pool.idle[0]
        graded = grade_notebook(NB1, second, 7, ["cpu"], hostile.LIMITS, hostile.BWRAP, pool=pool)
        assert pool.idle == [zygote], "the second student should have been graded in the same warm slot"
    finally:
        pool.shutdown()
    lost = [(o.name, o.message) for o in graded.outcomes if o.device == "cpu" and o.status != "passed"]
    assert not lost, (lost, graded.notes)


# Every shape of process a student might leave for the next one in the slot, each named (``PR_SET_NAME``) so the
# probe below can say which it saw; each says it is in place through a pipe before the cell ends.
LEFTOVERS = """import ctypes, os, select, signal, threading, time
_libc = ctypes.CDLL(None, use_errno=True)
_ready_r, _ready_w = os.pipe()
def _named(name):
    _libc.prctl(15, name.encode(), 0, 0, 0)  # PR_SET_NAME: /proc/<pid>/status says which shape it is
def _in_place(name):  # named, said so, and detached like a daemon (no pipe of the job's kept open)
    _named(name)
    os.write(_ready_w, b"x")
    _null = os.open(os.devnull, os.O_RDWR)
    for _fd in (0, 1, 2):
        os.dup2(_null, _fd)
    for _fd in (_null, _ready_r, _ready_w):
        os.close(_fd)
def _stay(name):
    _in_place(name)
    while True:
        time.sleep(0.05)
def _double_fork():  # the classic daemon: its parent exits, it is nobody's child
    os.setsid()
    if os.fork() == 0:
        _stay("lo-double-fork")
def _no_sigterm():
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    _stay("lo-no-sigterm")
def _setsid():
    os.setsid()
    _stay("lo-setsid")
def _own_group():  # a process group of its own, the job's session kept
    os.setpgid(0, 0)
    _stay("lo-own-group")
def _heavy():  # its exit takes a while (memory to free): its child is not yet re-parented when it is killed
    os.setsid()
    if os.fork() == 0:
        _stay("lo-orphan")
    _hog = bytearray(256 << 20)
    _hog[::4096] = b"\1" * len(range(0, len(_hog), 4096))
    _stay("lo-heavy")
def _stopped():  # SIGSTOP: a stopped process is still there
    os.setsid()
    _in_place("lo-stopped")
    os.kill(os.getpid(), signal.SIGSTOP)
    while True:
        time.sleep(0.05)
def _hopper():  # a new pid every few milliseconds: fork, and the parent exits
    os.setsid()
    _in_place("lo-hopper")
    while True:
        time.sleep(0.02)
        if os.fork() != 0:
            os._exit(0)
def _threads():  # its main thread exits, a thread of it runs on (the leader is a zombie, the process is not)
    os.setsid()
    threading.Thread(target=lambda: [time.sleep(0.05) for _ in iter(int, 1)]).start()
    _in_place("lo-threads")
    _libc.pthread_exit(None)
_SHAPES = [_double_fork, _no_sigterm, _setsid, _own_group, _heavy, _stopped, _hopper, _threads]
for _shape in _SHAPES:
    if os.fork() == 0:
        try:
            _shape()
        finally:
            os._exit(0)
_in_place, _deadline = 0, time.monotonic() + 4
while _in_place < len(_SHAPES) + 1 and select.select([_ready_r], [], [], max(_deadline - time.monotonic(), 0))[0]:
    _in_place += len(os.read(_ready_r, 64))
print(f"leftovers in place: {_in_place} of {len(_SHAPES) + 1}")
"""
LEFTOVER_NAMES = ("lo-double-fork", "lo-no-sigterm", "lo-setsid", "lo-own-group", "lo-heavy", "lo-orphan",
                  "lo-stopped", "lo-hopper", "lo-threads")

# A student's cell that lists every process that is not its own, by identity: under bubblewrap anything in the
# sandbox's pid namespace but its init (bwrap) and the zygote; in every mode anything below the zygote but itself;
# and, when the job runs as a uid of its own, anything else of that uid. Three looks, 50 ms apart (the hopper's
# pid changes under a single look).
PROBE = """import os, time
def _status(pid):
    try:
        with open(f"/proc/{pid}/status") as fh:
            return {k: v.strip() for k, _, v in (line.partition(":") for line in fh)}
    except OSError:
        return None
def _below(pid, ancestor):
    for _ in range(100):
        status = _status(pid)
        if status is None:
            return False
        pid = int(status["PPid"])
        if pid == ancestor:
            return True
        if pid <= 1:
            return False
    return False
_me, _zygote, _uid = os.getpid(), os.getppid(), os.getuid()
_own_namespace = _zygote == 2 and (_status(1) or {}).get("Name") == "bwrap"
_others = set()
for _look in range(3):
    for _pid in sorted(int(p) for p in os.listdir("/proc") if p.isdigit()):
        _st = _status(_pid)
        if _pid in (_me, _zygote) or _st is None or (_own_namespace and _pid == 1):
            continue
        if _own_namespace or _below(_pid, _zygote) or (
                _uid >= 1_700_000_000 and int(_st["Uid"].split()[0]) == _uid):
            _others.add(f"{_st['Name']}({_st['State'][0]})")
    time.sleep(0.05)
if _others:
    raise RuntimeError("processes from before: " + " ".join(sorted(_others)))
"""

BOTH_MODES = [pytest.param(hostile.BWRAP, id="bubblewrap", marks=hostile.needs_bwrap), pytest.param(None, id="rlimits")]


@pytest.mark.parametrize("use_bwrap", BOTH_MODES)
def test_does_the_probe_see_every_shape_of_leftover_in_its_own_job(tmp_path, use_bwrap):
    """The check below can fail: in one student's notebook (one job) the probe names every shape left running."""
    answers = answers_from_source(NB1)
    path = write_submission(tmp_path / "one", NB1, {"softmax_naive": LEFTOVERS + answers["softmax_naive"],
                                                     "context_vectors": PROBE + answers["context_vectors"]})
    pool = _one_slot_pool(use_bwrap)
    try:
        graded = grade_notebook(NB1, path, 7, ["cpu"], hostile.LIMITS, use_bwrap, pool=pool)
    finally:
        pool.shutdown()
    assert "leftovers in place: 9 of 9" in graded.output, graded.output[-2000:]
    seen = [o.message for o in graded.outcomes if o.item == "context_vectors" and o.device == "cpu"]
    assert seen and all(all(name in message for name in LEFTOVER_NAMES) for message in seen), seen


@pytest.mark.parametrize("use_bwrap", BOTH_MODES)
def test_is_every_shape_of_leftover_gone_before_the_next_job(tmp_path, use_bwrap):
    """A daemon (double fork), a process that ignores SIGTERM, one in a session or a process group of its own, the
    child of a parent slow to die, a stopped one, one that changes its pid all the time, one whose main thread
    exited while a thread runs on: none is there when the next student's job in the same warm slot starts."""
    answers = answers_from_source(NB1)
    first = write_submission(tmp_path / "first", NB1, {"softmax_naive": LEFTOVERS + answers["softmax_naive"]})
    second = write_submission(tmp_path / "second", NB1, {"context_vectors": PROBE + answers["context_vectors"]})
    pool = _one_slot_pool(use_bwrap)
    try:
        graded_first = grade_notebook(NB1, first, 7, ["cpu"], hostile.LIMITS, use_bwrap, pool=pool)
        zygote = pool.idle[0]
        graded_second = grade_notebook(NB1, second, 7, ["cpu"], hostile.LIMITS, use_bwrap, pool=pool)
        assert pool.idle == [zygote], "the second student should have been graded in the same warm slot"
    finally:
        pool.shutdown()
    assert "leftovers in place: 9 of 9" in graded_first.output, graded_first.output[-2000:]
    lost = [(o.name, o.message) for o in graded_second.outcomes if o.device == "cpu" and o.status != "passed"]
    assert not lost, (lost, graded_second.notes)


def test_is_a_slot_whose_job_was_stopped_replaced(tmp_path):
    """A timeout kills the zygote with its job; the next student gets a fresh one and full marks."""
    loop = "def attention_scores_loop(inputs):\n    while True:\n        pass\n"
    first = write_submission(tmp_path / "first", NB1, {"attention_scores_loop": loop})
    second = write_submission(tmp_path / "second", NB1, {})
    pool = _one_slot_pool(hostile.BWRAP)
    try:
        graded_first = grade_notebook(NB1, first, 7, ["cpu"], hostile.LIMITS, hostile.BWRAP, pool=pool)
        assert {o.status for o in graded_first.outcomes if o.item == "attention_scores_loop" and o.device == "cpu"} \
            == {"timeout"}
        graded_second = grade_notebook(NB1, second, 7, ["cpu"], hostile.LIMITS, hostile.BWRAP, pool=pool)
    finally:
        pool.shutdown()
    assert all(o.status == "passed" for o in graded_second.outcomes if o.device == "cpu")


def test_does_a_pool_for_another_isolation_mode_fall_back_to_cold_workers(tmp_path):
    """A pool serves only runs of its own isolation mode; any other run starts cold workers."""
    path = write_submission(tmp_path / "student", NB1, {})
    pool = WorkerPool(hostile.LIMITS, "/no/such/bwrap")
    try:
        graded = grade_notebook(NB1, path, 7, ["cpu"], hostile.LIMITS, None, pool=pool)
        assert pool.idle == []
    finally:
        pool.shutdown()
    assert graded.isolation == "rlimits"
    assert all(o.status == "passed" for o in graded.outcomes if o.device == "cpu")


def test_is_the_pools_slot_out_of_the_students_reach(tmp_path):
    """Privilege drop path: the slot holding the zygote's files is root's; a job (nobody) cannot list it."""
    if not sandbox.can_drop_privileges(None):
        pytest.skip("the worker does not drop privileges here (not root, or Python not world-readable)")
    code = ("import os\ntry:\n    os.listdir('..')\n    raise RuntimeError('the slot can be listed')\n"
            "except PermissionError:\n    pass\n")
    path = write_submission(tmp_path / "student", NB1, {"softmax_naive": code + answers_from_source(NB1)[
        "softmax_naive"]})
    pool = WorkerPool(hostile.LIMITS, None)
    try:
        graded = grade_notebook(NB1, path, 7, ["cpu"], hostile.LIMITS, None, pool=pool)
    finally:
        pool.shutdown()
    assert all(o.status == "passed" for o in graded.outcomes if o.device == "cpu")



# --- two students at once: one student's fork bomb must not starve the other's worker --------------------
BOMB = """import os, time
_hit_limit = False
for _ in range(10_000):
    try:
        if os.fork() == 0:
            time.sleep(30)
            os._exit(0)
    except OSError:  # the process limit of this worker's user
        _hit_limit = True
        break
if not _hit_limit:
    raise RuntimeError("the fork bomb never reached a process limit")
time.sleep(10)  # the job (and with it its processes, reaped when it ends) stays while the neighbour runs
"""
NEIGHBOUR = """import threading, time
time.sleep(4)  # the bomb beside is in place by now
_go = threading.Event()
_helpers = [threading.Thread(target=_go.wait) for _ in range(4)]
for _helper in _helpers:
    _helper.start()  # a thread counts against the process limit of the worker's user
_go.set()
for _helper in _helpers:
    _helper.join()
"""


@pytest.mark.parametrize("use_bwrap", [pytest.param(hostile.BWRAP, id="bubblewrap", marks=hostile.needs_bwrap),
                                       pytest.param(None, id="rlimits")])
def test_does_a_fork_bomb_starve_a_student_graded_at_the_same_time(tmp_path, use_bwrap):
    import threading
    from dataclasses import replace

    if not sandbox.can_drop_privileges(use_bwrap):
        pytest.skip("the worker does not drop privileges here: every worker is the grader's own user")
    limits = replace(hostile.LIMITS, processes=48, cell_timeout=30.0)
    answers = answers_from_source(NB1)
    bomber = write_submission(tmp_path / "bomber", NB1, {"softmax_naive": BOMB + answers["softmax_naive"]})
    neighbour = write_submission(tmp_path / "neighbour", NB1, {"softmax_naive": NEIGHBOUR + answers["softmax_naive"]})
    pool = WorkerPool(limits, use_bwrap)
    pool.prewarm(2)
    graded: dict = {}

    def grade(name, path):
        graded[name] = grade_notebook(NB1, path, 7, ["cpu"], limits, use_bwrap, pool=pool)

    threads = [threading.Thread(target=grade, args=(name, path)) for name, path in
               (("bomber", bomber), ("neighbour", neighbour))]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(300)
    finally:
        pool.shutdown()
    assert set(graded) == {"bomber", "neighbour"}
    # the bomb went off (its cell raises if no limit stopped it) and cost its author nothing else
    assert all(o.status == "passed" for o in graded["bomber"].outcomes if o.device == "cpu"), \
        [(o.name, o.message) for o in graded["bomber"].outcomes if o.status != "passed"]
    lost = [(o.name, o.message) for o in graded["neighbour"].outcomes if o.device == "cpu" and o.status != "passed"]
    assert not lost, (lost, graded["neighbour"].notes)


def test_does_a_run_on_the_gpu_start_a_cold_worker():
    """CUDA does not survive fork: a run with CUDA calls never takes a warm worker (exercised here on the CPU;
    on a GPU machine ``scripts/gpu_check.py`` grades the examples on cuda through the same path)."""
    import torch

    from autograder.runner import PROBE_PROGRAM, CallSpec, run_plan

    pool = WorkerPool(hostile.LIMITS, hostile.BWRAP)
    probe = CallSpec(0, PROBE_PROGRAM, {"x": torch.arange(6, dtype=torch.float32)}, "cpu", None)
    try:
        run = run_plan([], [probe], hostile.LIMITS, cuda=True, use_bwrap=hostile.BWRAP, pool=pool)
        assert run.calls[0].status == "ok" and torch.equal(run.calls[0].outputs.tensors["out"], probe.inputs["x"])
        assert pool.idle == [], "a GPU run must not fork from (or start) a warm worker"
    finally:
        pool.shutdown()


# --- without bubblewrap: the zygote's reaping itself, with a uid of the jobs' own and without one ------------
# The modes without bubblewrap grade here as root without a privilege drop (this machine's Python lies under
# /root: ``sandbox.can_drop_privileges`` is False), so the privilege-drop path of ``_reap_leftovers`` (``kill(-1)``
# as the slot's uid) is driven directly: a "job" forked as that uid leaves every shape above, the zygote's code
# clears them, and nothing of that uid nor below the zygote may remain.
REAPER = """import json, os, sys, time
work, uid = sys.argv[1], (None if sys.argv[2] == "none" else int(sys.argv[2]))
sys.argv = [sys.argv[0], work]
import importlib.util
spec = importlib.util.spec_from_file_location("worker_main", os.path.join(work, "main.py"))
worker = importlib.util.module_from_spec(spec)
spec.loader.exec_module(worker)
worker._prctl(worker.PR_SET_CHILD_SUBREAPER, 1)
leftovers = open(os.path.join(work, "leftovers.py")).read()  # read as root: the folder is root's
job = os.fork()
if job == 0:
    try:
        os.setsid()
        if uid is not None:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
        exec(compile(leftovers, "<leftovers>", "exec"), {"__name__": "job"})
        sys.stdout.flush()
    finally:
        os._exit(0)
os.waitpid(job, 0)
cleared = worker._reap_leftovers(False, uid)
time.sleep(0.2)  # anything missed would show now
def status(pid):
    try:
        with open(f"/proc/{pid}/status") as fh:
            return {k: v.strip() for k, _, v in (line.partition(":") for line in fh)}
    except OSError:
        return None
left = []
for pid in (int(p) for p in os.listdir("/proc") if p.isdigit()):
    st = status(pid)
    if st is None or pid == os.getpid():
        continue
    below, up = False, st
    for _ in range(100):
        if up is None or int(up["PPid"]) <= 1:
            break
        if int(up["PPid"]) == os.getpid():
            below = True
            break
        up = status(int(up["PPid"]))
    if below or (uid is not None and int(st["Uid"].split()[0]) == uid):
        left.append(f"{st['Name']}({st['State'][0]})")
print(json.dumps({"cleared": cleared, "left": left}))
"""


@pytest.mark.parametrize("own_uid", [True, False], ids=["uid of the jobs' own", "the grader's user"])
def test_does_the_zygote_clear_every_leftover_without_bubblewrap(tmp_path, own_uid):
    import json
    import os
    import shutil
    import subprocess
    import sys

    if os.geteuid() != 0:
        pytest.skip("needs root: the jobs' uid of their own (and, without it, a subreaper's tree) as root grades")
    for name, origin in sandbox.WORKER_FILES.items():
        shutil.copyfile(origin, tmp_path / name)
    (tmp_path / "leftovers.py").write_text(LEFTOVERS)
    user = sandbox.WorkerUid() if own_uid else None
    try:
        done = subprocess.run([sys.executable, "-c", REAPER, str(tmp_path), str(user.uid) if user else "none"],
                              capture_output=True, text=True, timeout=120, cwd=tmp_path)
    finally:
        if user:
            user.release()
    assert "leftovers in place: 9 of 9" in done.stdout, (done.stdout, done.stderr[-2000:])
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report == {"cleared": True, "left": []}, report


def test_is_a_zygote_that_cannot_clear_a_job_retired_without_cost_to_anyone(tmp_path, monkeypatch):
    """A zygote whose job left something it could not clear in time says so before the job's end and exits: the
    student keeps every point, the slot is never reused, the next student gets a fresh zygote and full marks.
    (Its deadline is set to zero in a copy of the worker, so any leftover at all outlasts it.)"""
    patched = tmp_path / "main.py"
    source = sandbox.WORKER_FILES["main.py"].read_text()
    assert "\nREAP_SECONDS = 5.0\n" in source
    patched.write_text(source.replace("\nREAP_SECONDS = 5.0\n", "\nREAP_SECONDS = 0.0\n"))
    monkeypatch.setitem(sandbox.WORKER_FILES, "main.py", patched)
    answers = answers_from_source(NB1)
    first = write_submission(tmp_path / "first", NB1, {"softmax_naive": LEFTOVERS + answers["softmax_naive"]})
    second = write_submission(tmp_path / "second", NB1, {"context_vectors": PROBE + answers["context_vectors"]})
    pool = _one_slot_pool(hostile.BWRAP)
    try:
        graded_first = grade_notebook(NB1, first, 7, ["cpu"], hostile.LIMITS, hostile.BWRAP, pool=pool)
        assert pool.idle == [], "a zygote that could not clear its job's processes was kept"
        graded_second = grade_notebook(NB1, second, 7, ["cpu"], hostile.LIMITS, hostile.BWRAP, pool=pool)
    finally:
        pool.shutdown()
    assert "leftovers in place: 9 of 9" in graded_first.output, graded_first.output[-2000:]
    for graded in (graded_first, graded_second):
        lost = [(o.name, o.message) for o in graded.outcomes if o.device == "cpu" and o.status != "passed"]
        assert not lost, (lost, graded.notes)
