"""nbgrader settings of the self-attention course (nbgrader 0.9).

nbgrader reads this file from the directory it is started in. The course root is the directory of
this file, so the same file works in the repository and in a copy of the course elsewhere (the
test suite copies it with ``source/`` into a temporary directory and runs the real nbgrader there).

    nbgrader generate_assignment self_attention --force   # source/ -> release/ (or scripts/release.py)
    nbgrader generate_assignment self_attention_zh --force  # the Chinese edition (same notebook names)
    nbgrader autograde self_attention                      # submitted/<student>/self_attention/
    nbgrader autograde self_attention_zh                   # submitted/<student>/self_attention_zh/
    nbgrader generate_feedback self_attention              # feedback/, hidden tests hidden
    nbgrader export                                        # grades.csv

JupyterLab (``bash run.sh lab``, or ``.venv/bin/jupyter lab`` from the course root, activated or not)
loads this file for the Formgrader, the Assignment List and the Validate button; the block "JupyterLab
and the Formgrader" at the end makes those work however the Lab was started.
"""

import os
import sys

from nbconvert.preprocessors import CSSHTMLHeaderPreprocessor
from nbgrader.preprocessors import GetGrades

COURSE_ROOT = os.path.dirname(os.path.abspath(__file__))
if COURSE_ROOT not in sys.path:  # the course's own packages, when the project is not pip-installed
    sys.path.append(COURSE_ROOT)

from autograder.nbgrader.feedback import HideHiddenTests  # noqa: E402

c = get_config()  # noqa: F821 (provided by traitlets when it loads this file)

# --- course and directories -------------------------------------------------------------------
c.CourseDirectory.course_id = "self-attention"
c.CourseDirectory.root = COURSE_ROOT
c.CourseDirectory.source_directory = "source"
c.CourseDirectory.release_directory = "release"
# submitted/, autograded/ and feedback/ keep nbgrader's defaults.
c.CourseDirectory.db_url = "sqlite:///" + os.path.join(COURSE_ROOT, "gradebook.db")

# --- generate_assignment ----------------------------------------------------------------------
# An answer cell's solution region becomes this stub (see STUB_MESSAGE in the JupyterLab block below),
# so a released notebook fails every test with NotImplementedError and nothing else.

# The Formgrader's Generate and `nbgrader generate_assignment` draw the lessons' pictures into the release,
# as scripts/release.py does (scripts/figures.py), so both ways give the same notebooks. nbgrader logs a
# failing hook at INFO level only, so the hook logs its own error before it re-raises. A course copy
# without scripts/figures.py (the test suite's, scripts/release.py's temporary one) gets no pictures here:
# scripts/release.py draws them itself after nbgrader.
def _draw_release_figures(assignment: str, student: str, notebooks: list) -> None:
    import importlib.util
    import logging
    from pathlib import Path

    script = Path(COURSE_ROOT) / "scripts" / "figures.py"
    if not script.is_file() or not assignment or "*" in assignment:
        return
    try:
        spec = importlib.util.spec_from_file_location("_selfattn_figures", script)
        figures = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(figures)
        figures.add_figures_to_release(Path(COURSE_ROOT) / "release" / assignment,
                                       Path(COURSE_ROOT) / "source" / assignment)
    except Exception:
        logging.getLogger("NbGraderAPI").exception("could not draw the lesson pictures into release/%s", assignment)
        raise


c.GenerateAssignment.post_convert_hook = _draw_release_figures


