"""Collectors and items of the grading plugin (imported only when a grading manifest is collected)."""

from __future__ import annotations

import json
import os
import secrets
import traceback
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from autograder import report, shard
from autograder.grading import GPU_NOT_EXERCISED, NotebookResult, ReferenceCache, TestOutcome, grade_notebook
from autograder.intake import edition_copies, notebook_language_at
from autograder.options import SESSION_KEY, resolve
from autograder.pool import WorkerPool
from autograder.runner import GraderError, default_bwrap
from autograder.sandbox import Limits, become_subreaper
from exercises.catalogue import NOTEBOOKS, available_devices, items_in
from exercises.i18n import language, tr


class GradingSession:
    """State shared by every item of one pytest run: options, seed, the notebook results so far."""

    def __init__(self, config: pytest.Config, options: dict):
        self.config = config
        self.options = opt = options  # every option of autograder/options.py, by its name in code
        self.seed = opt["seed"] if opt["seed"] is not None else secrets.randbits(31)
        self.limits = Limits(call_timeout=opt["call_timeout"], cell_timeout=opt["cell_timeout"],
                             memory_bytes=opt["memory_mib"] << 20)
        present = available_devices()
        wanted = opt["device"] or present
        self.devices = [d for d in wanted if d in present]
        self.use_bwrap = None if opt["no_bwrap"] else default_bwrap()
        self.jobs = max(1, opt["jobs"] or len(os.sched_getaffinity(0)))  # the CPUs this process may use
        self.pool = ThreadPoolExecutor(max_workers=self.jobs, thread_name_prefix="selfattn-grade")
        # warm workers (CPU only) and the reference outputs are shared by every submission of the run
        gpus = torch.cuda.device_count() if "cuda" in self.devices else 0
        self.workers = None if opt["cold_workers"] else WorkerPool(self.limits, self.use_bwrap, gpus)
        self.references = ReferenceCache()
        self.futures: dict[tuple[str, str], Future] = {}
        self.submissions: list[report.SubmissionReport] = []
        self.current: dict[str, report.SubmissionReport] = {}
        self.copy_notes: dict[tuple[str, str], str] = {}  # a notebook submitted in both editions: which was graded
        self.done = 0
        self.canary_wanted = not opt["no_canary"]
        self.canary_seconds: float | None = None
        self.fatal: str | None = None
        self.batch: dict | None = None  # the JSON report's "batch" record (autograder/shard.py)
        self.lang = opt.get("lang") or "auto"  # auto: each notebook its own; en/zh: every message, the run's own too
        become_subreaper()
        torch.set_num_threads(1)  # tiny reference computations; threads only contend with the workers

    def check_grader(self) -> None:
        """Grade the reference through the worker once, before any student; stop the run if it loses points."""
        if not self.canary_wanted or self.canary_seconds is not None:
            return
        from autograder.canary import check_grader

        try:
            with language(self.own_language):  # the canary's own report is the run's, not a notebook's
                self.canary_seconds = check_grader(self.devices, self.limits, self.use_bwrap, self.workers).seconds
        except GraderError as exc:
            with language(self.own_language):
                self.fatal = tr("could not grade: {why}").format(why=exc)
                raise GraderFault(tr("the grader's self-check failed (the reason is printed at the end); nobody was "
                                     "graded")) from None

    @property
    def own_language(self) -> str:
        """The language of the run's own lines (not a notebook's): the one ``--lang`` forces, else English."""
        return self.lang if self.lang != "auto" else "en"

    def start_submission(self, submission: Path, notebooks: dict[str, Path], source_dir: Path | None) -> None:
        """Queue every notebook of ``submission``; items then wait for their own notebook only."""
        opt_all_cells = self.options["all_cells"]
        missing_lang = self.lang
        if self.lang == "auto":  # a notebook not submitted is reported in the language of the ones that were
            found = {notebook_language_at(path) for path in notebooks.values()}
            missing_lang = found.pop() if len(found) == 1 else "en"
        for notebook in NOTEBOOKS:
            key = (str(submission), notebook)
            if key not in self.futures:
                path = notebooks.get(notebook)
                self.futures[key] = self.pool.submit(grade_notebook, notebook, path, self.seed,
                                                     self.devices, self.limits, self.use_bwrap, source_dir,
                                                     self.workers, self.references, opt_all_cells,
                                                     self.lang if path is not None else missing_lang)

    def notebook_result(self, submission: Path, notebook: str) -> NotebookResult:
        """The graded notebook; ``GraderFault`` when the grader could not grade it (the student is not charged)."""
        key = (str(submission), notebook)
        sub = self.current[str(submission)]
        try:
            result = self.futures[key].result()
        except Exception as exc:  # noqa: BLE001 - grade_notebook never raises for a student's fault
            with language(self.own_language):
                why = str(exc) if isinstance(exc, GraderError) else tr("internal error of the grader: {trace}").format(
                    trace="".join(traceback.format_exception(exc))[-3000:])
                sub.grader_errors.setdefault(notebook, why)
                raise GraderFault(tr("could not grade {notebook} of {submission}: {why}").format(
                    notebook=notebook, submission=Path(sub.path).name, why=why)) from None
        if result not in sub.notebooks:
            note = self.copy_notes.get(key)
            if note and note not in result.notes:
                result.notes.insert(0, note)
            sub.add(result)
            if len(sub.notebooks) == len(NOTEBOOKS):
                self.done += 1
                sub.notebooks.sort(key=lambda nb: NOTEBOOKS.index(nb.notebook))
                self.progress(sub)
        return result

    def progress(self, sub: report.SubmissionReport) -> None:
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None and len(self.submissions) > 1:
            width = 30
            filled = int(width * self.done / len(self.submissions))
            reporter.write_line(f"[{'#' * filled}{'.' * (width - filled)}] {self.done}/{len(self.submissions)} "
                                f"{Path(sub.path).name}: {sub.score:g}/{sub.max_score:g} "
                                f"({sum(nb.seconds for nb in sub.notebooks):.1f} s)")


