"""Start the worker process: bubblewrap where available, resource limits always.

Isolation levels, reported with every submission:
- ``bubblewrap``: new pid, network, ipc and uts namespaces; the file system holds only the Python
  installation, the virtual environment's packages and the worker's own directory (no repository,
  no report paths); the worker drops to ``nobody`` so the process limit applies.
- ``rlimits``: no bubblewrap; resource limits, a scrubbed environment, a fresh working directory and
  the worker's import block only. The report says isolation is reduced.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import resource
import secrets
import shutil
import signal
import site
import stat
import subprocess
import sys
import sysconfig
import tempfile
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

from autograder.safe_io import WorkerDir

# The worker's code, copied into its directory: the harness, and the course's call-program interpreter
# (stdlib and torch only; the same file runs the reference in the grader).
WORKER_FILES = {"main.py": Path(__file__).with_name("worker") / "main.py",
                "protocol.py": Path(__file__).with_name("worker") / "protocol.py",
                "program.py": Path(__file__).resolve().parent.parent / "exercises" / "program.py",
                "op_guard.py": Path(__file__).resolve().parent.parent / "exercises" / "op_guard.py"}
NOBODY = 65534
PR_SET_CHILD_SUBREAPER = 36
TAG_VARIABLE = "SELFATTN_WORKER_TAG"


@dataclass(frozen=True)
class Limits:
    """Bounds on one worker; the grader's CLI and pytest options set them."""

    call_timeout: float = 30.0  # seconds per graded call
    cell_timeout: float = 60.0  # seconds per notebook cell (given or answer)
    startup_timeout: float = 60.0  # seconds to import torch and read the plan
    memory_bytes: int = 6 << 30  # address space on CPU (CUDA reserves far more virtual memory: see below)
    gpu_rss_bytes: int = 8 << 30  # resident host memory when CUDA is in use (polled: RLIMIT_AS breaks CUDA)
    cuda_memory_fraction: float = 0.5  # of the GPU's memory, set in the worker before student code runs
    processes: int = 256  # RLIMIT_NPROC for the unprivileged worker user
    file_bytes: int = 256 << 20  # RLIMIT_FSIZE: no single file larger
    output_bytes: int = 64 << 10  # stdout+stderr kept for the report; the rest is read and dropped


def bubblewrap() -> str | None:
    """Path of a working ``bwrap``, or None (absent, or namespaces are not permitted here)."""
    path = shutil.which("bwrap")
    if not path:
        return None
    probe = subprocess.run([path, "--ro-bind", "/", "/", "--unshare-net", "--unshare-pid", "true"],
                           capture_output=True, timeout=20)
    return path if probe.returncode == 0 else None


def _world_traversable(path: Path) -> bool:
    for part in [path, *path.parents]:
        try:
            if not part.stat().st_mode & stat.S_IXOTH:
                return False
        except OSError:
            return False
    return True


def become_subreaper() -> None:
    """Orphans of a worker (a daemon that called setsid) are re-parented to us, so we can kill them."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):  # pragma: no cover - non-Linux
        pass


def tagged_pids(tag: str) -> list[int]:
    """Processes whose environment carries this worker's tag (the worker and anything it started)."""
    needle = f"{TAG_VARIABLE}={tag}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def kill_tagged(tag: str) -> int:
    """SIGKILL every process whose environment carries this worker's tag; returns how many."""
    killed = 0
    for pid in tagged_pids(tag):
        try:
            os.kill(pid, signal.SIGKILL)
            killed += 1
        except (ProcessLookupError, PermissionError):
            continue
    return killed


def _python_roots() -> list[Path]:
    roots = {Path(sys.base_prefix).resolve(), Path(sys.prefix).resolve(), Path(sys.prefix).absolute()}
    for p in [*site.getsitepackages(), sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]:
        roots.add(Path(p).resolve())
    exe = Path(sys.executable)
    roots.add(exe.parent)
    roots.add(exe.resolve().parent)
    # Anything under /usr is covered by binding /usr whole. Only folders that exist, and none inside
    # another: Debian's site.getsitepackages() names absent ones (<venv>/lib/python3/dist-packages),
    # and bwrap cannot create their parents inside a tree it has already mounted read-only.
    usr = Path("/usr")
    present = sorted(r for r in roots if r != usr and usr not in r.parents and r.is_dir())
    return [r for r in present if not any(other != r and other in r.parents for other in present)]


