"""Check the course on a machine with a GPU: the needs_cuda tests, then the examples graded on cpu and cuda.

    bash run.sh gpu-check [--seed N]        # sets up an environment without a package index, then runs this
    python scripts/gpu_check.py [--seed N] [--skip-tests] [--from-json REPORT] [--keep-report PATH]

Made for a GPU machine with torch, numpy, pytest and safetensors but no package registry and no
bubblewrap. It prints what the environment has, runs ``pytest -m needs_cuda`` on the test modules
that have GPU tests, grades ``examples/submissions`` (perfect, empty, one_wrong) with the CLI on every
device present, and prints one table: submission, score/max, rows passed per device, seconds.

Exit status 0 only when a CUDA device was exercised, the needs_cuda tests passed, and the perfect
example has full marks on every device (cpu and cuda). Without a CUDA device it still runs what it
can, says "no CUDA device: GPU not exercised" and exits 1, so it is never mistaken for a GPU pass.
``--from-json`` builds the table from an existing report of the CLI (no grading).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples" / "submissions"
DEVICES = ("cpu", "cuda")
NO_GPU = "no CUDA device: GPU not exercised"
GRADING_TIMEOUT_S = 200  # the whole check must finish in under 5 minutes on one GPU
TESTS_TIMEOUT_S = 75
# What nbformat needs on a machine that has none of the Jupyter stack (the grader reads notebooks as
# plain JSON; only the tests' fixture builder uses nbformat); all pure Python except rpds-py.
NBFORMAT_WHEELS = ("nbformat", "fastjsonschema", "jsonschema", "jsonschema-specifications", "referencing",
                   "rpds-py", "attrs", "jupyter_core", "platformdirs", "traitlets", "typing_extensions")


# --- the table ----------------------------------------------------------------------------------------
@dataclass
class DeviceRows:
    """One submission's rows on one device: how many passed, of how many graded, and the points."""

    passed: int = 0
    total: int = 0
    skipped: int = 0
    score: float = 0.0
    max_score: float = 0.0

    @property
    def exercised(self) -> bool:
        return self.total > 0

    @property
    def full_marks(self) -> bool:
        # a row's score is rounded to 6 places and its max_score is not (1/6 of a point on cuda): the sums
        # of a perfect submission differ by a few millionths
        return self.exercised and self.passed == self.total and self.max_score > 0 \
            and abs(self.score - self.max_score) < 1e-3


@dataclass
class SubmissionRow:
    name: str
    score: float
    max_score: float
    seconds: float
    devices: dict[str, DeviceRows] = field(default_factory=dict)


def summarise(report: dict) -> list[SubmissionRow]:
    """One row per submission of the CLI's JSON report (``--json``), with rows passed per device."""
    rows = []
    for sub in report.get("submissions", []):
        per_device = {device: DeviceRows() for device in DEVICES}
        for test in sub.get("tests", []):
            rows_of = per_device.setdefault(test["device"], DeviceRows())
            if test["status"] == "skipped":
                rows_of.skipped += 1
                continue
            rows_of.total += 1
            rows_of.passed += test["status"] == "passed"
            rows_of.score += float(test["score"])
            rows_of.max_score += float(test["max_score"])
        rows.append(SubmissionRow(Path(sub["path"]).name, float(sub["score"]), float(sub["max_score"]),
                                  float(sub.get("seconds", 0.0)), per_device))
    for missing in report.get("not_graded", []):
        rows.append(SubmissionRow(Path(missing["path"]).name, float("nan"), float("nan"), 0.0, {}))
    return rows


def _points(value: float) -> str:
    return "?" if value != value else f"{value:.4g}"  # NaN: not graded


def _cell(rows: DeviceRows | None) -> str:
    if rows is None or not rows.exercised:
        return "not exercised" if rows is not None and rows.skipped else "-"
    return f"{rows.passed}/{rows.total}"


