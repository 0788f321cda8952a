"""``nbgrader autograde`` with the sandboxed grader's scores: one score, whichever front end.

nbgrader's own autograde runs the whole submitted notebook, hidden tests included, in a kernel of
the instructor's environment. Whatever runs there is the student's to change: an answer cell that
replaces ``torch.allclose`` (or anything else the hidden tests use) passes every test. Nothing
trustworthy can run inside that kernel.

:class:`SandboxAutograde` takes the place of nbgrader's ``Execute`` in
``Autograde.autograde_preprocessors`` (``nbgrader_config.py``)::

    [SandboxAutograde, IgnorePattern, ClearMetadataPreprocessor, LimitOutput, SaveAutoGrades, ...]

For the first notebook of a submission it grades the student's whole submitted folder with the
isolated grader, as a subprocess: ``python -m autograder grade <submitted/student/assignment>
--json ... --seed N --source <course>/source`` (the CLI's JSON report is the interface; the
spec's format). The report is kept in memory, per submission folder, for the submission's other
notebooks. Into each test cell (``grade_id`` ``test_<item>``) it writes that item's outcome: a
``stdout`` stream with a short message (the score, and per device and dtype what passed and what
to fix: the grader's own student-facing messages, never the test code) and an ``execute_result``
holding the score, which nbgrader reads as partial credit (``nbgrader.utils.determine_grade``);
``SaveAutoGrades`` then stores exactly the sandboxed score, and the Formgrader, feedback and
``nbgrader export`` show it.

**The student's code is not run in the instructor's kernel at all.** Running it there would not
change the score (that is fixed before), but the kernel runs as the instructor, next to the
gradebook and the grader's own files: a hostile answer could rewrite either for the next student.
The price: the feedback shows the grader's messages in the test cells, not the student's outputs
and plots (the student has those in their own notebook).

A grader fault never becomes a zero: when the grader exits with any status but 0, times out, lists
the submission under ``not_graded``, or its report lacks an item that the notebook has a test
cell for (or disagrees on its points), the preprocessor raises :class:`SandboxGradingError`.
nbgrader then logs the error for that student, removes their half-written ``autograded/`` folder,
goes on with the other students and exits non-zero.

The grader's self-check (it grades the reference solutions first and stops with exit 2 when they
lose points) runs once per run, for the first submission (``SandboxAutograde.canary_once``).

One seed per ``nbgrader autograde`` run (drawn once per run, or ``SandboxAutograde.seed``):
every student of a run gets the same random inputs; the seed is logged and written into every test
cell's message.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from nbformat.notebooknode import NotebookNode, from_dict
from nbgrader import utils
from nbgrader.coursedir import CourseDirectory
from nbgrader.preprocessors import NbGraderPreprocessor
from traitlets import Bool, Float, Integer, List, Unicode

__all__ = ["SandboxAutograde", "SandboxGradingError", "cell_outcome", "item_rows", "run_grader"]

# The folder that holds the ``autograder`` package this process imported: the grader subprocess
# must run the same code, whether the course is pip-installed or run from its repository.
_PACKAGE_PARENT = str(Path(__file__).resolve().parents[2])  # autograder/nbgrader/autograde.py -> the course root
_MAX_MESSAGE = 600  # characters of one row's message in a test cell (the full report is in the log)


class SandboxGradingError(RuntimeError):
    """The sandboxed grader could not grade a submission: the grader's fault, never a zero."""


def run_grader(submission: Path, source: Path, seed: int, extra_args: list[str], timeout: float,
               cwd: Path | None = None) -> dict[str, Any]:
    """Grade one submission folder with ``python -m autograder grade``; return its JSON submission object.

    Raises :class:`SandboxGradingError` with the grader's output when it exits non-zero (exit 2: the
    grader failed), runs past ``timeout``, writes no report, or lists the submission as not graded.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(x for x in (_PACKAGE_PARENT, env.get("PYTHONPATH")) if x)
    # the grader runs the worker with this interpreter; its bin/ first, as for nbgrader's own tools
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    with tempfile.TemporaryDirectory(prefix="selfattn-nbgrader-") as tmp:
        report = Path(tmp) / "report.json"
        command = [sys.executable, "-m", "autograder", "grade", str(submission), "--json", str(report),
                   "--seed", str(seed), "--source", str(source), "-q", *extra_args]
        try:
            proc = subprocess.run(command, cwd=cwd or tmp, env=env, capture_output=True, text=True,
                                  timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise SandboxGradingError(f"the sandboxed grader ran longer than {timeout:g} s on {submission}; "
                                      "nothing was scored (raise SandboxAutograde.timeout?)") from exc
        output = (proc.stdout[-3000:] + proc.stderr[-5000:]).strip()
        if proc.returncode != 0:
            raise SandboxGradingError(f"the sandboxed grader could not grade {submission} (exit status "
                                      f"{proc.returncode}; not the student's fault, nothing was scored):\n{output}")
        if not report.is_file():
            raise SandboxGradingError(f"the sandboxed grader wrote no report for {submission}:\n{output}")
        data = json.loads(report.read_text(encoding="utf-8"))
    if data.get("not_graded"):
        raise SandboxGradingError(f"the sandboxed grader could not grade {submission}: "
                                  f"{json.dumps(data['not_graded'])[:2000]}\n{output}")
    subs = data.get("submissions") or []
    if len(subs) != 1:
        raise SandboxGradingError(f"the sandboxed grader reported {len(subs)} submissions for {submission}, "
                                  f"expected 1:\n{output}")
    return subs[0]


def item_rows(report: dict[str, Any], notebook: str) -> dict[str, list[dict[str, Any]]]:
    """The report's rows of one notebook (file name), by item, in report order."""
    rows: dict[str, list[dict[str, Any]]] = {}
    for test in report.get("tests", []):
        if test.get("notebook") == notebook:
            rows.setdefault(test["item"], []).append(test)
    return rows