def _session(config: pytest.Config, manifest: dict | None = None) -> GradingSession:
    """The run's grading session, made by the first manifest collected (its options win over pytest's)."""
    if SESSION_KEY not in config.stash:
        config.stash[SESSION_KEY] = GradingSession(config, resolve(config, manifest))
    return config.stash[SESSION_KEY]


class Manifest(pytest.File):
    """``{"submissions": [paths], "source": source dir, "options": {...}}``: one collector per submission.

    ``source`` and ``options`` are optional (this repository's ``source/``; pytest's ``--selfattn-*``).
    """

    def repr_failure(self, excinfo, style=None):
        if isinstance(excinfo.value, GraderFault):
            return f"[grader error] {excinfo.value}"
        if isinstance(excinfo.value, shard.ShardError):
            return f"error: {excinfo.value}"
        return super().repr_failure(excinfo)  # a Collector's takes no style

    def collect(self):
        data = json.loads(self.path.read_text(encoding="utf-8"))
        source = Path(data["source"]) if data.get("source") else None
        session = _session(self.config, data)
        mine, session.batch = shard.plan(data, session.options)  # --shard: this run's slice of the batch
        if session.workers is not None:  # the warm workers import torch while the canary runs
            session.workers.prewarm(min(session.jobs, len(NOTEBOOKS) * len(mine) + 1))
        session.check_grader()
        for path in mine:
            session.current[str(path)] = report.SubmissionReport(str(path), session.seed, session.devices,
                                                                 "bubblewrap" if session.use_bwrap else "rlimits",
                                                                 lang=None if session.lang == "auto" else session.lang)
            session.submissions.append(session.current[str(path)])
            yield SubmissionCollector.from_parent(self, name=path.name or str(path), submission=path, source=source)


class SubmissionCollector(pytest.Collector):
    def __init__(self, *, submission: Path, source: Path | None, **kwargs):
        super().__init__(**kwargs)
        self.submission, self.source = submission, source

    def collect(self):
        copies = edition_copies(self.submission, NOTEBOOKS)
        found = {name: paths[0] for name, (paths, _) in copies.items()}
        session = _session(self.config)
        session.copy_notes.update({(str(self.submission), name): note for name, (_, note) in copies.items() if note})
        session.start_submission(self.submission, found, self.source)
        for notebook in NOTEBOOKS:
            yield NotebookCollector.from_parent(self, name=notebook, submission=self.submission,
                                                notebook_path=found.get(notebook), source=self.source)


class NotebookCollector(pytest.Collector):
    def __init__(self, *, submission: Path, notebook_path: Path | None, source: Path | None, **kwargs):
        super().__init__(**kwargs)
        self.submission, self.notebook_path, self.source = submission, notebook_path, source

    def result(self) -> NotebookResult:
        return _session(self.config).notebook_result(self.submission, self.name)

    def collect(self):
        session = _session(self.config)
        for item in items_in(self.name):
            for device in ["cpu", "cuda"]:
                if device not in session.devices:
                    if device == "cuda":
                        yield GradedItem.from_parent(self, name=f"{item.name}[cuda]", graded=item.name,
                                                     device=device, variant=None)
                    continue
                for variant in item.variants(device):
                    label = f"{device}-{variant}" if variant else device
                    yield GradedItem.from_parent(self, name=f"{item.name}[{label}]", graded=item.name,
                                                 device=device, variant=variant)


class GradeFailure(Exception):
    """Raised by a graded item that lost points; its text is the student's message."""


class GraderFault(Exception):
    """Raised by a graded item that the grader could not grade: the grader's fault, never a score."""


class GradedItem(pytest.Item):
    def __init__(self, *, graded: str, device: str, variant: str | None, **kwargs):
        super().__init__(**kwargs)
        self.graded, self.device, self.variant = graded, device, variant

    def outcome(self) -> TestOutcome:
        for row in self.parent.result().outcomes:
            if (row.item, row.device, row.variant) == (self.graded, self.device, self.variant):
                return row
        raise LookupError(f"no outcome for {self.name}")

    def runtest(self) -> None:
        row = self.outcome()
        self.user_properties += [("score", row.score), ("max_score", row.max_score), ("status", row.status)]
        if row.status == "skipped":
            pytest.skip(row.message or GPU_NOT_EXERCISED)
        if row.status != "passed":
            raise GradeFailure(f"[{row.status}] {row.message}")

    def repr_failure(self, excinfo, style=None):
        if isinstance(excinfo.value, GradeFailure):
            return str(excinfo.value)
        if isinstance(excinfo.value, GraderFault):
            return f"[grader error] {excinfo.value}"
        return super().repr_failure(excinfo, style)

    def reportinfo(self):
        return self.path, None, f"{self.parent.name}::{self.name}"


