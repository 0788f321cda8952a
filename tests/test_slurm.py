"""The Slurm path for real: a one-node cluster on this machine grades the examples as an array job.

Installs Debian's ``slurm-wlm`` and ``munge`` where they are missing (root and apt-get needed), starts
munged, slurmctld and slurmd from a temporary folder (its own config, state, sockets, ports and logs:
nothing of this machine's is touched), submits ``delivery/slurm/submit.sh`` over examples/submissions
in 2 shards, waits for the merge job and checks the merged reports equal an unsharded run's. The
daemons are stopped afterwards, whatever happened. Skips, saying why, where any of that cannot be done.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from shard_fixtures import BATCH, REPO, SEED, assert_same_reports

pytest_plugins = ["shard_fixtures"]

pytestmark = pytest.mark.slow
DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "scontrol", "sinfo")
SHARDS = 2


def _missing() -> list[str]:
    return [tool for tool in (*DAEMONS, *CLIENTS) if shutil.which(tool, path=f"{os.environ.get('PATH')}:/usr/sbin")
            is None]


def _install() -> None:
    """Install slurm-wlm and munge with apt-get (``apt-get update`` first when the install fails); skip if not."""
    if not _missing():
        return
    if os.geteuid() != 0:
        pytest.skip(f"Slurm is not installed ({', '.join(_missing())} missing) and installing it needs root")
    if shutil.which("apt-get") is None:
        pytest.skip("Slurm is not installed and there is no apt-get to install slurm-wlm and munge with")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", "slurm-wlm", "munge"]
    proc = subprocess.run(install, capture_output=True, text=True, env=env, timeout=900)
    if proc.returncode != 0:
        subprocess.run(["apt-get", "update"], capture_output=True, env=env, timeout=600)
        proc = subprocess.run(install, capture_output=True, text=True, env=env, timeout=900)
    if proc.returncode != 0 or _missing():
        pytest.skip(f"could not install slurm-wlm and munge with apt-get: {(proc.stderr or proc.stdout)[-500:]}")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _tool(name: str) -> str:
    return shutil.which(name, path=f"{os.environ.get('PATH')}:/usr/sbin")


def _node_line() -> str:
    """This machine as Slurm sees it (``slurmd -C``): its name, CPUs, sockets, cores and memory."""
    proc = subprocess.run([_tool("slurmd"), "-C"], capture_output=True, text=True, timeout=60)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("NodeName=")), None)
    if line is None:
        pytest.skip(f"slurmd -C could not describe this machine: {proc.stderr[-300:]}")
    fields = dict(f.split("=", 1) for f in line.split())
    fields["RealMemory"] = str(int(fields["RealMemory"]) * 9 // 10)  # a margin: slurmd drains a node over-declared
    return " ".join(f"{k}={v}" for k, v in fields.items()) + " NodeAddr=127.0.0.1 State=UNKNOWN"


def _write_config(tmp: Path, node: str) -> Path:
    name = node.split()[0].split("=", 1)[1]
    for sub in ("state", "spool", "log", "munge"):
        (tmp / sub).mkdir()
    conf = tmp / "slurm.conf"
    conf.write_text(f"""\