def _row_line(row: dict[str, Any]) -> str:
    name = row.get("name") or f"{row['item']}[{row['device']}]"
    line = f"  {name}: {row['status']}"
    if row.get("max_score"):
        line += f" ({row['score']:g}/{row['max_score']:g})"
    message = " ".join(str(row.get("message") or "").split())
    if message and row["status"] != "passed":
        line += ": " + (message if len(message) <= _MAX_MESSAGE else message[:_MAX_MESSAGE] + " ...")
    return line


def cell_outcome(item: str, rows: list[dict[str, Any]], points: float, seed: int) -> tuple[float, str]:
    """``(score, message)`` of one test cell worth ``points`` from its item's report rows.

    Raises :class:`SandboxGradingError` when there are no rows or the grader's points for the item
    differ from the cell's (the grader and the gradebook disagree about the course: never guessed).
    """
    if not rows:
        raise SandboxGradingError(f"the sandboxed grader's report has no result for `{item}`")
    score = round(sum(float(r["score"]) for r in rows), 4)
    maximum = round(sum(float(r["max_score"]) for r in rows), 4)
    if abs(maximum - points) > 1e-6:
        raise SandboxGradingError(f"`{item}` is worth {points:g} points in the gradebook but {maximum:g} "
                                  "to the sandboxed grader: regenerate the assignment from source/")
    score = min(max(score, 0.0), points)
    lines = [f"Sandboxed grader (seed {seed}): {score:g} / {points:g} points for `{item}`"]
    lines += [_row_line(r) for r in rows]
    return score, "\n".join(lines) + "\n"


class SandboxAutograde(NbGraderPreprocessor):
    """Write the sandboxed grader's outcome into every test cell (see the module docstring)."""

    seed = Integer(
        None, allow_none=True,
        help="Seed of the grader's random inputs for every student (default: a fresh one per autograde run, logged).",
    ).tag(config=True)

    grader_args = List(
        Unicode(), [],
        help="Extra arguments for `python -m autograder grade`, e.g. ['--device', 'cpu', '--call-timeout', '10'].",
    ).tag(config=True)

    canary_once = Bool(
        True,
        help="Run the grader's self-check (the canary) for the first submission of a run only; later ones "
             "get --no-canary. A worker that fails for a later student is still a grader error.",
    ).tag(config=True)

    timeout = Float(
        3600.0, help="Seconds the grader may take for one submission before the submission fails loudly.",
    ).tag(config=True)

    def _run_state(self) -> dict[str, Any]:
        """What one ``nbgrader autograde`` run shares across its notebooks: the seed and the reports.

        nbgrader builds new preprocessors for every notebook but one exporter per run (the
        Formgrader starts a new converter for every request, in its own long-lived process), so the
        state lives on the exporter: a later run, e.g. after a resubmission, grades afresh.
        """
        holder = self.parent if self.parent is not None else self
        state = getattr(holder, "_selfattn_sandbox_run", None)
        if state is None:
            seed = int(self.seed) if self.seed is not None else secrets.randbelow(2**31)
            state = {"seed": seed, "reports": {}, "canary_ran": False}
            holder._selfattn_sandbox_run = state
            self.log.info("Sandboxed grader: seed %d for this autograde run", seed)
        return state

    def report_for(self, resources: dict[str, Any]) -> dict[str, Any]:
        """The grader's report of this notebook's submission, graded once per submission folder and run."""
        state = self._run_state()
        coursedir = CourseDirectory(config=self.config)
        student = resources["nbgrader"]["student"]
        assignment = resources["nbgrader"]["assignment"]
        submitted = Path(coursedir.format_path(coursedir.submitted_directory, student, assignment)).resolve()
        key = str(submitted)
        if key not in state["reports"]:
            args = list(self.grader_args)
            if self.canary_once and state["canary_ran"] and "--no-canary" not in args:
                args.append("--no-canary")  # this run's self-check passed already
            self.log.info("Sandboxed grader: grading %s (seed %d, %s)", submitted, state["seed"],
                          "no self-check" if "--no-canary" in args else "self-check first")
            report = run_grader(submitted, Path(coursedir.root) / coursedir.source_directory, state["seed"],
                                args, self.timeout, cwd=Path(coursedir.root))
            state["canary_ran"] = True
            report.setdefault("seed", state["seed"])
            self.log.info("Sandboxed grader: %s scored %s / %s (seed %s)", student, report["score"],
                          report["max_score"], report["seed"])
            state["reports"][key] = report
        return state["reports"][key]

    def preprocess(self, nb: NotebookNode, resources: dict[str, Any]) -> tuple[NotebookNode, dict[str, Any]]:
        report = self.report_for(resources)
        notebook = resources["nbgrader"]["notebook"] + ".ipynb"
        rows = item_rows(report, notebook)
        seed = int(report["seed"])
        for cell in nb.cells:
            if not utils.is_grade(cell) or cell.cell_type != "code":
                continue
            grade_id = cell.metadata["nbgrader"]["grade_id"]
            item = grade_id.removeprefix("test_")
            points = float(cell.metadata["nbgrader"].get("points", 0))
            score, message = cell_outcome(item, rows.get(item, []), points, seed)
            cell.outputs = [
                from_dict({"output_type": "stream", "name": "stdout", "text": message}),
                from_dict({"output_type": "execute_result", "execution_count": None, "metadata": {},
                           "data": {"text/plain": repr(score)}}),
            ]
            cell.execution_count = None
        return nb, resources
