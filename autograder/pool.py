"""Workers for ``runner.run_plan``: a fresh process per run (cold), or a job forked from a warm one.

A cold worker is ``python -I main.py WORKDIR``: it pays the interpreter and the torch import (about
2 s here) every time. A warm pool keeps one *zygote* per grading thread: the same ``main.py`` started
once, in the same sandbox and with the same limits, that imports torch, numpy and matplotlib and then
forks one worker per job (``main.py`` explains what it does between jobs). A job is the same worker
as a cold one, in a directory inside the zygote's slot, as ``nobody`` where the cold one would be.

CPU only. CUDA does not survive ``fork`` (torch refuses to initialise it in a child of a process
where it was initialised, and importing torch._dynamo, which the warm-up needs, can initialise it),
so runs on the GPU start cold workers, ``WORKERS_PER_GPU`` at a time per GPU (``gpu_slot``), each with
that share of the memory fraction a worker may use; a zygote sees no GPU at
all (``CUDA_VISIBLE_DEVICES`` is empty for CPU workers). A zygote is killed, not reused, after any
job that had to be stopped (a timeout, an RSS bound), and closed after a job whose processes it could
not all clear away in time (it says so: ``protocol.ZYGOTE_RETIRED``); the next job gets a fresh one.
"""

from __future__ import annotations

import secrets
import shutil
import threading
from pathlib import Path

from autograder import sandbox
from autograder.safe_io import WorkerDir
from autograder.worker import protocol

WORKERS_PER_GPU = 4  # cold CUDA workers sharing one GPU at a time (their memory fraction is split four ways)
OUTPUT_TAIL = 4000  # characters of a zygote's own output kept (its traceback when it could not start)


class _OutputDrain(threading.Thread):
    """Read a process's stdout to the end; keep the first ``cap`` bytes, drop the rest."""

    def __init__(self, stream, cap: int):
        super().__init__(daemon=True)
        self.stream, self.cap, self.kept, self.dropped = stream, cap, bytearray(), 0

    def run(self) -> None:
        while chunk := self.stream.read(65536):
            room = self.cap - len(self.kept)
            self.kept += chunk[:max(room, 0)]
            self.dropped += max(len(chunk) - max(room, 0), 0)

    def text(self) -> str:
        note = f"\n[... {self.dropped} more bytes of output dropped]" if self.dropped else ""
        return self.kept.decode("utf-8", "replace") + note


class ColdWorker:
    """One worker process for one run (the worker's files are copied into its directory)."""

    def __init__(self, workdir: Path, limits: sandbox.Limits, cuda: bool, use_bwrap: str | None):
        self.launched = sandbox.launch(workdir, limits, cuda, use_bwrap)
        self.isolation, self.tag = self.launched.isolation, self.launched.tag
        self.drain = _OutputDrain(self.launched.process.stdout, limits.output_bytes)
        self.drain.start()

    def poll(self) -> int | None:
        """The exit status once the worker has ended, else None."""
        return self.launched.process.poll()

    @property
    def returncode(self) -> int | None:
        return self.launched.process.returncode

    def stop(self, wait: float = 0.0) -> None:
        """Kill the worker and everything it started (``wait`` is for a warm job's sake)."""
        sandbox.terminate(self.launched)
        self.drain.join(timeout=5)

    def output(self) -> str:
        return self.drain.text()


class Zygote:
    """A warm worker: imports done, forks one job at a time (see ``worker/main.py``, ``zygote``)."""

    def __init__(self, limits: sandbox.Limits, use_bwrap: str | None, drop: bool):
        self.limits = limits
        # the jobs run as this slot's own user (one per concurrent worker: see sandbox.WorkerUid)
        self.user = sandbox.WorkerUid() if drop else None
        self.uid = self.user.uid if self.user else sandbox.NOBODY
        self.slot = sandbox.make_grading_root(drop and not use_bwrap)
        if drop:  # the jobs must pass through the slot to their own directory
            self.slot.chmod(0o711)
        for name, origin in sandbox.WORKER_FILES.items():
            shutil.copyfile(origin, self.slot / name)
        self.launched = sandbox.launch(self.slot, limits, False, use_bwrap, zygote=True,
                                       job_uid=self.user.uid if self.user else None)
        self.isolation, self.tag = self.launched.isolation, self.launched.tag
        self.ready = False
        self.retired = False  # it could not clear a job's processes away: never given another job
        self.done: dict[str, int] = {}
        self.text = ""
        self.changed = threading.Condition()
        self.reader = threading.Thread(target=self._read_control, daemon=True)
        self.reader.start()

    def _read_control(self) -> None:
        for raw in self.launched.process.stdout:
            line = raw.decode("utf-8", "replace")
            finished = protocol.parse_job_done(line)
            with self.changed:
                if line.strip() == protocol.ZYGOTE_READY:
                    self.ready = True
                elif line.strip() == protocol.ZYGOTE_RETIRED:
                    self.retired = True
                elif finished:
                    self.done[finished[0]] = finished[1]
                else:
                    self.text = (self.text + line)[-OUTPUT_TAIL:]
                self.changed.notify_all()

    def alive(self) -> bool:
        return self.launched.process.poll() is None

    def reusable(self) -> bool:
        """Alive, and every process of its last job gone (a retired zygote exits on its own)."""
        with self.changed:
            return not self.retired and self.alive()

    def new_job_dir(self) -> Path:
        workdir = self.slot / f"{protocol.JOB_PREFIX}{secrets.token_hex(8)}"
        workdir.mkdir()
        return workdir

    def start(self, wdir: WorkerDir) -> ForkedJob:
        """Fork a worker for the job in ``wdir`` (plan and inputs already written)."""
        try:
            self.launched.process.stdin.write(f"{Path(wdir.path).name}\n".encode())
            self.launched.process.stdin.flush()
        except OSError:  # the zygote is gone: the job reports its exit status, as a dead worker would
            pass
        return ForkedJob(self, wdir)

    def kill(self) -> None:
        sandbox.terminate(self.launched)

    def close(self) -> None:
        self.kill()
        self.reader.join(timeout=5)  # ends at the killed zygote's end of output; no thread left behind a closed pool
        shutil.rmtree(self.slot, ignore_errors=True)
        if self.user:  # its processes are gone: the uid may serve another worker
            self.user.release()