def _bwrap_command(bwrap: str, workdir: Path, env: dict[str, str], cuda: bool, extra_args: list[str]) -> list[str]:
    cmd = [bwrap, "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
           "--die-with-parent", "--new-session", "--clearenv",
           "--ro-bind", "/usr", "/usr", "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]
    for name in ("lib", "lib64", "bin", "sbin"):
        target = Path("/") / name
        if target.is_symlink():
            cmd += ["--symlink", os.readlink(target), str(target)]
        elif target.is_dir():
            cmd += ["--ro-bind", str(target), str(target)]
    for etc in ("/etc/ld.so.cache", "/etc/localtime", "/etc/nsswitch.conf", "/etc/passwd", "/etc/group", "/etc/fonts"):
        if Path(etc).exists():
            cmd += ["--ro-bind", etc, etc]
    made: set[Path] = set()
    for root in _python_roots():
        for parent in reversed(root.parents):
            if parent not in made and str(parent) != "/":
                cmd += ["--perms", "0755", "--dir", str(parent)]
                made.add(parent)
        cmd += ["--ro-bind-try", str(root), str(root)]
    if cuda:
        for dev in Path("/dev").glob("nvidia*"):
            cmd += ["--dev-bind", str(dev), str(dev)]
        # /usr/local/nvidia and /usr/local/cuda come with /usr (bound whole above; binding them again
        # inside that read-only mount fails)
        for extra in ("/run/nvidia-persistenced",):
            if Path(extra).exists():
                cmd += ["--ro-bind", extra, extra]
    cmd += ["--bind", str(workdir), "/sandbox", "--chdir", "/sandbox"]
    for key, value in env.items():
        cmd += ["--setenv", key, value.replace(str(workdir), "/sandbox")]
    return cmd + ["--", sys.executable, "-I", "/sandbox/main.py", "/sandbox", *extra_args]


@dataclass
class Launched:
    process: subprocess.Popen
    tag: str
    isolation: str


def prepare_workdir(wdir: WorkerDir, copy_worker: bool = True, uid: int = NOBODY) -> None:
    """Copy the worker's files in (a warm worker's job needs none); hand the directory to the worker's user
    (``uid``) if we are root. Only before the worker starts: the directory holds nothing but the grader's files."""
    if copy_worker:
        for name, origin in WORKER_FILES.items():
            wdir.create(name, origin.read_bytes())
    if os.geteuid() == 0:  # the worker runs as its own user: it must read its inputs and write its outputs
        wdir.give_to(uid, uid)


def launch(workdir: Path, limits: Limits, cuda: bool, use_bwrap: str | None, zygote: bool = False,
           job_uid: int | None = None) -> Launched:
    """Start the worker on ``workdir`` (which already holds plan and inputs).

    ``zygote``: start a warm worker on a slot directory instead (``autograder/pool.py``): it reads job
    names on stdin, so stdin is a pipe, and under bubblewrap it empties its private /tmp between jobs.
    ``job_uid``: the uid of the zygote's jobs, theirs alone (a ``WorkerUid``): between jobs it kills every
    process of that uid (told here, never read from a job's plan, which the job can change).
    """
    tag = uuid.uuid4().hex
    env = {"PATH": "/usr/bin:/bin", "HOME": str(workdir), "LANG": "C.UTF-8", "MPLBACKEND": "Agg",
           "USER": "selfattn-worker", "LOGNAME": "selfattn-worker",  # the worker's uid has no passwd entry
           "MPLCONFIGDIR": str(workdir / ".mpl"), "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1",
           TAG_VARIABLE: tag}
    if cuda:
        for key in ("CUDA_VISIBLE_DEVICES", "LD_LIBRARY_PATH", "NVIDIA_VISIBLE_DEVICES"):
            if key in os.environ:
                env[key] = os.environ[key]
    else:  # a CPU worker sees no GPU: its rows are the CPU's, and a warm one must never initialise CUDA
        env["CUDA_VISIBLE_DEVICES"] = ""

    def limit_resources() -> None:
        if not cuda:  # CUDA maps tens of GB of virtual address space; it is bounded by polling RSS instead
            resource.setrlimit(resource.RLIMIT_AS, (limits.memory_bytes, limits.memory_bytes))
        resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_bytes, limits.file_bytes))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_NPROC, (limits.processes, limits.processes))

    uid_arg = [f"--job-uid={job_uid}"] if job_uid is not None else []
    if use_bwrap:
        warm = ["--zygote", "--private-tmp", f"--output-cap={limits.output_bytes}", *uid_arg] if zygote else []
        cmd = _bwrap_command(use_bwrap, workdir, env, cuda, warm)
        isolation = "bubblewrap"
        plan_env = None
    else:
        warm = ["--zygote", f"--output-cap={limits.output_bytes}", *uid_arg] if zygote else []
        cmd = [sys.executable, "-I", str(workdir / "main.py"), str(workdir), *warm]
        isolation = "rlimits"
        plan_env = env
    with _LAUNCH_LOCK:  # registered before any reap_orphans can see it
        _TAGS.append(tag)
        process = subprocess.Popen(
            cmd, cwd=workdir, env=plan_env if plan_env is not None else {},
            stdin=subprocess.PIPE if zygote else subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=limit_resources,
        )
        _LAUNCHED.add(process.pid)
    return Launched(process, tag, isolation)


