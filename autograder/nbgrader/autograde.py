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

**A class is graded as one batch** (``SandboxAutograde.batch``, on by default). nbgrader's autograde
loops over the students one at a time (``nbgrader/converters/base.py: convert_notebooks``); at the
first notebook of a run, the preprocessor asks the converter (its exporter's parent) which submission
folders this run will process (:func:`pending_submissions`, nbgrader's own skip rules without their
side effects) and grades them all, as one batch folder of links named after the students
(:func:`batch_folder`), with one ``python -m autograder grade``: one canary, one torch import, warm
workers and shared references, every core. The grader's progress (its graded checks done/total,
elapsed time, ETA: :func:`progress_line`) goes to nbgrader's log as it comes. nbgrader's loop then
writes each student's scores from that report into the gradebook. Whatever the batch did not grade
cleanly (the batch failed, or lists a student under ``not_graded``) is graded alone as before, so a
grader fault stays that student's error, never a zero, and never another student's. The
Formgrader's per-student button is a run of one student: the same path as before.

The grader's self-check (it grades the reference solutions first and stops with exit 2 when they
lose points) runs once per run, for the first submission (``SandboxAutograde.canary_once``).

One seed per ``nbgrader autograde`` run (drawn once per run, or ``SandboxAutograde.seed``):
every student of a run gets the same random inputs; the seed is logged and written into every test
cell's message.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nbformat.notebooknode import NotebookNode, from_dict
from nbgrader import utils
from nbgrader.coursedir import CourseDirectory
from nbgrader.preprocessors import NbGraderPreprocessor
from traitlets import Bool, Float, Integer, List, Unicode

__all__ = ["DropScoreOutputs", "SandboxAutograde", "SandboxGradingError", "batch_folder", "cell_outcome", "item_rows",
           "pending_submissions", "run_batch", "run_grader"]

# The folder that holds the ``autograder`` package this process imported: the grader subprocess
# must run the same code, whether the course is pip-installed or run from its repository.
_PACKAGE_PARENT = str(Path(__file__).resolve().parents[2])  # autograder/nbgrader/autograde.py -> the course root
_MAX_MESSAGE = 600  # characters of one row's message in a test cell (the full report is in the log)
#: Metadata key of the ``execute_result`` that carries a test cell's score to ``SaveAutoGrades``.
SCORE_MARK = "selfattn_score"
#: How the grader is started; a test puts a stand-in here.
GRADER = [sys.executable, "-m", "autograder"]


class SandboxGradingError(RuntimeError):
    """The sandboxed grader could not grade a submission: the grader's fault, never a zero."""