class ForkedJob:
    """One run's worker, forked by a zygote; stopping it early costs the zygote (it is killed)."""

    def __init__(self, zygote: Zygote, wdir: WorkerDir):
        self.zygote, self.wdir, self.workdir = zygote, wdir, Path(wdir.path)
        self.isolation, self.tag = zygote.isolation, zygote.tag
        self.returncode: int | None = None

    def poll(self) -> int | None:
        """The job's exit status once it has ended (the zygote's, if the zygote died), else None."""
        if self.returncode is None:
            code = self.zygote.done.get(self.workdir.name)
            if code is None and not self.zygote.alive():
                code = self.zygote.launched.process.returncode
                code = -9 if code is None else code
            self.returncode = code
        return self.returncode

    def stop(self, wait: float = 0.0) -> None:
        """After a job that ended, nothing; else kill the zygote with it (it is not reused).

        ``wait``: seconds to let a job that said it finished end (the zygote then reaps its leftovers).
        """
        with self.zygote.changed:
            self.zygote.changed.wait_for(lambda: self.poll() is not None, timeout=wait)
        if self.poll() is None:
            self.zygote.kill()

    def output(self) -> str:
        cap = self.zygote.limits.output_bytes + 200  # the zygote kept the first output_bytes, and a note
        try:  # the zygote wrote it, in a directory the job could change: read as any worker file
            text = self.wdir.read(protocol.OUTPUT, cap).decode("utf-8", "replace")
        except OSError:
            text = ""
        if not self.zygote.alive() and self.zygote.text:
            text += self.zygote.text
        return text


class WorkerPool:
    """Warm zygotes shared by a grading session's threads: at most one job at a time in each."""

    def __init__(self, limits: sandbox.Limits, use_bwrap: str | None, gpus: int = 1):
        self.limits, self.use_bwrap = limits, use_bwrap
        self.drop = sandbox.can_drop_privileges(use_bwrap)
        # a few CUDA workers at a time per GPU, each with its share of the card's memory (see run_calls)
        self.gpu_slots = threading.BoundedSemaphore(max(gpus, 1) * WORKERS_PER_GPU)
        self.idle: list[Zygote] = []
        self.lock = threading.Lock()
        self.closed = False

    def prewarm(self, count: int) -> None:
        """Start ``count`` CPU zygotes now, so their imports overlap the grader's own start-up."""
        with self.lock:
            missing = count - len(self.idle)
        started = [Zygote(self.limits, self.use_bwrap, self.drop) for _ in range(max(missing, 0))]
        with self.lock:
            self.idle += started

    def gpu_slot(self) -> threading.BoundedSemaphore:
        """Held while a CUDA worker runs (``with pool.gpu_slot(): ...``)."""
        return self.gpu_slots

    def acquire(self) -> Zygote:
        """An idle live zygote, or a new one (it may still be importing: the job's start-up limit covers it)."""
        with self.lock:
            while self.idle:
                zygote = self.idle.pop()
                if zygote.reusable():
                    return zygote
                zygote.close()
        return Zygote(self.limits, self.use_bwrap, self.drop)

    def release(self, zygote: Zygote) -> None:
        """Give a zygote back after a job: kept when alive and idle, else closed."""
        with self.lock:
            if zygote.reusable() and not self.closed:
                self.idle.append(zygote)
                return
        zygote.close()

    def shutdown(self) -> None:
        with self.lock:
            self.closed = True
            idle, self.idle = self.idle, []
        for zygote in idle:
            zygote.close()
