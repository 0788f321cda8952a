"""Can a student's code make the grader act on a file of the student's choosing, or wait forever?

The worker's directory belongs to the worker's user; the grader reads and writes there only through
descriptors it opened itself (``autograder/safe_io.py``). Each attack below, run against the grader
before that change, made it write through a link as root, block on a FIFO, read another file's
outputs, or wait without end; now it costs the attacker's own call at most, and the next call
(another item) is graded as usual. Every run has a deadline of its own here, so a grader that
hangs fails the test instead of hanging the suite.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from autograder import runner
from autograder.oracle import OracleResponder
from autograder.pool import WorkerPool
from autograder.runner import CallSpec, CellSpec, run_plan
from autograder.sandbox import Limits
from exercises.program import serialise_outputs
from exercises.rules import shortcut_message

LIMITS = Limits(call_timeout=5.0, cell_timeout=10.0, startup_timeout=60.0, memory_bytes=3 << 30)
BWRAP = runner.default_bwrap()
MODES = [pytest.param(BWRAP, id="bubblewrap", marks=pytest.mark.skipif(BWRAP is None, reason="no bubblewrap")),
         pytest.param(None, id="no-bubblewrap")]
WORKERS = [pytest.param(False, id="cold"), pytest.param(True, id="forked")]
DEADLINE = 120.0  # seconds: far beyond what these runs take; a grader that waits forever fails here
CLONE = [{"op": "call", "fn": "torch.clone", "args": [{"tensor": "x"}], "out": "y"},
         {"op": "output", "key": "out", "var": "y"}]
ATTACK = [{"op": "call", "fn": "attack", "args": [{"tensor": "x"}], "out": "y"},
          {"op": "output", "key": "out", "var": "y"}]
# Student code shares the worker's process: it finds the worker's own descriptor on the progress file (the
# file itself is not the student's to open) and writes events of its own making there.
FORGE = ("import json, os, time\n"
         "def progress_fd():\n"
         "    target = os.stat('progress.jsonl')\n"
         "    for fd in range(3, 256):\n"
         "        try:\n            info = os.fstat(fd)\n        except OSError:\n            continue\n"
         "        if (info.st_dev, info.st_ino) == (target.st_dev, target.st_ino):\n            return fd\n"
         "    raise RuntimeError('no descriptor on progress.jsonl')\n"
         "def forge(**event):\n"
         "    os.write(progress_fd(), (json.dumps(event) + '\\n').encode())\n")


def run_attack(code: str, use_bwrap, forked: bool = False, **options) -> runner.RunResult:
    """Call ``attack`` (call 0, item a) then ``torch.clone`` (call 1, item b) after the student's cell ``code``;
    ``forked``: in workers forked from a warm pool's zygote (closed afterwards) instead of cold ones."""
    if forked:
        pool = WorkerPool(LIMITS, use_bwrap)
        try:
            return run_attack(code, use_bwrap, pool=pool, **options)
        finally:
            pool.shutdown()
    calls = [CallSpec(0, ATTACK, {"x": torch.ones(3)}, "cpu", None, group="a"),
             CallSpec(1, CLONE, {"x": torch.arange(3.0)}, "cpu", None, group="b")]
    done: list = []

    def grade() -> None:
        try:
            done.append(run_plan([CellSpec("answer", code, "answer")], calls, LIMITS, use_bwrap=use_bwrap, **options))
        except BaseException as exc:  # noqa: BLE001 - shown by the assertion below
            done.append(exc)

    thread = threading.Thread(target=grade, daemon=True)
    thread.start()
    thread.join(DEADLINE)
    assert done, f"the grader was still waiting after {DEADLINE:g} s"
    run = done[0]
    assert not isinstance(run, BaseException), repr(run)
    assert run.calls[1].status == "ok", run.calls[1]  # the other item is graded as usual
    assert torch.equal(run.calls[1].outputs.tensors["out"], torch.arange(3.0))
    return run


def victims(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("victim"))


