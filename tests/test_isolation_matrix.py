"""Are grades the same on every machine: with bubblewrap, without it (root, with and without a privilege
drop), and for a grader that is not root? And does the built wheel, with no extras, grade at all?

Every mode grades, in one CLI call, a batch of three students: ``perfect`` and ``one_wrong`` (the bundled
examples) and ``hostile`` (lesson 1 only: an infinite loop, ``os._exit``, a memory bomb and a forged
report, each in its own item; ``attention_scores`` and ``simple_self_attention`` left honest).

The modes without bubblewrap need a Python tree that ``nobody`` can read: a virtual environment made
from Debian's ``/usr/bin/python3.11`` holding the project's wheel and its runtime dependencies only.
It is cached as ``.venv-debian-<hash of pyproject.toml>`` in the repository (gitignored), or, where a folder
above the repository keeps other users out (a clone made with ``mktemp -d``), in a folder of this user's under
``/var/tmp`` (``venv_home``): the worker's uid must reach that Python. It is built in a
temporary folder and renamed into place, so an interrupted build is never reused; the project's own
code is reinstalled into it whenever ``autograder/``, ``exercises/`` or ``solutions/`` change.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import nbformat
import pytest
from grader_fixtures import NB1, write_submission

from autograder.sandbox import WORKER_UID_BASE, WORKER_UID_COUNT

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
REPO_PYTHON = REPO / ".venv" / "bin" / "python"
DEBIAN_PYTHON = Path("/usr/bin/python3.11")
PACKAGES = ("autograder", "exercises", "solutions")
NOBODY = 65534
IS_ROOT = os.geteuid() == 0
SEED = 1234
GRADE_TIMEOUT = 420  # seconds for one CLI call (a batch of three students)
TIMING = ["--device", "cpu", "--call-timeout", "5", "--cell-timeout", "10", "--memory-mib", "2048"]
SABOTAGED = ("attention_scores_loop", "softmax_naive", "softmax_stable", "context_vectors")
HONEST = ("attention_scores", "simple_self_attention")
FORGED_NAMES = ("report.json", "results.json")

HOSTILE = {
    "attention_scores_loop": '''
def attention_scores_loop(inputs):
    while True:  # never returns
        pass
''',
    "softmax_naive": '''
def softmax_naive(x, dim=-1):
    import os
    os._exit(3)
''',
    # Claims success every way the worker protocol might allow: progress events saying every call
    # finished fine, out_<id>.json per call, report-like files; then returns a wrong answer.
    "softmax_stable": '''
def softmax_stable(x, dim=-1):
    import json
    try:
        with open("plan.json", encoding="utf-8") as fh:
            ids = [call["id"] for call in json.load(fh).get("calls", [])]
    except (OSError, ValueError):
        ids = list(range(200))
    try:
        with open("progress.jsonl", "a", encoding="utf-8") as fh:
            for i in ids:
                fh.write(json.dumps({"event": "call_done", "id": i, "status": "ok", "used": []}) + "\\n")
    except OSError:
        pass
    claim = {"score": 43, "max_score": 43, "passed": True, "tests": []}
    for name in [f"out_{i}.json" for i in ids] + ["report.json", "results.json"]:
        try:
            with open(name, "w", encoding="utf-8") as fh:
                json.dump(claim, fh)
        except OSError:
            pass
    return torch.zeros_like(x)
''',
    # ~20 GB touched page by page: the machine has less; only the grader's memory limit stops it. The
    # message carries the uid the student code ran as, its IPC and mount namespaces and what it can list of the
    # folder above its own: honest observables of the privilege drop and of the private namespaces (System V
    # memory, /tmp, /dev/shm of its own).
    "context_vectors": '''
def context_vectors(weights, inputs):
    import os
    spaces = " ".join(os.readlink(f"/proc/self/ns/{kind}") for kind in ("ipc", "mnt"))
    try:
        above = ",".join(sorted(os.listdir(".."))) or "empty"
    except PermissionError:
        above = "unlistable"
    spaces += f" parent={above}"
    try:
        bomb = torch.empty(5_000_000_000, dtype=torch.float32).fill_(1.0)
    except RuntimeError as exc:
        raise MemoryError(f"memory bomb stopped; worker uid={os.getuid()} ns={spaces}: {str(exc)[:60]}") from exc
    return weights @ inputs + bomb[:1] * 0
''',
}


# --- helpers ----------------------------------------------------------------------------------------

def _sha256_of(paths: list[Path], root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def _project_files() -> list[Path]:
    """What goes into the wheel (pyproject and the three packages, bytecode excluded)."""
    files = [REPO / "pyproject.toml", REPO / "README.md"]
    for package in PACKAGES:
        files += [p for p in (REPO / package).rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    return files


def _run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed ({result.returncode}):\n"
                           f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def _make_world_readable(root: Path) -> None:
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames, "."]:
            path = Path(dirpath) / name
            if path.is_symlink():
                continue
            mode = path.stat().st_mode
            extra = stat.S_IROTH | stat.S_IRGRP
            if stat.S_ISDIR(mode) or mode & stat.S_IXUSR:
                extra |= stat.S_IXOTH | stat.S_IXGRP
            os.chmod(path, stat.S_IMODE(mode) | extra)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _build_wheel(out: Path) -> Path:
    """``pip wheel --no-deps`` of a clean copy of the project (no stale ``build/`` in the repository)."""
    src = out / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    for package in PACKAGES:
        shutil.copytree(REPO / package, src / package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    _run([str(REPO_PYTHON), "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out / "dist"), str(src)],
         timeout=600)
    wheels = list((out / "dist").glob("*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def _relocate_scripts(venv: Path, old: Path, new: Path) -> None:
    """Console and activate scripts in ``venv/bin`` name the folder it was built in (``old``): point them at ``new``."""
    for script in (venv / "bin").iterdir():
        if script.is_symlink() or not script.is_file():
            continue
        try:
            text = script.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        if str(old) in text:
            script.write_text(text.replace(str(old), str(new)), encoding="utf-8")


@dataclass(frozen=True)
class DebianVenv:
    root: Path
    python: Path
    build_seconds: float


def _others_may_pass(path: Path) -> bool:
    """May another user (the worker's uid, ``nobody``) pass through every folder down to ``path``?"""
    return all(p.stat().st_mode & stat.S_IXOTH for p in [path, *path.parents])


def venv_home() -> Path:
    """Where the Debian venv is kept: the repository, when other users may pass through to it, else a folder of
    this user's alone under /var/tmp, one per repository (a clone made with ``mktemp -d`` sits in a 0700 folder,
    where no worker uid could reach its Python). Such folders of repositories that are gone are removed."""
    if _others_may_pass(REPO):
        return REPO
    base = Path("/var/tmp")
    for other in base.glob(f"selfattn-venvs-{os.getuid()}-*"):
        owner = other / "repository"
        if (other.is_dir() and not other.is_symlink() and other.stat().st_uid == os.getuid()
                and owner.is_file() and not Path(owner.read_text(encoding="utf-8")).exists()):
            shutil.rmtree(other, ignore_errors=True)  # its clone was deleted: 1-2 GB freed
    home = base / f"selfattn-venvs-{os.getuid()}-{hashlib.sha256(str(REPO).encode()).hexdigest()[:12]}"
    try:
        home.mkdir(mode=0o755)
    except FileExistsError:
        pass
    info = os.lstat(home)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o022:
        pytest.skip(f"{home} is not a folder of this user's alone: the world-readable venv cannot be kept there")
    os.chmod(home, 0o755)
    if not _others_may_pass(home):
        pytest.skip(f"other users may not pass through to {home}: the privilege-drop path cannot be exercised")
    (home / "repository").write_text(str(REPO), encoding="utf-8")
    return home


@pytest.fixture(scope="session")
def debian_venv() -> DebianVenv:
    """A world-readable venv from /usr/bin/python3.11 with the project's wheel installed, no extras."""
    if not DEBIAN_PYTHON.exists():
        pytest.skip(f"{DEBIAN_PYTHON} is missing: the world-readable venv (privilege-drop path) cannot be built")
    probe = subprocess.run([str(DEBIAN_PYTHON), "-c", "import venv, ensurepip"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"`{DEBIAN_PYTHON} -m venv` cannot make a venv with pip (install python3.11-venv): "
                    f"{probe.stderr.strip()[-200:]}")
    if not REPO_PYTHON.exists():
        pytest.skip(f"{REPO_PYTHON} is missing: run `bash run.sh test` to set up .venv first")
    key = hashlib.sha256((REPO / "pyproject.toml").read_bytes()).hexdigest()[:12]
    home = venv_home()
    target = home / f".venv-debian-{key}"
    started = time.monotonic()
    with open(home / f".venv-debian-{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one session builds or updates it at a time
        for stale in home.glob(".venv-debian-*.building-*"):
            if not _pid_alive(int(stale.name.rsplit("-", 1)[1])):
                shutil.rmtree(stale, ignore_errors=True)
        stamp = target / "project.sha256"
        wanted = _sha256_of(_project_files(), REPO)
        scratch = Path(tempfile.mkdtemp(prefix="selfattn-wheel-"))
        try:
            if not (target / "bin" / "python").exists():
                building = home / f".venv-debian-{key}.building-{os.getpid()}"
                shutil.rmtree(building, ignore_errors=True)
                _run([str(DEBIAN_PYTHON), "-m", "venv", str(building)], timeout=300)
                wheel = _build_wheel(scratch)
                _run([str(building / "bin" / "python"), "-m", "pip", "install", "-q", str(wheel)], timeout=1200)
                _make_world_readable(building)
                _relocate_scripts(building, old=building, new=target)
                (building / "project.sha256").write_text(wanted)
                try:
                    building.rename(target)
                except OSError:  # someone else finished first
                    shutil.rmtree(building, ignore_errors=True)
                for other in home.glob(".venv-debian-*"):  # older pyproject.toml versions: 1-2 GB each
                    if other.is_dir() and other != target and ".building-" not in other.name:
                        shutil.rmtree(other, ignore_errors=True)
            elif not stamp.exists() or stamp.read_text() != wanted:
                stamp.unlink(missing_ok=True)  # an interrupted update is redone next time
                wheel = _build_wheel(scratch)
                _run([str(target / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps",
                      "--force-reinstall", str(wheel)], timeout=600)
                _make_world_readable(target)
                stamp.write_text(wanted)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return DebianVenv(target, target / "bin" / "python", time.monotonic() - started)


def _grader_env(home: Path) -> dict[str, str]:
    """A plain environment: nothing of this test session (VIRTUAL_ENV, SELFATTN_NO_BWRAP...) leaks in."""
    return {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(home),
            "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1"}


def grade_cli(python: Path, args: list[str], cwd: Path, home: Path, as_nobody: bool = False,
              timeout: float = GRADE_TIMEOUT) -> subprocess.CompletedProcess:
    cmd = [str(python), "-m", "autograder", "grade", *args]
    if as_nobody:
        cmd = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--", *cmd]
    return subprocess.run(cmd, cwd=cwd, env=_grader_env(home), capture_output=True, text=True, timeout=timeout)


def _shared_dir(prefix: str) -> Path:
    """A temporary folder that ``nobody`` can read (pytest's own tmp_path is 0700 under /tmp/pytest-of-root)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    os.chmod(path, 0o755)
    return path


def _writable_by_nobody(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    if IS_ROOT:
        os.chown(path, NOBODY, NOBODY)
    return path


def max_points() -> float:
    total = 0.0
    for nb_path in sorted((REPO / "source" / "self_attention").glob("*.ipynb")):
        for cell in nbformat.read(nb_path, as_version=4).cells:
            meta = cell.metadata.get("nbgrader", {})
            if meta.get("grade") and not meta.get("solution"):
                total += float(meta.get("points", 0))
    return total


def per_item(sub: dict) -> dict[str, tuple[float, float, list[dict]]]:
    """item -> (score, max_score, graded rows) over the devices exercised."""
    out: dict[str, tuple[float, float, list[dict]]] = {}
    for row in sub["tests"]:
        score, maximum, rows = out.get(row["item"], (0.0, 0.0, []))
        graded = [*rows, row] if row["status"] != "skipped" else rows
        out[row["item"]] = (score + row["score"], maximum + row["max_score"], graded)
    return out


def describe(result: subprocess.CompletedProcess) -> str:
    out = result.stdout if len(result.stdout) <= 5000 else f"{result.stdout[:2000]}\n[...]\n{result.stdout[-3000:]}"
    return f"exit {result.returncode}\n--- stdout\n{out}\n--- stderr (tail)\n{result.stderr[-3000:]}"


def load_report(path: Path, result: subprocess.CompletedProcess) -> dict[str, dict]:
    assert path.exists(), f"no JSON report was written\n{describe(result)}"
    data = json.loads(path.read_text(encoding="utf-8"))
    return {Path(sub["path"]).name: sub for sub in data["submissions"]}


# --- the course copy every mode grades ---------------------------------------------------------------

@pytest.fixture(scope="module")
def course_copy():
    """A world-readable copy of the course (source/, examples/, nbgrader_config.py) plus the batch to grade."""
    root = _shared_dir("selfattn-course-")
    try:
        shutil.copytree(REPO / "source", root / "source", ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
        shutil.copytree(REPO / "examples", root / "examples", ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
        shutil.copy2(REPO / "nbgrader_config.py", root / "nbgrader_config.py")
        batch = root / "batch"
        for student in ("perfect", "one_wrong"):
            shutil.copytree(REPO / "examples" / "submissions" / student, batch / student)
        write_submission(batch / "hostile" / "self_attention", NB1, HOSTILE)
        for dirpath, _dirnames, filenames in os.walk(root):
            os.chmod(dirpath, 0o755)
            for name in filenames:
                os.chmod(Path(dirpath) / name, 0o644)
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _stdlib_world_readable(python: Path) -> bool:
    stdlib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['stdlib'])"],
                            capture_output=True, text=True, check=True).stdout.strip()
    return all(p.stat().st_mode & stat.S_IXOTH for p in [Path(stdlib), *Path(stdlib).parents])


def _bubblewrap_works() -> bool:
    bwrap = shutil.which("bwrap")
    if not bwrap:
        return False
    probe = subprocess.run([bwrap, "--ro-bind", "/", "/", "--unshare-net", "--unshare-pid", "true"],
                           capture_output=True, timeout=20)
    return probe.returncode == 0


# "rlimits-drop" is the GPU machine's case (root, no bubblewrap, a world-readable Python); "-cold" grades it with
# the cold workers that runs on a GPU always use (CUDA does not survive fork), the others fork from warm ones.
MODES = ["bubblewrap", "rlimits-drop", "rlimits-drop-cold", "rlimits-no-drop", "non-root", "non-root-bubblewrap"]
WORKER_UID = None  # a uid of the worker's own, from sandbox.WorkerUid's range (root graders that drop privileges)


@pytest.mark.parametrize("mode", MODES)
def test_are_grades_the_same_in_every_isolation_mode(mode, course_copy, request):
    """One CLI call per mode over perfect, one_wrong and hostile; the same grades, the isolation reported."""
    batch = course_copy / "batch"
    out = _writable_by_nobody(_shared_dir("selfattn-out-") / "out")
    home = _writable_by_nobody(out.parent / "home")
    report = out / "report.json"
    args = [str(batch), "--seed", str(SEED), *TIMING, "--json", str(report)]
    try:
        if mode == "bubblewrap":
            if not _bubblewrap_works():
                pytest.skip("bubblewrap is missing or cannot create namespaces here")
            python, cwd, as_nobody = REPO_PYTHON, REPO, False
            isolation, uid = "bubblewrap", WORKER_UID if IS_ROOT else os.getuid()
        elif mode in ("rlimits-drop", "rlimits-drop-cold"):
            if not IS_ROOT:
                pytest.skip("the privilege drop needs a grader running as root")
            python, cwd, as_nobody = request.getfixturevalue("debian_venv").python, REPO, False
            args += ["--no-bwrap", *(["--cold-workers"] if mode == "rlimits-drop-cold" else [])]
            isolation, uid = "rlimits", WORKER_UID
        elif mode == "rlimits-no-drop":
            if not IS_ROOT:
                pytest.skip("the no-drop path is the root grader's with an unreadable Python tree")
            if _stdlib_world_readable(REPO_PYTHON):
                pytest.skip(f"{REPO_PYTHON}'s standard library is world-readable here: the grader would drop "
                            "privileges, so the no-drop path cannot be reached")
            python, cwd, as_nobody = REPO_PYTHON, REPO, False
            args.append("--no-bwrap")
            isolation, uid = "rlimits", 0
        else:  # the grader never needs root to be safe: run as nobody, without and with bubblewrap
            if not IS_ROOT or not shutil.which("setpriv"):
                pytest.skip("needs root and setpriv to run the grader as nobody")
            if mode == "non-root-bubblewrap" and not _bubblewrap_works():
                pytest.skip("bubblewrap is missing or cannot create namespaces here")
            python, cwd, as_nobody = request.getfixturevalue("debian_venv").python, course_copy, True
            args += ["--source", str(course_copy / "source")]
            if mode == "non-root":
                args.append("--no-bwrap")
            isolation, uid = ("rlimits" if mode == "non-root" else "bubblewrap"), NOBODY

        forged_before = {name for name in FORGED_NAMES if (cwd / name).exists()}
        result = grade_cli(python, args, cwd, home, as_nobody=as_nobody)
        assert result.returncode == 0, describe(result)
        subs = load_report(report, result)
        assert set(subs) == {"perfect", "one_wrong", "hostile"}, describe(result)
        for name, sub in subs.items():
            assert sub["isolation"] == isolation, f"{name}: isolation {sub['isolation']!r}, expected {isolation!r}"
        full = max_points()

        perfect = subs["perfect"]
        wrong = [(t["name"], t["status"], t["message"][:200]) for t in perfect["tests"] if t["status"] != "passed"
                 and t["status"] != "skipped"]
        assert perfect["max_score"] == full, perfect["max_score"]
        assert perfect["score"] == full, f"perfect got {perfect['score']}/{full}: {wrong[:5]}\n{describe(result)}"

        one_wrong = per_item(subs["one_wrong"])
        lost = {item: (score, maximum) for item, (score, maximum, _) in one_wrong.items() if score != maximum}
        assert set(lost) == {"train_language_model"} and lost["train_language_model"][0] == 0, lost
        assert subs["one_wrong"]["score"] == full - lost["train_language_model"][1] == full - 3

        hostile = per_item(subs["hostile"])
        for item in SABOTAGED:
            score, _, rows = hostile[item]
            assert score == 0, f"hostile {item} earned {score}: {[r['message'][:200] for r in rows]}"
        statuses = {item: {r["status"] for r in hostile[item][2]} for item in SABOTAGED}
        assert statuses["attention_scores_loop"] == {"timeout"}, statuses
        assert statuses["softmax_naive"] == {"error"}, statuses
        assert statuses["softmax_stable"] <= {"error", "failed"}, statuses
        assert statuses["context_vectors"] == {"error"}, statuses
        for item in HONEST:
            score, maximum, rows = hostile[item]
            assert maximum > 0 and score == maximum, f"hostile {item}: {score}/{maximum}: " \
                f"{[r['message'][:300] for r in rows]}"
        bomb = [r["message"] for r in hostile["context_vectors"][2]]
        assert all("memory bomb stopped" in m for m in bomb), f"the 20 GB allocation was not refused: {bomb}"
        uids = {int(found.group(1)) for m in bomb if (found := re.search(r"worker uid=(\d+) ", m))}
        assert len(uids) == 1 and len(bomb) > 0, f"the worker's uid is not in every message: {bomb}"
        if uid is WORKER_UID:
            assert all(WORKER_UID_BASE <= u < WORKER_UID_BASE + WORKER_UID_COUNT for u in uids), \
                f"student code did not run as a worker uid of its own: {bomb}"
            if isolation == "rlimits":  # no bubblewrap: the folders above the job are the grader's, 0711
                assert all(" parent=unlistable:" in m for m in bomb), f"the job can list the folder above it: {bomb}"
        else:
            assert uids == {uid}, f"student code did not run as uid {uid}: {bomb}"
        # every job in namespaces of its own (worker/main.py, private_namespaces; bubblewrap's too): never ours
        spaces = [found.groups() for m in bomb if (found := re.search(r" ns=(ipc:\[\d+\]) (mnt:\[\d+\]) parent=", m))]
        assert len(spaces) == len(bomb), f"a message lacks the worker's namespaces: {bomb}"
        ours = (os.readlink("/proc/self/ns/ipc"), os.readlink("/proc/self/ns/mnt"))
        for ipc, mnt in spaces:
            assert ipc != ours[0] and mnt != ours[1], \
                f"student code ran in the grader's own IPC or mount namespace ({ipc} {mnt}): {bomb}"
        assert subs["hostile"]["score"] == sum(hostile[i][1] for i in HONEST) == 2
        assert sorted(p.name for p in out.iterdir()) == ["report.json"], "a forged file reached the report folder"
        forged_after = {name for name in FORGED_NAMES if (cwd / name).exists()}
        assert forged_after <= forged_before, f"a forged report reached the grader's cwd: {forged_after}"
    finally:
        shutil.rmtree(out.parent, ignore_errors=True)


# --- the wheel, no extras ---------------------------------------------------------------------------

@pytest.mark.parametrize("sandbox", ["default", "no-bwrap"])
@pytest.mark.parametrize("where", ["course-root", "elsewhere-with-source"])
def test_does_the_wheel_grade_without_extras(where, sandbox, debian_venv, tmp_path):
    """The project's runtime dependencies alone must be enough for ``python -m autograder grade``.

    ``default`` is what a user of the wheel gets (bubblewrap where it works); ``no-bwrap`` the reduced mode.
    From the course root, ``python -m`` imports the repository's packages (the cwd is on sys.path) with the
    venv's dependencies; from elsewhere, the installed wheel itself.
    """
    report = tmp_path / "report.json"
    args = [str(REPO / "examples" / "submissions" / "perfect"), "--seed", str(SEED), "--device", "cpu",
            "--json", str(report), *(["--no-bwrap"] if sandbox == "no-bwrap" else [])]
    if where == "course-root":
        cwd = REPO
    else:
        cwd = tmp_path / "elsewhere"
        cwd.mkdir()
        args += ["--source", str(REPO / "source")]
    result = grade_cli(debian_venv.python, args, cwd, tmp_path)
    missing = [line for line in result.stderr.splitlines() if "ModuleNotFoundError" in line]
    assert not missing, f"a runtime dependency is missing from pyproject.toml's `dependencies`: {missing}\n" \
                        f"{describe(result)}"
    assert result.returncode == 0, describe(result)
    sub = load_report(report, result)["perfect"]
    assert sub["score"] == sub["max_score"] == max_points(), describe(result)


def test_does_the_wheel_outside_the_course_find_source_or_say_so(debian_venv, tmp_path):
    """Without --source, far from the course: full marks, or exit 2 saying that source/ was not found.

    ``--no-bwrap`` keeps this about finding source/ (the bubblewrap mode is covered above).
    """
    report = tmp_path / "report.json"
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    args = [str(REPO / "examples" / "submissions" / "perfect"), "--seed", str(SEED), "--device", "cpu",
            "--json", str(report), "--no-bwrap"]
    result = grade_cli(debian_venv.python, args, cwd, tmp_path)
    if result.returncode == 0 and report.exists():
        sub = load_report(report, result)["perfect"]
        if sub["score"] == sub["max_score"] == max_points():
            return
    assert result.returncode == 2, f"neither graded nor refused with exit 2:\n{describe(result)}"
    text = (result.stdout + result.stderr).lower()
    assert "source" in text and "--source" in text, f"the message does not say to pass --source:\n{describe(result)}"
    _assert_no_zero_claimed(report, result)


# --- could not grade: exit 2, no report of zeros ----------------------------------------------------

def _assert_no_zero_claimed(report: Path, result: subprocess.CompletedProcess) -> None:
    if not report.exists():
        return
    for sub in json.loads(report.read_text(encoding="utf-8"))["submissions"]:
        assert sub.get("graded") is False or sub["score"] != 0, \
            f"the report claims {sub['path']} was graded with {sub['score']}/{sub['max_score']}\n{describe(result)}"


@pytest.mark.parametrize("case", ["memory-200-mib", "missing-source"])
def test_does_the_grader_refuse_rather_than_grade_zero(case, tmp_path):
    """A grader that cannot grade (torch cannot even import; no source/) exits 2 and grades nobody."""
    report = tmp_path / "report.json"
    args = [str(REPO / "examples" / "submissions" / "perfect"), "--seed", str(SEED), "--device", "cpu",
            "--json", str(report)]
    if case == "memory-200-mib":
        args += ["--memory-mib", "200"]
    else:
        args += ["--source", str(tmp_path / "no-such-source")]
    result = grade_cli(REPO_PYTHON if REPO_PYTHON.exists() else Path(sys.executable), args, REPO, tmp_path,
                       timeout=300)
    assert result.returncode == 2, describe(result)
    text = (result.stdout + result.stderr).lower()
    if case == "memory-200-mib":
        assert "could not grade" in text, describe(result)
    else:
        assert "could not grade" in text or "no-such-source" in text, describe(result)
    _assert_no_zero_claimed(report, result)


@pytest.mark.slow
@pytest.mark.parametrize("sandbox", ["default", "no-bwrap"])
def test_does_a_python_environment_under_tmp_grade(tmp_path, sandbox):
    """A course cloned under /tmp (``mktemp -d``) has its venv there; each worker mounts an empty /tmp of its own
    (nothing left from a job before), which hid the environment: a module imported late (``numpy.ctypeslib``,
    by safetensors when it writes the outputs) was missing and nobody was graded. Reproduced with this run's
    own environment reached through a link under /tmp, so sys.prefix lies there."""
    link_dir = Path(tempfile.mkdtemp(prefix="selfattn-venv-under-tmp-", dir="/tmp"))
    try:
        link_dir.chmod(0o755)
        (link_dir / "env").symlink_to(Path(sys.prefix))
        python = link_dir / "env" / "bin" / Path(sys.executable).name
        student = write_submission(tmp_path / "student", NB1, {})
        report = tmp_path / "report.json"
        args = [str(python), "-m", "autograder", "grade", str(student), "--device", "cpu", "-q",
                "--json", str(report), *(["--no-bwrap"] if sandbox == "no-bwrap" else [])]
        proc = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
        [submission] = json.loads(report.read_text())["submissions"]
        graded = [t for t in submission["tests"] if t["notebook"] == NB1 and t["device"] == "cpu"]
        assert graded and all(t["status"] == "passed" for t in graded), graded
    finally:
        shutil.rmtree(link_dir, ignore_errors=True)