# --- a user of its own for every concurrent worker ------------------------------------------------------
# RLIMIT_NPROC counts the processes of a user: workers that shared ``nobody`` shared it, so one student's
# fork bomb left the others none. Each worker (a cold one, or a zygote and its jobs) gets a uid of a range
# that no account uses, held through a lock file that only root can reach, so that two graders on one
# machine never hand out the same uid at once.
WORKER_UID_BASE = 1_700_000_000
WORKER_UID_COUNT = 4096
UID_LOCK_DIRS = ("/run/selfattn-worker-uids", "/var/lock/selfattn-worker-uids")


def _uid_lock_dir() -> str:
    """A folder for the uid locks that only root can change (made 0700, checked: never a link, never shared)."""
    for folder in (*UID_LOCK_DIRS, os.path.join(tempfile.gettempdir(), "selfattn-worker-uids-root")):
        try:
            os.mkdir(folder, 0o700)
        except FileExistsError:
            pass
        except OSError:
            continue
        info = os.lstat(folder)
        if stat.S_ISDIR(info.st_mode) and info.st_uid == 0 and not info.st_mode & 0o077:
            return folder
    raise OSError("no folder for the worker uids' locks that only root can change")


class WorkerUid:
    """An unprivileged uid for one worker, held (``flock``) until ``release``; the gid has the same number."""

    def __init__(self):
        import fcntl

        folder = _uid_lock_dir()
        start = secrets.randbelow(WORKER_UID_COUNT)  # fewer collisions between graders that start together
        for step in range(WORKER_UID_COUNT):
            uid = WORKER_UID_BASE + (start + step) % WORKER_UID_COUNT
            fd = os.open(os.path.join(folder, str(uid)), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                continue
            self.uid, self._fd = uid, fd
            kill_user(uid)  # whatever a grader that died while holding it left running
            return
        raise OSError(f"all {WORKER_UID_COUNT} worker uids are in use")

    def release(self) -> None:
        """Kill whatever still runs as this uid (nothing else may: the uid was ours), then let it go."""
        if self._fd is not None:
            kill_user(self.uid)
            os.close(self._fd)
            self._fd = None


def kill_user(uid: int) -> None:
    """SIGKILL every process of ``uid`` at once: ``kill(-1)`` from a process of that user (a process that
    left the worker's group and changed its environment escapes the tag, never its user)."""
    if os.geteuid() != 0 or uid < WORKER_UID_BASE:
        return
    pid = os.fork()
    if pid == 0:  # only system calls here: the grader may have threads
        try:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            os.kill(-1, signal.SIGKILL)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)