@pytest.mark.slow
@pytest.mark.parametrize("forked", WORKERS)
@pytest.mark.parametrize("use_bwrap", MODES)
def test_does_a_stand_in_request_in_a_run_without_stand_ins_write_through_a_link(tmp_path, use_bwrap, forked):
    victim = str(tmp_path / "victim")
    code = FORGE + (
        f"VICTIM = {victim!r}\n"
        "def attack(x):\n"
        "    from safetensors.torch import save_file\n"
        "    os.makedirs('answers', exist_ok=True)\n"
        "    for name in ('rpc_1_resp.safetensors', 'rpc_1_resp.json', '.rpc_1_resp.json'):\n"
        "        os.symlink(VICTIM + '-' + name, name)\n"
        "        os.symlink(VICTIM + '-answers' + name, os.path.join('answers', name))\n"
        "    save_file({}, 'rpc_1_req.safetensors')\n"
        "    with open('rpc_1_req.json', 'w') as fh:\n"
        "        json.dump({'kind': 'call', 'name': 'softmax_naive', 'args': [], 'kwargs': {}}, fh)\n"
        "    forge(event='rpc', n=1)\n"
        "    time.sleep(1.5)\n"
        "    return x\n")
    run = run_attack(code, use_bwrap, forked)
    assert victims(tmp_path) == []  # nothing created or changed outside the sandbox
    assert run.calls[0].status == "ok"  # and the request was simply not answered


@pytest.mark.slow
@pytest.mark.parametrize("forked", WORKERS)
@pytest.mark.parametrize("use_bwrap", MODES)
def test_does_a_swapped_answers_folder_redirect_the_grader(tmp_path, use_bwrap, forked):
    """A run with stand-ins: the student moves the grader's answers/ away and puts links in a folder of its own."""
    victim = str(tmp_path / "victim")
    code = FORGE + (
        f"VICTIM = {victim!r}\n"
        "def attack(x):\n"
        "    from safetensors.torch import save_file\n"
        "    if os.path.isdir('answers'):\n"
        "        os.rename('answers', 'moved')\n"
        "    os.makedirs('answers', exist_ok=True)\n"
        "    for name in ('rpc_7_resp.safetensors', 'rpc_7_resp.json', '.rpc_7_resp.json',\n"
        "                 '.rpc_7_resp.json.part', '.rpc_7_resp.safetensors.part'):\n"
        "        os.symlink(VICTIM + '-' + name, name)\n"
        "        os.symlink(VICTIM + '-answers' + name, os.path.join('answers', name))\n"
        "    save_file({'t0': x}, 'rpc_7_req.safetensors')\n"
        "    with open('rpc_7_req.json', 'w') as fh:\n"
        "        json.dump({'kind': 'call', 'name': 'softmax_naive', 'args': [{'tensor': 't0'}], 'kwargs': {},\n"
        "                   'device': 'cpu'}, fh)\n"
        "    forge(event='rpc', n=7)\n"
        "    time.sleep(1.5)\n"
        "    return x\n")
    oracles = {"softmax_naive": "function"}
    run_attack(code, use_bwrap, forked, oracles=oracles, responder=OracleResponder(oracles))
    assert victims(tmp_path) == []


@pytest.mark.slow
@pytest.mark.parametrize("forked", WORKERS)
@pytest.mark.parametrize("use_bwrap", MODES)
def test_do_fifos_in_place_of_a_calls_outputs_cost_only_that_call(tmp_path, use_bwrap, forked):
    code = FORGE + ("def attack(x):\n"
                    "    os.mkfifo('out_0.json')\n    os.mkfifo('out_0.safetensors')\n"
                    "    forge(event='call_done', id=0, status='ok')\n"
                    "    os._exit(0)\n")
    run = run_attack(code, use_bwrap, forked)
    assert run.calls[0].status == "missing" and "your code" in run.calls[0].error["message"]


@pytest.mark.slow
def test_does_a_fifo_in_place_of_a_stand_in_request_block_the_grader(tmp_path):
    code = FORGE + ("def attack(x):\n"
                    "    os.mkfifo('rpc_3_req.json')\n    os.mkfifo('rpc_3_req.safetensors')\n"
                    "    forge(event='rpc', n=3)\n"
                    "    time.sleep(1.5)\n"
                    "    return x\n")
    oracles = {"softmax_naive": "function"}
    run = run_attack(code, BWRAP, oracles=oracles, responder=OracleResponder(oracles))
    assert run.calls[0].status == "ok"