def run_grader(submission: Path, source: Path, seed: int, extra_args: list[str], timeout: float,
               cwd: Path | None = None) -> dict[str, Any]:
    """Grade one submission folder with ``python -m autograder grade``; return its JSON submission object.

    Raises :class:`SandboxGradingError` with the grader's output when it exits non-zero (exit 2: the
    grader failed), runs past ``timeout``, writes no report, or lists the submission as not graded.
    """
    # the grader runs the worker with this interpreter; its bin/ first, as for nbgrader's own tools
    env = _grader_env()
    with tempfile.TemporaryDirectory(prefix="selfattn-nbgrader-") as tmp:
        report = Path(tmp) / "report.json"
        command = [*GRADER, "grade", str(submission), "--json", str(report),
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


def _grader_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(x for x in (_PACKAGE_PARENT, env.get("PYTHONPATH")) if x)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    return env


def run_batch(submissions: list[Path], source: Path, seed: int, extra_args: list[str], timeout: float,
              cwd: Path | None = None, on_line: Callable[[str], None] | None = None
              ) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """Grade several submission folders in one grader run; ``(reports, not_graded)`` by resolved path.

    The grader's output lines go to ``on_line`` as they come (its progress bar: done/total, ETA).
    Raises :class:`SandboxGradingError` when the run as a whole gave nothing to trust: a non-zero exit
    (a failed self-check, a worker that could not start), a timeout, or no report. A submission the
    report lists under ``not_graded`` is in ``not_graded`` with the grader's reason, never scored.
    """
    with tempfile.TemporaryDirectory(prefix="selfattn-nbgrader-batch-") as tmp:
        report = Path(tmp) / "report.json"
        # One batch folder of links named after the students: the grader names a submission after its folder,
        # and every nbgrader submission folder has the same name (the assignment's).
        links = batch_folder(submissions, Path(tmp) / "batch")
        command = [*GRADER, "grade", str(Path(tmp) / "batch"), "--json", str(report),
                   "--seed", str(seed), "--source", str(source), "-q", *extra_args]
        proc = subprocess.Popen(command, cwd=cwd or tmp, env=_grader_env(), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, errors="replace")
        timer = threading.Timer(timeout, proc.kill)  # the whole batch's limit; kill() ends the line loop
        timer.start()
        tail: list[str] = []
        try:
            for line in proc.stdout:
                line = line.rstrip("\n")
                tail = (tail + [line])[-60:]
                if on_line is not None:
                    on_line(line)
            code = proc.wait()
        finally:
            timed_out = not timer.is_alive()
            timer.cancel()
        output = "\n".join(tail)[-6000:]
        if timed_out and code != 0:
            raise SandboxGradingError(f"the sandboxed grader ran longer than {timeout:g} s on a batch of "
                                      f"{len(submissions)} submissions; nothing was scored")
        if code != 0:
            raise SandboxGradingError(f"the sandboxed grader could not grade the batch (exit status {code}; "
                                      f"not the students' fault, nothing was scored):\n{output}")
        if not report.is_file():
            raise SandboxGradingError(f"the sandboxed grader wrote no report for the batch:\n{output}")
        data = json.loads(report.read_text(encoding="utf-8"))
    def original(path: str) -> str:
        return str(links.get(Path(path).name, Path(path)).resolve())

    reports = {original(sub["path"]): dict(sub, path=original(sub["path"])) for sub in data.get("submissions") or []}
    not_graded = {original(entry["path"]): json.dumps(entry.get("errors"))[:2000]
                  for entry in data.get("not_graded") or []}
    return reports, not_graded


def batch_folder(submissions: list[Path], folder: Path) -> dict[str, Path]:
    """Make ``folder`` hold one link per submission folder, named after its student; ``{name: submission}``.

    ``submitted/<student>/<assignment>`` is linked as ``<student>`` (``<student>-<assignment>`` where
    a student has several, ``-2``... on any other clash).
    """
    folder.mkdir(parents=True)
    links: dict[str, Path] = {}
    students = [p.parent.name for p in submissions]
    for path in submissions:
        name = path.parent.name if students.count(path.parent.name) == 1 else f"{path.parent.name}-{path.name}"
        base, n = name, 1
        while name in links or name.startswith("."):
            n += 1
            name = f"{base.lstrip('.')}-{n}"
        (folder / name).symlink_to(path.resolve(), target_is_directory=True)
        links[name] = path
    return links


def _submitted(coursedir: Any, student_id: str, assignment_id: str, escape: bool = False) -> str:
    # not converter._format_source: while a notebook is autograded, that points at autograded/
    return coursedir.format_path(coursedir.submitted_directory, student_id, assignment_id, escape=escape)


_COUNT = re.compile(r"\[\s*(\d+)/(\d+)\]\s*$")  # pytest's console_output_style=count, at a line's end


def progress_line(line: str, elapsed: float, students: int) -> str | None:
    """``graded checks 135/249 (54%) of 3 students, elapsed 20 s, ETA 17 s`` from a grader output line
    that ends in pytest's ``[done/total]`` count; None for any other line."""
    match = _COUNT.search(line)
    if not match:
        return None
    done, total = int(match[1]), int(match[2])
    if not total:
        return None
    eta = elapsed / done * (total - done) if done else float("nan")
    return (f"graded checks {done}/{total} ({100 * done / total:.0f}%) of {students} students, "
            f"elapsed {elapsed:.0f} s, " + (f"ETA {eta:.0f} s" if done < total else "done"))


def _will_process(converter: Any, assignment_id: str, student_id: str) -> bool:
    """Whether nbgrader's ``init_destination`` will process this submission, without its side effects."""
    coursedir = converter.coursedir
    if coursedir.student_id_exclude and student_id in coursedir.student_id_exclude.split(","):
        return False
    dest = os.path.normpath(converter._format_dest(assignment_id, student_id))
    if coursedir.notebook_id != "*" or not os.path.exists(dest) or converter.force:
        return True
    new = coursedir.get_existing_timestamp(_submitted(coursedir, student_id, assignment_id))
    old = coursedir.get_existing_timestamp(dest)
    return new is not None and old is not None and new > old


def pending_submissions(converter: Any, current: Path) -> list[Path]:
    """The submission folders this autograde run will process, ``current`` first, then in nbgrader's order.

    ``converter`` is nbgrader's ``Autograde`` (it globbed ``submitted/<student>/<assignment>`` into
    ``converter.assignments`` before the first notebook). Folders before ``current`` in nbgrader's
    order were already passed over. A wrong guess costs time, never a score: a folder the batch did not
    grade is graded alone when nbgrader reaches it.
    """
    folders = sorted(getattr(converter, "assignments", None) or {})
    if not folders or not hasattr(converter, "_format_dest"):
        return [current]
    regexp = _submitted(converter.coursedir, "(?P<student_id>.*)", "(?P<assignment_id>.*)", escape=True)
    resolved = [Path(f).resolve() for f in folders]
    later = resolved.index(current) + 1 if current in resolved else 0
    out = [current]
    for folder, path in zip(folders[later:], resolved[later:], strict=True):
        match = re.match(regexp, folder)
        if path != current and match and _will_process(converter, match["assignment_id"], match["student_id"]):
            out.append(path)
    return out


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

    batch = Bool(
        True,
        help="Grade every submission of an autograde run in one grader run (one self-check, warm workers, "
             "every core), then write each student's scores. False: one grader run per student.",
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
            state = {"seed": seed, "reports": {}, "canary_ran": False, "batch_tried": False, "written": set()}
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
        if key not in state["reports"] and self.batch and not state["batch_tried"]:
            state["batch_tried"] = True
            self._grade_batch(state, coursedir, submitted)
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
        if key not in state["written"]:
            state["written"].add(key)
            total = max(len(state["reports"]), len(state["written"]))
            self.log.info("Sandboxed grader: writing %s's scores (%d of %d graded)", student,
                          len(state["written"]), total)
        return state["reports"][key]

    def _grade_batch(self, state: dict[str, Any], coursedir: CourseDirectory, current: Path) -> None:
        """Grade every submission this run will process in one grader run; keep the reports it gave."""
        converter = getattr(self.parent, "parent", None)  # the exporter's parent: nbgrader's converter
        batch = pending_submissions(converter, current)
        if len(batch) < 2:
            return  # one student (the Formgrader's button): the one-student path
        args = list(self.grader_args)
        self.log.info("Sandboxed grader: grading %d submissions as one batch (seed %d)", len(batch), state["seed"])

        started = time.monotonic()

        def progress(line: str) -> None:
            counted = progress_line(line, time.monotonic() - started, len(batch))
            if counted:
                self.log.info("Sandboxed grader: %s", counted)
            elif line.startswith("error") or "[grader error]" in line:
                self.log.info("Sandboxed grader: %s", line.strip())

        try:
            reports, not_graded = run_batch(batch, Path(coursedir.root) / coursedir.source_directory,
                                            state["seed"], args, self.timeout * len(batch),
                                            cwd=Path(coursedir.root), on_line=progress)
        except SandboxGradingError as exc:
            self.log.warning("Sandboxed grader: the batch gave no scores; grading each student alone.\n%s", exc)
            return
        state["canary_ran"] = True
        for path, report in reports.items():
            report.setdefault("seed", state["seed"])
            state["reports"][path] = report
        for path, why in not_graded.items():
            self.log.warning("Sandboxed grader: %s was not graded in the batch (%s); grading it alone", path, why)

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
                from_dict({"output_type": "execute_result", "execution_count": None,
                           "metadata": {SCORE_MARK: True}, "data": {"text/plain": repr(score)}}),
            ]
            cell.execution_count = None
        return nb, resources


class DropScoreOutputs(NbGraderPreprocessor):
    """Remove the score ``execute_result`` from test cells once ``SaveAutoGrades`` has stored it.

    nbgrader reads partial credit from that output, so :class:`SandboxAutograde` must write it; left in
    the autograded notebook it shows as a bare ``Out[ ]: 0.5`` under each grader message in the
    Formgrader and the feedback, where the score is already said in words. Put after ``SaveAutoGrades``.
    Outputs without the mark (none in a sandboxed autograde) are kept.
    """

    def preprocess_cell(self, cell: NotebookNode, resources: dict[str, Any], index: int
                        ) -> tuple[NotebookNode, dict[str, Any]]:
        if cell.cell_type == "code" and utils.is_grade(cell):
            cell.outputs = [o for o in cell.outputs
                            if not (o.output_type == "execute_result" and o.get("metadata", {}).get(SCORE_MARK))]
        return cell, resources