ClusterName=selfattn-test
SlurmctldHost={name}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={tmp / 'munge' / 'munge.socket'}
CredType=cred/munge
StateSaveLocation={tmp / 'state'}
SlurmdSpoolDir={tmp / 'spool'}
SlurmctldPidFile={tmp / 'slurmctld.pid'}
SlurmdPidFile={tmp / 'slurmd.pid'}
SlurmctldLogFile={tmp / 'log' / 'slurmctld.log'}
SlurmdLogFile={tmp / 'log' / 'slurmd.log'}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1
MinJobAge=600
SlurmctldTimeout=30
SlurmdTimeout=30
{node}
PartitionName=cpu Nodes={name} Default=YES MaxTime=INFINITE State=UP
""")
    return conf


def _logs(tmp: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-1500:]}" for p in sorted((tmp / "log").glob("*")))


@pytest.fixture
def cluster(tmp_path):
    """A one-node Slurm cluster on this machine; yields the environment its clients need (SLURM_CONF)."""
    _install()
    tmp = tmp_path / "slurm"
    tmp.mkdir()
    conf = _write_config(tmp, _node_line())
    key = tmp / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    env = {**os.environ, "SLURM_CONF": str(conf)}
    started: list[subprocess.Popen] = []
    try:
        log = open(tmp / "log" / "daemons.out", "w")  # noqa: SIM115 - closed below, after the daemons
        # --force: munged otherwise refuses to run as root, or with a socket under the world-writable /tmp.
        started.append(subprocess.Popen([_tool("munged"), "-F", "--force", f"--key-file={key}",
                                         f"--socket={tmp / 'munge' / 'munge.socket'}",
                                         f"--pid-file={tmp / 'munge' / 'munged.pid'}",
                                         f"--log-file={tmp / 'log' / 'munged.log'}",
                                         f"--seed-file={tmp / 'munge' / 'munged.seed'}"],
                                        stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        _wait_for(lambda: (tmp / "munge" / "munge.socket").exists(), 20, "munged did not start", tmp, started)
        for daemon in ("slurmctld", "slurmd"):
            started.append(subprocess.Popen([_tool(daemon), "-D", "-f", str(conf)], env=env, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True))
        _wait_for(lambda: _node_idle(env), 60, "the node did not come up idle", tmp, started)
        yield env
    finally:
        for proc in reversed(started):  # our own daemons, by their process ids
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in reversed(started):
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=15)


def _node_idle(env: dict) -> bool:
    proc = subprocess.run([_tool("sinfo"), "-h", "-o", "%t"], env=env, capture_output=True, text=True, timeout=30)
    return proc.returncode == 0 and proc.stdout.strip() in ("idle", "mix")


def _wait_for(check, seconds: float, why: str, tmp: Path, started: list[subprocess.Popen]) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return
        dead = [p.args[0] for p in started if p.poll() is not None]
        if dead:
            pytest.skip(f"could not start a Slurm cluster here: {', '.join(map(os.path.basename, dead))} exited\n"
                        + _logs(tmp))
        time.sleep(0.5)
    pytest.skip(f"could not start a Slurm cluster here: {why}\n{_logs(tmp)}")


def _job_state(env: dict, job: str) -> str:
    proc = subprocess.run([_tool("scontrol"), "show", "job", job], env=env, capture_output=True, text=True,
                          timeout=30)
    return next((w.split("=", 1)[1] for w in proc.stdout.split() if w.startswith("JobState=")), "UNKNOWN")


def test_does_a_slurm_array_grade_the_batch_like_one_unsharded_run(unsharded, cluster, tmp_path):
    out = tmp_path / "out"
    env = {**cluster, "SEED": str(SEED), "OUT_DIR": str(out), "PYTHON": sys.executable, "GRADE_ARGS": "--no-canary"}
    # One CPU and 2 GiB a task on this small machine: both shards run at once (the script asks for more).
    proc = subprocess.run(["bash", str(REPO / "delivery/slurm/submit.sh"), str(BATCH), str(SHARDS),
                           "--cpus-per-task=1", "--mem=2G"], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    jobs = dict(w.split("=") for w in proc.stdout.split() if w.startswith(("ARRAY_JOB=", "MERGE_JOB=")))
    deadline = time.monotonic() + 600
    while _job_state(cluster, jobs["MERGE_JOB"]) in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING"):
        assert time.monotonic() < deadline, "the Slurm jobs did not finish in 10 minutes"
        time.sleep(1)
    logs = "\n".join(f"--- {p.name}\n{p.read_text()[-2000:]}" for p in sorted(out.glob("slurm-*.out")))
    assert _job_state(cluster, jobs["MERGE_JOB"]) == "COMPLETED", logs
    assert sorted(p.name for p in (out / "shards").glob("*.json")) == ["shard-1.json", "shard-2.json"], logs
    assert_same_reports(out, unsharded)