@pytest.mark.slow
@pytest.mark.parametrize("forked", WORKERS)
@pytest.mark.parametrize("use_bwrap", MODES)
def test_does_a_fifo_in_place_of_the_progress_file_block_the_grader(tmp_path, use_bwrap, forked):
    code = FORGE + ("def attack(x):\n"
                    "    os.unlink('progress.jsonl')\n    os.mkfifo('progress.jsonl')\n"
                    "    return x * 2\n")
    run = run_attack(code, use_bwrap, forked)
    assert run.calls[0].status == "ok" and torch.equal(run.calls[0].outputs.tensors["out"], torch.full((3,), 2.0))


@pytest.mark.slow
def test_are_outputs_linked_to_a_file_elsewhere_read(tmp_path):
    """Links to another file on the grader's machine (another student's outputs, say) are never followed."""
    tensors, meta = serialise_outputs({"out": torch.ones(3)})
    save_file(tensors, str(tmp_path / "other.safetensors"))
    (tmp_path / "other.json").write_text(json.dumps(meta))
    code = FORGE + (f"OTHER = {str(tmp_path / 'other')!r}\n"
                    "def attack(x):\n"
                    "    os.symlink(OTHER + '.json', 'out_0.json')\n"
                    "    os.symlink(OTHER + '.safetensors', 'out_0.safetensors')\n"
                    "    forge(event='call_done', id=0, status='ok')\n"
                    "    os._exit(0)\n")
    run = run_attack(code, BWRAP)
    assert run.calls[0].status == "missing" and run.calls[0].outputs is None


@pytest.mark.slow
def test_does_a_huge_progress_file_cost_only_the_call_in_flight(tmp_path):
    code = FORGE + ("def attack(x):\n"
                    f"    os.ftruncate(progress_fd(), {runner.PROGRESS_CAP + (8 << 20)})\n"
                    "    time.sleep(30)\n"
                    "    return x\n")
    run = run_attack(code, BWRAP)
    assert run.calls[0].status == "crashed"


@pytest.mark.slow
def test_does_a_worker_that_waits_after_a_forged_call_done_stop(tmp_path):
    """Between two steps no limit applied: a forged ``call_done`` and then a loop kept the grader waiting."""
    code = FORGE + ("def attack(x):\n"
                    "    forge(event='call_done', id=0, status='exception', error={'type': 'E', 'message': 'm'})\n"
                    "    while True:\n        time.sleep(0.05)\n")
    run = run_attack(code, BWRAP)
    assert run.calls[0].status == "exception"


def test_is_a_watched_call_without_the_monitors_report_clean(tmp_path):
    """A forged ``call_done`` without the monitor's report hid a built-in: a missing report is a tampered one."""
    from test_grader_trust import _watch

    events = [{"event": "ready"}, {"event": "call_start", "id": 3}, {"event": "call_done", "id": 3, "status": "ok"},
              {"event": "call_start", "id": 4}, {"event": "call_done", "id": 4, "status": "ok"}, {"event": "finished"}]
    watch = _watch(tmp_path, events, guarded={3})
    assert watch.calls[3].guard["tampered"] == runner.MISSING_REPORT
    assert watch.calls[4].guard is None  # not watched: nothing was expected
    case = type("Case", (), {"max_numel": None})()
    verdict = shortcut_message("softmax_stable", ("softmax",), [case], [watch.calls[3].guard], "")
    assert verdict is not None and runner.MISSING_REPORT in verdict
    assert shortcut_message("softmax_stable", ("softmax",), [case], [{"used": {}, "too_big": None,
                                                                        "tampered": None}], "") is None


def test_does_the_grader_refuse_links_fifos_and_big_files(tmp_path):
    from autograder.safe_io import UnsafeFile, WorkerDir

    (tmp_path / "big").write_bytes(b"x" * 100)
    (tmp_path / "ok").write_bytes(b"fine")
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "link").symlink_to(tmp_path / "ok")
    os.link(tmp_path / "ok", tmp_path / "hard")
    (tmp_path / "single").write_bytes(b"one")
    wdir = WorkerDir(tmp_path)
    try:
        assert wdir.read("single", 10) == b"one"
        for name, kind in [("big", UnsafeFile), ("fifo", UnsafeFile), ("link", OSError), ("hard", UnsafeFile)]:
            with pytest.raises(kind):
                wdir.read(name, 10)
        with pytest.raises(FileExistsError):
            wdir.create("link", b"through the link?")
        assert (tmp_path / "ok").read_bytes() == b"fine"
    finally:
        wdir.close()