# The Chinese edition (assignment self_attention_zh) is built from the master and i18n/zh/ (scripts/editions.py):
# the Formgrader's Generate of it rebuilds source/self_attention_zh/ first, as scripts/release.py does, so an
# edit of the master shows in both editions. A translation that no longer fits its master is logged as an
# error and the edition on disk is left as it was (nbgrader ignores a failing pre-convert hook).
def _build_edition(assignment: str, student: str, notebooks: list) -> None:
    import importlib.util
    import logging
    from pathlib import Path

    script = Path(COURSE_ROOT) / "scripts" / "editions.py"
    lang = (assignment or "").rpartition("_")[2]
    if not script.is_file() or not (assignment or "").startswith("self_attention_") or not lang.isalpha():
        return
    log = logging.getLogger("NbGraderAPI")
    try:
        spec = importlib.util.spec_from_file_location("_selfattn_editions", script)
        editions = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(editions)
        if editions.build(lang, root=Path(COURSE_ROOT)) != 0:
            log.error("source/%s is NOT rebuilt: a translation in i18n/%s/ does not fit its master (above); "
                      "run python scripts/editions.py build", assignment, lang)
    except Exception:
        log.exception("could not build source/%s from the master", assignment)
        raise


c.GenerateAssignment.pre_convert_hook = _build_edition

# --- autograde --------------------------------------------------------------------------------
# Seconds per cell (nbgrader's default is 30). The whole notebook runs in the `python3` kernel of
# the environment that runs nbgrader: jupyter_client replaces a kernelspec argv of "python" by
# sys.executable, so the kernel imports the installed `exercises` and `solutions` packages.
c.Execute.timeout = 120
c.Execute.kernel_name = "python3"
# Execute.allow_errors is fixed to True by nbgrader 0.9 (not configurable; see
# nbgrader/preprocessors/execute.py): a failing cell is recorded and the notebook goes on.
# A test cell that a student deleted is put back from the gradebook, so it still runs and is
# scored (nbgrader 0.9 option; nbgrader/preprocessors/overwritecells.py).
c.OverwriteCells.add_missing_cells = True
# nbgrader's sanitizing chain with CourseOverwriteCells in place of OverwriteCells: a test cell whose hidden
# tests the release removed is not reported as changed (autograder/nbgrader/sanitize.py); a cell the
# student really changed still is, and every locked cell is put back from the gradebook as before.
# CourseCheckCellMetadata is nbgrader's CheckCellMetadata (same verdicts) with the schema checked once, not
# once per cell: that re-check was a quarter of autograde's own time per student.
from nbgrader.preprocessors import ClearOutput, DeduplicateIds, OverwriteKernelspec  # noqa: E402

from autograder.nbgrader.sanitize import CourseCheckCellMetadata, CourseOverwriteCells  # noqa: E402

c.Autograde.sanitize_preprocessors = [ClearOutput, DeduplicateIds, OverwriteKernelspec, CourseOverwriteCells,
                                      CourseCheckCellMetadata]

# --- feedback ---------------------------------------------------------------------------------
# nbgrader's chain is [GetGrades, CSSHTMLHeaderPreprocessor]; HideHiddenTests runs before the HTML
# export and removes hidden-test source and its tracebacks from what students receive.
# FeedbackHeader puts the assignment total and wrapping output text at the top of each page.
from autograder.nbgrader.readable import FeedbackHeader, StudentName  # noqa: E402

c.GenerateFeedback.preprocessors = [GetGrades, HideHiddenTests, FeedbackHeader, CSSHTMLHeaderPreprocessor]
# MathJax from the Jupyter server that shows the page (the jupyter-server-mathjax package), not from a CDN:
# math renders on an offline course server. nbgrader's feedback template ignores HTMLExporter.mathjax_url;
# the course's templates folder, searched before nbgrader's, holds feedback/mathjax.html.j2 with the local
# URL as its default (see autograder/nbgrader/mathjax.py). The template names stay nbgrader's.
from autograder.nbgrader import mathjax as feedback_mathjax  # noqa: E402

c.HTMLExporter.extra_template_basedirs = feedback_mathjax.template_dirs()
c.HTMLExporter.mathjax_url = feedback_mathjax.MATHJAX_URL