def format_table(rows: list[SubmissionRow]) -> str:
    """The one table: submission, score/max, rows passed per device (cpu, cuda), seconds."""
    header = ["submission", "score/max", *(f"{d} rows passed" for d in DEVICES), "seconds"]
    body = [[r.name, f"{_points(r.score)}/{_points(r.max_score)}", *(_cell(r.devices.get(d)) for d in DEVICES),
             f"{r.seconds:.1f}"] for r in rows]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    lines = ["  ".join(text.ljust(w) if i == 0 else text.rjust(w) for i, (text, w) in enumerate(zip(line, widths,
                                                                                                     strict=True)))
             for line in [header, *body]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def grading_problems(rows: list[SubmissionRow], cuda_expected: bool) -> list[str]:
    """Why the grading part fails: the perfect example short of full marks on a device, or cuda not graded."""
    problems = []
    perfect = [r for r in rows if r.name == "perfect"]
    if not perfect:
        return ["the perfect example was not graded"]
    (row,) = perfect
    if not abs(row.score - row.max_score) < 1e-3:  # NaN (not graded) fails too
        problems.append(f"perfect scored {_points(row.score)}/{_points(row.max_score)}, not full marks")
    for device in DEVICES if cuda_expected else ("cpu",):
        rows_of = row.devices.get(device)
        if rows_of is None or not rows_of.exercised:
            problems.append(f"perfect was not graded on {device}")
        elif not rows_of.full_marks:
            problems.append(f"perfect on {device}: {rows_of.passed}/{rows_of.total} rows passed, "
                            f"{rows_of.score:.4g}/{rows_of.max_score:.4g} points")
    return problems


def failed_rows(report: dict, limit: int = 8) -> list[str]:
    """The perfect example's rows that did not pass, with their messages (what to look at)."""
    out = []
    for sub in report.get("submissions", []):
        if Path(sub["path"]).name == "perfect":
            out += [f"{t['name']}: {t['status']}: {t['message'][:300]}" for t in sub["tests"]
                    if t["status"] not in ("passed", "skipped")]
    return out[:limit]


# --- the environment ------------------------------------------------------------------------------------
def has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def environment() -> tuple[dict[str, str], list[str], bool]:
    """(facts to print, blocking problems, whether CUDA is usable)."""
    facts = {"python": sys.version.split()[0] + f" ({sys.executable})"}
    problems: list[str] = []
    cuda = False
    if not has("torch"):
        problems.append("torch is not installed in this Python (set PYTHON=/path/to/python that has it)")
    else:
        import torch

        facts["torch"] = f"{torch.__version__} (CUDA build: {torch.version.cuda or 'no, a CPU-only build'}) at " \
                         f"{Path(torch.__file__).parent}"
        cuda = torch.cuda.is_available()
        problems += worker_reach(Path(torch.__file__).parent)
        if cuda:
            names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            facts["cuda devices"] = ", ".join(names)
        else:
            facts["cuda devices"] = "none"
    for module in ("numpy", "safetensors", "pytest", "matplotlib", "nbformat", "pytest_timeout"):
        spec = importlib.util.find_spec(module)
        facts[module] = "yes" if spec else "MISSING"
    if not has("safetensors"):
        problems.append("safetensors is missing: the grader passes tensors to its worker with it")
    if not has("pytest"):
        problems.append("pytest is missing: the grader runs as a pytest session")
    if not has("nbformat"):
        facts["nbformat"] = ("MISSING: the grader does not need it, but the GPU tests that build fixture notebooks "
                             "are left out; to run them, carry its wheels (`python3.12 -m pip download "
                             "--only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 -d wheels "
                             f"nbformat`, which brings {', '.join(NBFORMAT_WHEELS[1:])}) into wheels/ and run "
                             "`bash run.sh gpu-check` again (or set SELFATTN_WHEELS=DIR)")
    if not has("matplotlib"):
        problems.append("matplotlib is missing: the lessons need it (their figures and the figure probe) "
                        "(carry its wheels as for nbformat: `pip download ... matplotlib`)")
    facts["bubblewrap"] = "yes" if _which("bwrap") else "no (grading runs with reduced isolation: expected here)"
    facts["grader plugin"] = "installed" if _plugin_installed() else "not installed (loaded via PYTEST_PLUGINS)"
    return facts, problems, cuda


def worker_reach(torch_dir: Path) -> list[str]:
    """Problems the grader's worker would have importing torch from ``torch_dir``.

    The worker runs ``python -I``, which ignores the user's site-packages; without bubblewrap, as root,
    it runs as ``nobody`` when the interpreter and this environment's own site-packages are reachable by
    everyone, which says nothing of a torch found through ``--system-site-packages``.
    """
    import site

    user_site = site.getusersitepackages()
    if user_site and torch_dir.is_relative_to(user_site):
        return [f"torch is in the user's site-packages ({user_site}), which the grader's worker (`python -I`) "
                "does not see: install torch system-wide or in a venv"]
    if os.geteuid() == 0 and not _which("bwrap") and _grader_drops_privileges():
        closed = [str(p) for p in [torch_dir, *torch_dir.parents] if not os.stat(p).st_mode & 0o001]
        if closed:
            return [f"torch ({torch_dir}) is below {closed[-1]}, which `nobody` cannot enter: the worker may run "
                    "as nobody and fail to import it; move torch, or `chmod o+x` that folder"]
    return []


def _grader_drops_privileges() -> bool:
    """What the grader itself decides (``autograder.sandbox.can_drop_privileges``) without bubblewrap."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    try:
        from autograder.sandbox import can_drop_privileges
    except Exception:  # noqa: BLE001 - a missing dependency is reported on its own
        return False
    return can_drop_privileges(None)


def _which(name: str) -> str | None:
    import shutil

    return shutil.which(name)


def _plugin_installed() -> bool:
    """Whether pytest finds the grader plugin's entry point in the runs below (which start in the repository,
    so the source tree's own ``*.egg-info`` counts); if not, it is loaded by name (``PYTEST_PLUGINS``)."""
    from importlib.metadata import distributions

    return any(ep.group == "pytest11" and ep.name == "selfattn"
               for dist in distributions(path=[str(REPO), *sys.path]) for ep in dist.entry_points)


def child_env() -> dict[str, str]:
    """Environment of the pytest and grading runs: the repository importable, the grader plugin loaded."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    if not _plugin_installed():  # the project could not be pip-installed: load the plugin by name
        env["PYTEST_PLUGINS"] = ",".join(p for p in (env.get("PYTEST_PLUGINS", ""), "autograder.plugin") if p)
    return env


# --- the two runs ---------------------------------------------------------------------------------------
GPU_TEST_MARKERS = ("needs_cuda", "cpu_and_cuda(", "tensor_helpers import DEVICES")
NEEDS_GRADER = ("autograder", "nbformat", "grader_fixtures", "nbgrader")


def gpu_test_files(with_grader: bool) -> list[Path]:
    """The test modules that hold GPU tests (the others are not even imported: nbgrader may be absent)."""
    files = []
    for path in sorted((REPO / "tests").glob("test_*.py")):
        text = path.read_text(encoding="utf-8")
        if any(m in text for m in GPU_TEST_MARKERS) and (with_grader or not any(m in text for m in NEEDS_GRADER)):
            files.append(path)
    return files


SUMMARY = re.compile(r"(\d+) (passed|failed|skipped|deselected|errors?|xfailed|xpassed)")


def parse_pytest_summary(output: str) -> dict[str, int]:
    """``{"passed": 120, "skipped": 3, ...}`` from the last summary line of a pytest run."""
    lines = [line for line in output.splitlines() if SUMMARY.search(line) and " in " in line]
    if not lines:
        return {}
    counts: dict[str, int] = {}
    for number, word in SUMMARY.findall(lines[-1]):
        counts["errors" if word.startswith("error") else word] = int(number)
    return counts


def run_gpu_tests(with_grader: bool) -> tuple[bool, str]:
    files = gpu_test_files(with_grader)
    if not files:
        return False, "no test module with GPU tests was found"
    cmd = [sys.executable, "-m", "pytest", "-m", "needs_cuda", "-q", "-rfEs", "-p", "no:cacheprovider",
           *[str(f.relative_to(REPO)) for f in files]]
    if not has("pytest_timeout"):  # pyproject's `timeout` option is unknown without it (--strict-config)
        cmd += ["-o", "addopts=-ra --strict-markers -p no:cacheprovider"]
    print(f"$ {' '.join(cmd[2:])}", flush=True)
    started = time.monotonic()
    try:
        done = subprocess.run(cmd, cwd=REPO, env=child_env(), capture_output=True, text=True,
                              timeout=TESTS_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        return False, f"the needs_cuda tests ran past {TESTS_TIMEOUT_S} s"
    counts = parse_pytest_summary(done.stdout)
    text = ", ".join(f"{v} {k}" for k, v in counts.items()) or "no summary"
    print(f"   needs_cuda tests: {text} ({time.monotonic() - started:.1f} s, exit {done.returncode})")
    if done.returncode not in (0, 5):
        print("\n".join("   " + line for line in done.stdout.splitlines()[-25:]))
    ok = done.returncode == 0 and counts.get("passed", 0) > 0 and not counts.get("failed") \
        and not counts.get("errors")
    return ok, text


def run_grading(report_path: Path, seed: int | None) -> tuple[dict | None, float, str]:
    cmd = [sys.executable, "-m", "autograder", "grade", str(EXAMPLES), "--json", str(report_path), "-q"]
    if seed is not None:
        cmd += ["--seed", str(seed)]
    print(f"$ python -m autograder grade examples/submissions --json {report_path}"
          + (f" --seed {seed}" if seed is not None else ""), flush=True)
    started = time.monotonic()
    try:
        done = subprocess.run(cmd, cwd=REPO, env=child_env(), capture_output=True, text=True,
                              timeout=GRADING_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        return None, time.monotonic() - started, f"grading ran past {GRADING_TIMEOUT_S} s"
    seconds = time.monotonic() - started
    if done.returncode != 0 or not report_path.exists():
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-20:])
        return None, seconds, f"the grader exited {done.returncode}:\n{tail}"
    return json.loads(report_path.read_text(encoding="utf-8")), seconds, ""


# --- main -------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, help="seed of the graded inputs (default: fresh)")
    parser.add_argument("--skip-tests", action="store_true", help="do not run the needs_cuda tests")
    parser.add_argument("--from-json", type=Path, metavar="REPORT",
                        help="make the table from this report of `python -m autograder grade --json` (no grading)")
    parser.add_argument("--keep-report", type=Path, metavar="PATH", help="write the grading's JSON report here")
    args = parser.parse_args(argv)
    started = time.monotonic()

    print("== GPU check of the self-attention course")
    facts, problems, cuda = environment()
    for key, value in facts.items():
        print(f"   {key:<14} {value}")
    for problem in problems:
        print(f"   ! {problem}")
    if not cuda:
        print(f"   ! {NO_GPU}")
    if any(p.startswith("torch ") for p in problems):
        print("FAIL: torch is not importable")
        return 2
    failures = list(problems)

    if not args.skip_tests and not args.from_json:
        print("== the needs_cuda tests")
        ok, text = run_gpu_tests(with_grader=has("nbformat"))
        if cuda and not ok:
            failures.append(f"the needs_cuda tests did not all pass ({text})")

    report = None
    if args.from_json:
        try:
            report = json.loads(args.from_json.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            print(f"FAIL: cannot read the report {args.from_json}: {exc}")
            return 2
        wall = 0.0
    else:
        print("== grading examples/submissions on " + ("cpu and cuda" if cuda else "cpu only (no CUDA device)"))
        with tempfile.TemporaryDirectory(prefix="selfattn-gpu-check-") as tmp:
            path = args.keep_report or Path(tmp) / "examples.json"
            report, wall, error = run_grading(path, args.seed)
        if error:
            failures.append(error)
    if report is not None:
        rows = summarise(report)
        seeds = {s.get("seed") for s in report.get("submissions", [])}
        print(f"== examples (seed {', '.join(map(str, seeds))}; grading took {wall:.1f} s wall-clock; "
              "'seconds' sums the notebooks, graded two at a time)")
        print(format_table(rows))
        found = grading_problems(rows, cuda_expected=cuda)
        failures += found
        if found:
            print("\n".join(f"   perfect lost: {line}" for line in failed_rows(report)))

    print(f"== {time.monotonic() - started:.0f} s in all")
    if not cuda:
        print(f"FAIL: {NO_GPU} (this is not a GPU pass)")
        return 1
    if failures:
        print("FAIL:\n" + "\n".join(f" - {f}" for f in failures))
        return 1
    print("PASS: the needs_cuda tests passed and the perfect example has full marks on cpu and cuda")
    return 0


if __name__ == "__main__":
    sys.exit(main())