# --- jobs that share nothing: namespaces and users of their own ----------------------------------------
LEAVE = ("import ctypes, os\n"
         "def attack(x):\n"
         "    libc = ctypes.CDLL(None, use_errno=True)\n"
         "    if libc.shmget(0x5E1E, 4096, 0o1666) == -1:\n"
         "        raise OSError(ctypes.get_errno(), 'shmget')\n"
         "    for folder in ('/tmp', '/dev/shm'):\n"
         "        with open(folder + '/left-by-the-first', 'w') as fh:\n"
         "            fh.write('x')\n"
         "    return x\n")
LOOK = ("import ctypes, os\n"
        "def attack(x):\n"
        "    seen = [f for f in ('/tmp/left-by-the-first', '/dev/shm/left-by-the-first') if os.path.exists(f)]\n"
        "    if ctypes.CDLL(None).shmget(0x5E1E, 0, 0) != -1:\n"
        "        seen.append('a System V segment')\n"
        "    if seen:\n"
        "        raise RuntimeError(f'left by another worker: {seen}')\n"
        "    return x\n")


@pytest.mark.slow
@pytest.mark.parametrize("use_bwrap", MODES)
def test_does_a_cold_worker_see_what_another_left_in_tmp_or_shared_memory(use_bwrap):
    first = run_attack(LEAVE, use_bwrap)
    assert first.calls[0].status == "ok", first.calls[0].error  # the student could write all three
    second = run_attack(LOOK, use_bwrap)
    assert second.calls[0].status == "ok", second.calls[0].error


@pytest.mark.skipif(os.geteuid() != 0, reason="worker uids are handed out by a root grader only")
def test_does_every_concurrent_worker_get_a_uid_of_its_own():
    import time

    from autograder import sandbox

    first, second = sandbox.WorkerUid(), sandbox.WorkerUid()
    try:
        assert first.uid != second.uid
        for user in (first, second):
            assert sandbox.WORKER_UID_BASE <= user.uid < sandbox.WORKER_UID_BASE + sandbox.WORKER_UID_COUNT
        # a process of the first uid that left every group and tag is still killed when the uid is released
        pid = os.fork()
        if pid == 0:
            try:
                os.setsid()
                os.setgid(first.uid)
                os.setuid(first.uid)
                time.sleep(60)
            finally:
                os._exit(0)
        time.sleep(0.2)
        first.release()
        deadline = time.monotonic() + 10
        while os.waitpid(pid, os.WNOHANG) == (0, 0):
            assert time.monotonic() < deadline, "a process of a released uid survived"
            time.sleep(0.05)
        third = sandbox.WorkerUid()  # the released uid may serve again; the held one may not
        assert third.uid != second.uid
        third.release()
    finally:
        first.release()
        second.release()


REFUSED = "refused: unshare(user): Operation not permitted"


@pytest.mark.slow
@pytest.mark.parametrize("refused", [False, True], ids=["granted", "refused"])
def test_does_the_report_say_when_the_system_refused_the_private_namespaces(refused, tmp_path, monkeypatch):
    """A grader that is not root where unprivileged user namespaces are off (Ubuntu 24.04's AppArmor default)
    gets no private /tmp, /dev/shm or IPC for its workers: it still grades, and the run's notes say so.

    The refusal is the list ``private_namespaces`` returns when ``unshare`` fails, put in a copy of the worker."""
    if refused:
        main = runner.sandbox.WORKER_FILES["main.py"].read_text(encoding="utf-8")
        real = 'namespaces = private_namespaces() if plan.get("private_namespaces", True) else []'
        assert real in main
        worker = tmp_path / "main.py"
        worker.write_text(main.replace(real, f"private_namespaces(); namespaces = [{REFUSED!r}]"), encoding="utf-8")
        monkeypatch.setitem(runner.sandbox.WORKER_FILES, "main.py", worker)
    run = run_plan([], [CallSpec(0, CLONE, {"x": torch.arange(3.0)}, "cpu", None, group="b")], LIMITS, use_bwrap=None)
    assert run.calls[0].status == "ok", run.calls[0].error  # graded all the same
    if refused:
        assert len(run.notes) == 1 and run.notes[0].startswith("isolation reduced") and REFUSED in run.notes[0], \
            run.notes
    else:
        assert run.notes == [], run.notes