def can_drop_privileges(use_bwrap: str | None) -> bool:
    """Whether the worker can run as ``nobody``: we are root, and ``nobody`` can reach the Python it needs.

    Under bubblewrap the Python tree is re-mounted world-readable; without it, only if the interpreter,
    the standard library and the site-packages holding torch are already reachable by everyone.
    """
    if os.geteuid() != 0:
        return False
    if use_bwrap:
        return True
    paths = sysconfig.get_paths()
    needed = [Path(sys.executable), Path(paths["stdlib"]), Path(paths["purelib"]), Path(paths["platlib"])]
    return all(_world_traversable(p) for p in needed + _worker_package_dirs())


WORKER_PACKAGES = ("torch", "numpy", "safetensors", "matplotlib")  # what worker/main.py imports


def _worker_package_dirs() -> list[Path]:
    """Where the packages the worker imports live (a ``--system-site-packages`` venv takes torch from elsewhere)."""
    found = []
    for name in WORKER_PACKAGES:
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.origin:
            found.append(Path(spec.origin).parent)
    return found


# Where a grading directory can live when the worker runs as ``nobody`` without bubblewrap: every
# folder above it must let others through (a TMPDIR under /root, 0700, does not).
SHARED_TEMP_DIRS = ("/tmp", "/var/tmp", "/dev/shm")


def make_grading_root(for_other_user: bool) -> Path:
    """A fresh private directory for one run's worker directories, reachable by the worker's user.

    ``tempfile.mkdtemp`` makes it 0700; when the worker runs as another user (``nobody``, no
    bubblewrap) that user must traverse it to reach its own directory inside, so it becomes 0711
    (others may pass through, not list) under a parent that others can traverse too. Under
    bubblewrap the worker's directory is bind-mounted at /sandbox, so the path above it never matters.
    """
    candidates = [None, *SHARED_TEMP_DIRS] if for_other_user else [None]
    for base in candidates:
        try:
            root = Path(tempfile.mkdtemp(prefix="selfattn-grade-", dir=base))
        except OSError:
            continue
        if not for_other_user:
            return root
        os.chmod(root, 0o711)
        if _world_traversable(root):
            return root
        shutil.rmtree(root, ignore_errors=True)
    raise OSError("no temporary directory that the worker's user (nobody) can reach: set TMPDIR to a folder that "
                  f"others can traverse (tried $TMPDIR, {', '.join(SHARED_TEMP_DIRS)})")


_LAUNCHED: set[int] = set()  # pids of the workers we started and have not waited for yet (see reap_orphans)
_TAGS: list[str] = []  # the tag of every worker this process started (another grader's workers carry others)


def tags_started() -> list[str]:
    """The environment tags of every worker this process has started, oldest first."""
    with _LAUNCH_LOCK:
        return list(_TAGS)
_LAUNCH_LOCK = threading.Lock()


def terminate(launched: Launched) -> None:
    """Kill the worker's process group, then anything else carrying its tag (daemons that left the group)."""
    try:
        os.killpg(launched.process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        launched.process.wait(timeout=10)
    except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL cannot be ignored
        pass
    _LAUNCHED.discard(launched.process.pid)
    kill_tagged(launched.tag)
    reap_orphans()


def reap_orphans() -> int:
    """Wait for dead orphans re-parented to us (we are a subreaper), so a long batch leaves no zombies.

    Only zombies that are not workers some thread still has to wait for (their ``Popen`` does that), and
    not in our own session (a ``subprocess.run`` of ours is; a worker's descendants are not).
    """
    with _LAUNCH_LOCK:
        return _reap_unlaunched()


def _reap_unlaunched() -> int:
    reaped = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in _LAUNCHED:
            continue
        try:
            stat = (entry / "stat").read_bytes()
            state, ppid, _group, session = stat[stat.rindex(b")") + 2:].split()[:4]
            if (state == b"Z" and int(ppid) == os.getpid() and int(session) != os.getsid(0)
                    and os.waitpid(int(entry.name), os.WNOHANG)[0]):
                reaped += 1
        except (OSError, ValueError, ChildProcessError):
            continue
    return reaped