# --- JupyterLab and the Formgrader (issue 11) -----------------------------------------------------
# Each nbgrader process (command line, Formgrader, Assignment List, Validate button) loads this file
# before it does anything, so what is set up here holds however JupyterLab was started.
from autograder.nbgrader import gradebook as nbgrader_gradebook  # noqa: E402
from autograder.nbgrader import validate as nbgrader_validate  # noqa: E402

# Tools nbgrader runs as subprocesses are found from the running Python, not from whatever PATH the
# Lab was started with (`.venv/bin/jupyter lab` without activating the environment).
_BIN = os.path.dirname(sys.executable)
if os.environ.get("PATH", "").split(os.pathsep)[0] != _BIN:
    os.environ["PATH"] = _BIN + os.pathsep + os.environ.get("PATH", "")

# The gradebook is created fully migrated (its alembic version is read in-process, no `alembic` on
# PATH needed) or refused with a clear error if an earlier run left it without its version table.
nbgrader_gradebook.install()

# A single-machine exchange inside the course (gitignored), created on demand: the Assignment List
# and the Formgrader's release/collect work without /usr/local/share/nbgrader/exchange.
EXCHANGE = os.path.join(COURSE_ROOT, "exchange")
os.makedirs(EXCHANGE, exist_ok=True)
c.Exchange.root = EXCHANGE

# The stub that replaces each solution region says what to do (nbgrader's default is a bare
# `raise NotImplementedError()`). The grader reports a call that raises it as "not implemented".
STUB_MESSAGE = "write your answer here, then run this cell and the check below it"
c.ClearSolutions.code_stub = {"python": f'# YOUR CODE HERE\nraise NotImplementedError("{STUB_MESSAGE}")'}

# Validate (the Lab toolbar button and `nbgrader validate`) starts its result with one line per
# graded cell: passed / FAILED / not answered (autograder/nbgrader/validate.py).
nbgrader_validate.register()

# --- autograde: the sandboxed grader's scores (issue 11, "one score, whichever front end") -------
# nbgrader's Execute would run the student's notebook, hidden tests included, in a kernel the student's
# code can patch (replace torch.allclose and every hidden test passes). SandboxAutograde takes its
# place: it grades each submission once with the isolated grader (`python -m autograder grade`,
# subprocess, one seed per run) and writes each test cell's score (partial credit) and message, which
# SaveAutoGrades stores. Student code is never run in the instructor's kernel. A grader fault makes
# autograde fail for that student (never a zero). See autograder/nbgrader/autograde.py.
# The Execute settings above therefore apply to Validate (nbgrader's Validator runs Execute), not to
# autograde.
from nbconvert.preprocessors import ClearMetadataPreprocessor  # noqa: E402
from nbgrader.preprocessors import (  # noqa: E402
    AssignLatePenalties,
    IgnorePattern,
    LimitOutput,
    SaveAutoGrades,
)

from autograder.nbgrader.autograde import DropScoreOutputs, SandboxAutograde  # noqa: E402

c.Autograde.autograde_preprocessors = [
    SandboxAutograde,  # in place of nbgrader's Execute; the rest is nbgrader 0.9.6's default chain
    IgnorePattern,
    ClearMetadataPreprocessor,
    LimitOutput,
    SaveAutoGrades,
    DropScoreOutputs,  # the score is stored and said in words: no bare `Out[ ]: 0.5` under each message
    StudentName,  # a student autograde created without a name is listed by id, not "None, None"
    AssignLatePenalties,
    CourseCheckCellMetadata,
]
# c.SandboxAutograde.seed = 12345                    # fixed inputs for every run (default: fresh, logged)
# c.SandboxAutograde.grader_args = ["--device", "cpu"]  # any `python -m autograder grade` option
# A class is graded as one batch (one self-check, warm workers, every core; progress with an ETA in the log),
# then each student's scores go to the gradebook. False: one grader run per student, as before.
# c.SandboxAutograde.batch = False
# --- end of the sandboxed-autograde block ---------------------------------------------------------
