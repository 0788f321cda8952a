"""The nbgrader side of the course, with the real nbgrader (no mocks).

Fast tests read the committed files: no solution or hidden test leaks into ``release/``, the bundled
example submissions are in sync, the course configuration is what nbgrader needs, and the feedback
preprocessor hides hidden tests. Slow tests copy ``nbgrader_config.py`` and ``source/`` into a
temporary course root (the config computes its root from its own location) and run nbgrader there:
``generate_assignment`` (== the committed release), the Validator on every source and release
notebook, and ``autograde`` / ``generate_feedback`` / ``export`` for three students.
"""

from __future__ import annotations

import csv
import html
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nbformat
import pytest
from nbconvert.filters import strip_ansi
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output
from traitlets.config.loader import PyFileConfigLoader

from autograder.examples import (
    ASSIGNMENT,
    ONE_WRONG_ITEM,
    STUDENTS,
    answer_cells,
    build_students,
    build_submission,
    strip_solution_delimiters,
)
from autograder.nbgrader.autograde import SandboxAutograde
from autograder.nbgrader.feedback import HideHiddenTests

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "source" / ASSIGNMENT
RELEASE = ROOT / "release" / ASSIGNMENT
JOBS = max(1, min(2, os.cpu_count() or 1))  # notebooks run side by side (CI runners have 2 cores)
SEED = 20261127  # the grader's seed in the temporary courses, so the CLI can be compared with it item by item

SOLUTION = ("BEGIN SOLUTION", "END SOLUTION")
HIDDEN = ("BEGIN HIDDEN TESTS", "END HIDDEN TESTS")
# nbgrader's stub, as nbgrader_config.py sets it
STUB = PyFileConfigLoader("nbgrader_config.py", path=str(ROOT)).load_config().ClearSolutions.code_stub["python"]
MIN_CHARS = 12  # a secret line shorter than this (without spaces) is too generic to call a leak


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"_selfattn_script_{name}", ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


release_script = _load_script("release")
examples_script = _load_script("make_examples")


# --- reading notebooks --------------------------------------------------------------------------


def nbgrader_meta(cell) -> dict:
    return cell.get("metadata", {}).get("nbgrader", {})


def read_notebooks(folder: Path) -> dict[str, nbformat.NotebookNode]:
    return {p.name: nbformat.read(p, as_version=4) for p in sorted(folder.glob("*.ipynb"))}


def split_regions(source: str, delimiters: tuple[str, str]) -> tuple[list[str], list[str]]:
    """(lines outside, lines inside) the delimited regions; delimiter lines belong to neither."""
    begin, end = delimiters
    outside, inside, within = [], [], False
    for line in source.split("\n"):
        if begin in line:
            within = True
        elif end in line:
            within = False
        else:
            (inside if within else outside).append(line)
    return outside, inside


# Lines of a solution or hidden region that give nothing away even where a release shows them: a def/class
# header (the skeleton of an answer cell shows it; lesson 5's pasted class repeats lesson 4's), a statement
# that only calls something with no argument or one plain name (``loss.backward()``, ``super().__init__()``,
# ``plt.close(fig)``) or only opens a call (``self.register_buffer(``), a bare block header
# (``with torch.no_grad():``, ``else:``).
GENERIC = (
    re.compile(r"(async\s+)?(def|class)\s.*:\s*(#.*)?"),
    re.compile(r"[\w.]+(\(\))?(\.\w+)*\(\w*\)\s*(#.*)?"),
    re.compile(r"[\w.]+\(\s*(#.*)?"),
    re.compile(r"(with\s+torch\.no_grad\(\)|else|try|finally)\s*:\s*(#.*)?"),
    re.compile(r"return\s+\w+\s*(#.*)?"),  # returning one plain name (`return losses`) says nothing
)


def is_generic(line: str) -> bool:
    """A secret line too short (fewer than ``MIN_CHARS`` non-space characters) or too generic to be a leak."""
    return len(re.sub(r"\s", "", line)) < MIN_CHARS or any(p.fullmatch(line) for p in GENERIC)


def released_cells(nb) -> list[str]:
    """What a release shows of each cell of a source notebook: solution regions become nbgrader's stub,
    hidden regions go; markdown, given code, answer skeletons and visible tests stay."""
    shown = []
    for cell in nb.cells:
        outside, _ = split_regions(cell.source, HIDDEN)
        lines, within = [], False
        for line in outside:
            if SOLUTION[0] in line:
                within = True
                lines.append(line[:len(line) - len(line.lstrip())] + STUB)
            elif SOLUTION[1] in line:
                within = False
            elif not within:
                lines.append(line)
        shown.append("\n".join(lines))
    return shown


def secret_and_visible(notebooks) -> tuple[dict[str, set[str]], str]:
    """Secret lines by kind (``solution``, ``hidden``) and the text a release of ``notebooks`` shows.

    A secret is a line of a solution or hidden region (stripped) unless it is generic (``is_generic``: short,
    a def/class header, a call without arguments...). It is a secret wherever else it stands: a secret line
    in a markdown cell, a given cell, a test cell or an answer cell's docstring is a leak, not a reason to
    stop looking for it (the old rule, "not a secret if the visible text has it", hid exactly those leaks).
    The visible text is every cell of every source notebook as a release shows it (``released_cells``).
    """
    secrets: dict[str, set[str]] = {"solution": set(), "hidden": set()}
    visible = [STUB]
    for nb in notebooks.values():
        visible += released_cells(nb)
        for cell in nb.cells:
            outside, solution = split_regions(cell.source, SOLUTION)
            outside, hidden = split_regions("\n".join(outside), HIDDEN)
            _, hidden_in_solution = split_regions("\n".join(solution), HIDDEN)
            secrets["solution"] |= {x.strip() for x in solution}
            secrets["hidden"] |= {x.strip() for x in hidden + hidden_in_solution}
    for kind, lines in secrets.items():
        lines = lines | {without_comment(x) for x in lines}  # a leak seldom copies the comment too
        secrets[kind] = {x for x in lines if not is_generic(x)}
    return secrets, "\n".join(visible)


def without_comment(line: str) -> str:
    """``line`` without a trailing ``# comment`` (kept whole when the ``#`` may be inside a string)."""
    code, hash_, comment = line.partition("#")
    if not hash_ or "'" in comment or '"' in comment or code.count('"') % 2 or code.count("'") % 2:
        return line
    return code.rstrip()


def source_leaks(notebooks) -> dict[str, list[str]]:
    """Per notebook, the secret lines of any notebook that a release of it would show."""
    secrets, _ = secret_and_visible(notebooks)
    secret = secrets["solution"] | secrets["hidden"]
    found = {}
    for name, nb in notebooks.items():
        hits = leaks(secret, "\n".join(released_cells(nb)))
        if hits:
            found[name] = hits
    return found


def notebook_text(nb) -> str:
    """Everything a notebook shows or carries: sources, outputs, metadata."""
    parts = [json.dumps(nb.metadata)]
    for cell in nb.cells:
        parts += [cell.source, json.dumps(cell.get("metadata", {}))]
        for output in cell.get("outputs", []):
            parts.append(json.dumps(output, ensure_ascii=False))
            parts += output.get("traceback", [])
            parts.append(str(output.get("text", "")))
            parts += [str(v) for v in output.get("data", {}).values()]
    return "\n".join(parts)


def html_text(path: Path) -> str:
    """The text of an HTML page as a reader sees it (tags dropped, entities decoded)."""
    raw = path.read_text(encoding="utf-8")
    raw = re.sub(r"<(script|style)\b.*?</\1>", "", raw, flags=re.S | re.I)
    return html.unescape(re.sub(r"<[^>]+>", "", raw))


def leaks(secret: set[str], text: str) -> list[str]:
    return sorted(line for line in secret if line in text)


def points(notebooks) -> dict[str, float]:
    """``{test cell grade_id: points}`` over all notebooks."""
    return {
        nbgrader_meta(c)["grade_id"]: float(nbgrader_meta(c).get("points", 0))
        for nb in notebooks.values()
        for c in nb.cells
        if nbgrader_meta(c).get("grade")
    }


def require_course(assignment: str = ASSIGNMENT) -> dict[str, nbformat.NotebookNode]:
    source, release = ROOT / "source" / assignment, ROOT / "release" / assignment
    sources = read_notebooks(source)
    assert sources, f"no source notebooks in {source}"
    assert release.is_dir(), f"release/{assignment} does not exist: run python scripts/release.py"
    return sources


# Both editions' releases (issue 19) get the same leak checks: the Chinese one is built from its own source.
EDITION_ASSIGNMENTS = release_script.ASSIGNMENTS


# --- fast: configuration ------------------------------------------------------------------------


def test_config_resolves_to_its_own_directory_and_hides_hidden_tests(tmp_path):
    from nbconvert.preprocessors import CSSHTMLHeaderPreprocessor
    from nbgrader.converters import Autograde, GenerateFeedback
    from nbgrader.coursedir import CourseDirectory
    from nbgrader.preprocessors import CheckCellMetadata, Execute, GetGrades, OverwriteCells, SaveAutoGrades

    from autograder.nbgrader.autograde import DropScoreOutputs
    from autograder.nbgrader.readable import FeedbackHeader, StudentName
    from autograder.nbgrader.sanitize import CourseCheckCellMetadata, CourseOverwriteCells

    (tmp_path / "nbgrader_config.py").write_bytes((ROOT / "nbgrader_config.py").read_bytes())
    config = PyFileConfigLoader("nbgrader_config.py", path=str(tmp_path)).load_config()
    coursedir = CourseDirectory(config=config)
    assert coursedir.root == str(tmp_path)
    assert coursedir.course_id == "self-attention"
    assert (coursedir.source_directory, coursedir.release_directory) == ("source", "release")
    assert coursedir.db_url == f"sqlite:///{tmp_path / 'gradebook.db'}"
    assert "add_missing_cells" in OverwriteCells.class_traits(config=True)
    assert OverwriteCells(config=config).add_missing_cells is True
    execute = Execute(config=config)
    assert execute.timeout >= 60 and execute.allow_errors is True
    feedback = GenerateFeedback(coursedir=coursedir, config=config)
    chain = list(feedback.preprocessors)
    assert chain == [GetGrades, HideHiddenTests, FeedbackHeader, CSSHTMLHeaderPreprocessor]
    # autograde: nbgrader's own chain with Execute (the student's kernel) replaced by the sandboxed grader
    stock = list(Autograde.class_traits()["autograde_preprocessors"].default())
    assert Execute in stock
    chain = list(Autograde(coursedir=coursedir, config=config).autograde_preprocessors)
    faster = {Execute: SandboxAutograde, CheckCellMetadata: CourseCheckCellMetadata}
    expected = [faster.get(pp, pp) for pp in stock]
    # the score output, once saved, is dropped (autograder/nbgrader/autograde.py: DropScoreOutputs)
    expected[expected.index(SaveAutoGrades) + 1:expected.index(SaveAutoGrades) + 1] = [DropScoreOutputs, StudentName]
    assert chain == expected
    # the sanitizing chain: nbgrader's, with OverwriteCells warning only about real changes
    stock_sanitize = list(Autograde.class_traits()["sanitize_preprocessors"].default())
    sanitize = list(Autograde(coursedir=coursedir, config=config).sanitize_preprocessors)
    ours = {OverwriteCells: CourseOverwriteCells, CheckCellMetadata: CourseCheckCellMetadata}
    assert sanitize == [ours.get(pp, pp) for pp in stock_sanitize]


def test_kernel_is_this_environment():
    """nbgrader runs notebooks in the `python3` kernel; it must resolve to this interpreter, which
    can import `exercises` and `solutions` (the hidden tests need them)."""
    from jupyter_client.kernelspec import KernelSpecManager

    spec = KernelSpecManager().get_kernel_spec("python3")
    exe = spec.argv[0]
    # jupyter_client replaces a bare "python"/"python3"/"python3.X" by sys.executable
    # (jupyter_client/manager.py, format_kernel_cmd).
    bare = {"python", f"python{sys.version_info[0]}", "python{}.{}".format(*sys.version_info[:2])}
    assert exe in bare or Path(exe).resolve() == Path(sys.executable).resolve(), (
        f"the python3 kernelspec in {spec.resource_dir} runs {spec.argv}, not this environment's python: "
        f"run `{sys.executable} -m ipykernel install --sys-prefix` and remove the other kernelspec"
    )
    subprocess.run([sys.executable, "-c", "import exercises.kernel, solutions"], check=True)


# --- fast: the feedback preprocessor on its own ---------------------------------------------------


def _feedback_notebook():
    test_meta = {"nbgrader": {"grade": True, "solution": False, "locked": True, "grade_id": "test_f",
                              "points": 2, "schema_version": 3, "task": False}}
    error = new_output(
        "error",
        ename="AssertionError",
        evalue="f: 1 hidden check(s) failed: expected shape (2, 3)",
        traceback=[
            "\x1b[31m-------\x1b[39m",
            "\x1b[31mAssertionError\x1b[39m   Traceback (most recent call last)",
            "Cell In[4], line 4\n      2 ### BEGIN HIDDEN TESTS\n      3 from exercises.kernel import check\n"
            "----> 4 check(\"f\", globals())",
            "File /site-packages/exercises/kernel.py:55, in check(name, namespace)\n"
            "     54 if failures:\n---> 55     raise AssertionError(...)",
            "\x1b[31mAssertionError\x1b[39m: f: 1 hidden check(s) failed: expected shape (2, 3)",
        ],
    )
    test = new_code_cell(
        "assert f(1) == 2\n    ### BEGIN HIDDEN TESTS\n    from exercises.kernel import check\n"
        "    check(\"f\", globals())\n    ### END HIDDEN TESTS\nprint('done')",
        metadata=test_meta,
        outputs=[
            new_output("stream", name="stdout", text="visible ok\n"),
            new_output("stream", name="stderr",
                       text="/x/exercises/kernel.py:12: UserWarning: be careful\n  warn(secret_warning_line)\n"),
            error,
        ],
    )
    answer = new_code_cell(
        "def f(x):\n    return 2 * x  # the student's own answer stays",
        metadata={"nbgrader": {"grade": False, "solution": True, "locked": False, "grade_id": "f"}},
        outputs=[new_output("error", ename="ValueError", evalue="v", traceback=["tb line kept"])],
    )
    unterminated = new_code_cell("x = 1\n### BEGIN HIDDEN TESTS\nsecret_tail()\n", metadata=test_meta)
    markdown = new_markdown_cell("Notes about `f`.")
    return new_notebook(cells=[markdown, answer, test, unterminated])


def test_hide_hidden_tests_preprocessor():
    nb = _feedback_notebook()
    out, _ = HideHiddenTests().preprocess(nb, {})
    markdown, answer, test, unterminated = out.cells
    placeholder = HideHiddenTests().placeholder
    assert test.source == f"assert f(1) == 2\n    {placeholder}\nprint('done')"
    error = [o for o in test.outputs if o.output_type == "error"]
    assert len(error) == 1
    assert error[0].traceback == ["AssertionError: f: 1 hidden check(s) failed: expected shape (2, 3)"]
    assert error[0].ename == "AssertionError"
    streams = [(o.name, o.text) for o in test.outputs if o.output_type == "stream"]
    assert streams == [("stdout", "visible ok\n"), ("stderr", "UserWarning: be careful\n")]
    shown = json.dumps(out)
    for secret in ("exercises", 'check("f"', "HIDDEN TESTS", "secret_warning_line", "Traceback", "secret_tail"):
        assert secret not in shown, secret
    assert markdown.source == "Notes about `f`."
    # untouched: answer cells (the student's own work and its traceback) and markdown
    assert answer.source == "def f(x):\n    return 2 * x  # the student's own answer stays"
    assert answer.outputs[0].traceback == ["tb line kept"]
    assert unterminated.source == f"x = 1\n{placeholder}"  # fail closed: hidden to the end
    # traitlets are configurable
    custom, _ = HideHiddenTests(placeholder="# hidden", keep_stderr=True).preprocess(_feedback_notebook(), {})
    assert "# hidden" in custom.cells[2].source
    assert "secret_warning_line" in json.dumps(custom.cells[2].outputs)


def test_hide_hidden_tests_timeout_message_is_kept():
    from autograder.nbgrader.feedback import short_error

    timeout = new_output("error", ename="CellTimeoutError", evalue="",
                         traceback=["\x1b[0;31mCellTimeoutError\x1b[0m: No reply from kernel before timeout"])
    assert short_error(timeout).traceback == ["CellTimeoutError: No reply from kernel before timeout"]


# --- fast: what is committed --------------------------------------------------------------------


@pytest.mark.parametrize("assignment", EDITION_ASSIGNMENTS)
def test_source_and_release_have_the_same_notebooks(assignment):
    sources = require_course(assignment)
    assert sorted(sources) == sorted(p.name for p in (ROOT / "release" / assignment).glob("*.ipynb"))
    assert sorted(sources) == sorted(read_notebooks(SOURCE))  # every edition has the master's notebooks


@pytest.mark.parametrize("assignment", EDITION_ASSIGNMENTS)
def test_no_solution_or_hidden_test_in_release(assignment):
    sources = require_course(assignment)
    release = ROOT / "release" / assignment
    secrets, _ = secret_and_visible(sources)
    assert secrets["solution"] and secrets["hidden"], "the filter left nothing to look for"
    parts = [notebook_text(nb) for nb in read_notebooks(release).values()]
    parts += [p.read_text(errors="replace") for p in release.rglob("*") if p.is_file() and p.suffix != ".ipynb"]
    text = "\n".join(parts)
    for marker in (*SOLUTION, *HIDDEN, "exercises.kernel"):
        assert marker not in text, f"{marker!r} in release/{assignment}"
    assert leaks(secrets["solution"], text) == [], f"solution lines in release/{assignment}"
    assert leaks(secrets["hidden"], text) == [], f"hidden-test lines in release/{assignment}"


@pytest.mark.parametrize("assignment", EDITION_ASSIGNMENTS)
def test_no_secret_line_in_what_a_release_of_source_shows(assignment):
    """From source/ alone (release/ may be stale on a branch): no solution or hidden-test line of any
    notebook stands in the markdown, given code, answer skeletons or visible tests of any notebook."""
    assert source_leaks(require_course(assignment)) == {}


LESSON4 = "04_causal_attention.ipynb"
# the line lesson 4's markdown once showed, word for word (issue 10): the whole causal_mask answer too
OLD_BUFFER_LINE = 'self.register_buffer("mask", torch.ones(context_length, context_length, dtype=torch.bool).tril())'


def _with_cell(notebooks, name, index, cell):
    copied = {k: nbformat.from_dict(json.loads(json.dumps(v))) for k, v in notebooks.items()}
    copied[name].cells.insert(index, cell)
    return copied


def test_leak_check_sees_a_solution_line_in_markdown_given_code_tests_and_docstrings():
    """The leak check fails on a copy of the course with a solution line put back where a release shows it."""
    sources = require_course()
    assert LESSON4 in sources
    secrets, _ = secret_and_visible(sources)
    # the old markdown of lesson 4 (a secret: lesson 5's MultiHeadAttention solution has this very line)
    assert OLD_BUFFER_LINE in secrets["solution"]
    old = new_markdown_cell(f"Register it:\n\n```python\n{OLD_BUFFER_LINE}\n```\n")
    assert OLD_BUFFER_LINE in source_leaks(_with_cell(sources, LESSON4, 3, old)).get(LESSON4, [])
    # any notebook's most specific solution line, wherever a release shows it
    for name, nb in sources.items():
        own, _ = secret_and_visible({name: nb})
        line = max(sorted(own["solution"]), key=len)
        answer = next(c for c in nb.cells if nbgrader_meta(c).get("solution"))
        test = next(c for c in nb.cells if HIDDEN[0] in c.source)
        docstring = answer.source.replace(SOLUTION[0], f"{SOLUTION[0]}\n    pass\n    ### END SOLUTION\n    "
                                          f"# e.g. {line}\n    ### BEGIN SOLUTION", 1)
        places = {
            "markdown": new_markdown_cell(f"For instance `{line}`."),
            "given code": new_code_cell(f"{line}\n", metadata={"nbgrader": {"grade_id": "given_x"}}),
            "visible test": new_code_cell(f"{line}\n" + test.source, metadata=test.metadata),
            "answer skeleton": new_code_cell(docstring, metadata=answer.metadata),
        }
        for where, cell in places.items():
            found = source_leaks(_with_cell(sources, name, len(nb.cells), cell)).get(name, [])
            assert line in found, f"{name}: a solution line in a {where} cell is not reported"


LESSON10 = "10_flash_attention_backward.ipynb"
# The first edition's optional Triton cell, word for word: given code in the release, and the complete tiled
# forward algorithm (running maximum, the exp(m - m_new) correction, m + log(l), the causal tile stop)
FIRST_EDITION_TRITON_CELL = ROOT / "tests" / "fixtures" / "leaks" / "first_edition_triton_cell.py"


def test_leak_check_finds_the_first_editions_finished_triton_kernel():
    """The finished kernel is a solution region of lesson 10 now: the release carries a skeleton, and the first
    edition's cell, put back as given code, is reported with the lines that give the algorithm away."""
    sources = require_course()
    kernel = next(c for c in sources[LESSON10].cells if nbgrader_meta(c).get("grade_id") == "triton_kernel")
    assert nbgrader_meta(kernel).get("solution") and SOLUTION[0] in kernel.source
    released = "\n".join(released_cells(nbformat.from_dict({"cells": [kernel]})))
    assert "tl.exp(m - m_new)" not in released and "tl.dot(q, tl.trans(k))" not in released
    old = new_code_cell(FIRST_EDITION_TRITON_CELL.read_text(encoding="utf-8"),
                        metadata={"nbgrader": {"grade_id": "given_triton_kernel", "solution": False, "grade": False,
                                               "locked": True}})
    index = sources[LESSON10].cells.index(kernel)
    found = source_leaks(_with_cell(sources, LESSON10, index, old)).get(LESSON10, [])
    for line in ("correction = tl.exp(m - m_new)",
                 "m_new = tl.maximum(m, tl.max(s, 1))  # finite: every row sees key 0",
                 "s = tl.dot(q, tl.trans(k)) * scale  # (BQ, BK) scores, never in HBM"):
        assert line in found, f"the first edition's Triton cell is back in the release and {line!r} is not reported"


def test_leak_check_ignores_generic_lines():
    sources = require_course()
    generic = ["return out", "def forward(self, x):", "super().__init__()", "loss.backward()", "plt.close(fig)",
               "with torch.no_grad():", "optimizer.zero_grad()", "class CausalAttention(nn.Module):"]
    for line in generic:
        assert is_generic(line), line
    cell = new_markdown_cell("\n".join(generic))
    assert source_leaks(_with_cell(sources, LESSON4, 3, cell)).get(LESSON4, []) == []
    assert not is_generic("self.dropout = nn.Dropout(dropout)")
    assert not is_generic('masked = scores.masked_fill(~mask, float("-inf"))')


def test_examples_are_in_sync():
    require_course()
    assert examples_script.committed_files(), "examples/submissions/ is empty: run python scripts/make_examples.py"
    assert examples_script.out_of_sync() == [], "run python scripts/make_examples.py"


def test_build_submission_fills_answers_from_source():
    sources = require_course()
    for name, source in sources.items():
        release = nbformat.read(RELEASE / name, as_version=4)
        built = build_submission(source, release, {})
        assert len(built.cells) == len(release.cells)
        answers = answer_cells(source)
        for cell, original in zip(built.cells, release.cells, strict=True):
            meta = nbgrader_meta(cell)
            assert cell.metadata == original.metadata
            if meta.get("solution"):
                assert cell.source == strip_solution_delimiters(answers[meta["grade_id"]].source)
                assert "SOLUTION" not in cell.source
            else:
                assert cell.source == original.source


# --- slow: the real nbgrader in a temporary course root -------------------------------------------


@pytest.fixture(scope="module")
def course(tmp_path_factory):
    """A temporary course root (config + source/) after ``nbgrader generate_assignment``."""
    require_course()
    root = release_script.prepare_course(tmp_path_factory.mktemp("course"))
    start = time.perf_counter()
    release_script.generate_assignment(root)
    print(f"\n[timing] generate_assignment: {time.perf_counter() - start:.1f}s")
    return root


@pytest.mark.slow
def test_release_regenerated_from_source_equals_committed(course, tmp_path):
    # on a copy: the course's release stays as nbgrader wrote it, for the students built from it
    release = shutil.copytree(course / "release" / ASSIGNMENT, tmp_path / ASSIGNMENT)
    release_script.figures_script().add_figures_to_release(release, course / "source" / ASSIGNMENT)
    generated = release_script.comparable(release_script.read_release(release))
    committed = release_script.comparable(release_script.read_release(RELEASE))
    assert release_script.compare(generated, committed) == [], "run python scripts/release.py"


_VALIDATE = r"""
import json, sys
from traitlets.config.loader import PyFileConfigLoader
from nbgrader.validator import Validator
root, validate_all, paths = sys.argv[1], sys.argv[2] == "1", sys.argv[3:]
config = PyFileConfigLoader("nbgrader_config.py", path=root).load_config()
results = {path: Validator(config=config, validate_all=validate_all).validate(path) for path in paths}
print("@@RESULT@@" + json.dumps(results))
"""


def validate(course: Path, paths: list[Path], validate_all: bool) -> dict[str, dict]:
    """``Validator.validate`` of each notebook, by file name; ``JOBS`` subprocesses (it chdirs).

    ``validate`` returns ``{}`` when every graded cell passes; otherwise ``failed`` (a list with the
    cell's ``source`` and ``raw_error``), ``changed`` (locked cells edited; then ``failed`` is not
    reported at all) or ``type_changed`` (nbgrader/validator.py, ``validate``). ``nbgrader validate``
    on the command line prints the same and exits 0 either way.
    """

    def run(chunk: list[Path]) -> dict:
        proc = subprocess.run(
            [sys.executable, "-c", _VALIDATE, str(course), "1" if validate_all else "0", *map(str, chunk)],
            capture_output=True, text=True, env=release_script.nbgrader_env(), timeout=1200,
        )
        marker = proc.stdout.rfind("@@RESULT@@")
        assert proc.returncode == 0 and marker >= 0, proc.stdout[-3000:] + proc.stderr[-5000:]
        return json.loads(proc.stdout[marker + len("@@RESULT@@"):])

    chunks = [paths[i::JOBS] for i in range(JOBS) if paths[i::JOBS]]
    with ThreadPoolExecutor(JOBS) as pool:
        merged = {Path(k).name: v for result in pool.map(run, chunks) for k, v in result.items()}
    assert sorted(merged) == sorted(p.name for p in paths)
    return merged


@pytest.mark.slow
def test_source_notebooks_pass_their_own_tests(course):
    """Every cell of every source notebook runs without an error or stderr output, hidden tests included."""
    paths = sorted((course / "source" / ASSIGNMENT).glob("*.ipynb"))
    start = time.perf_counter()
    results = validate(course, paths, validate_all=True)
    print(f"\n[timing] validate {len(paths)} source notebooks: {time.perf_counter() - start:.1f}s")
    failures = {
        name: [strip_ansi(cell["raw_error"])[-1500:] for cell in result.get("failed", [])] or result
        for name, result in results.items()
        if result
    }
    assert failures == {}


@pytest.mark.slow
def test_release_notebooks_fail_with_not_implemented_error_only(course):
    sources = read_notebooks(course / "source" / ASSIGNMENT)
    paths = sorted((course / "release" / ASSIGNMENT).glob("*.ipynb"))
    start = time.perf_counter()
    results = validate(course, paths, validate_all=False)
    print(f"\n[timing] validate {len(paths)} release notebooks: {time.perf_counter() - start:.1f}s")
    for name, result in results.items():
        assert set(result) == {"failed"}, (name, result)
        tests = [c for c in sources[name].cells if nbgrader_meta(c).get("grade")]
        assert len(result["failed"]) == len(tests), (name, [c["source"][:80] for c in result["failed"]])
        for cell in result["failed"]:
            lines = [x for x in strip_ansi(cell["raw_error"]).splitlines() if x.strip()]
            assert lines and re.match(r"NotImplementedError\b", lines[-1]), (name, lines[-12:])
            names = set(re.findall(r"^(\w+(?:Error|Exception|Warning))\b", "\n".join(lines), flags=re.M))
            assert names == {"NotImplementedError"}, (name, names, lines[-12:])


def add_config(course: Path, *lines: str) -> None:
    """Append settings to a temporary course's ``nbgrader_config.py`` (once each)."""
    config = course / "nbgrader_config.py"
    text = config.read_text(encoding="utf-8")
    new = [line for line in lines if line not in text.splitlines()]
    if new:
        config.write_text(text + "\n" + "\n".join(new) + "\n", encoding="utf-8")


def gradebook_scores(course: Path, student: str) -> dict[str, float | None]:
    """``{item: auto_score}`` of one student's test cells in the course's gradebook (``test_<item>``)."""
    from nbgrader.api import Gradebook

    config = PyFileConfigLoader("nbgrader_config.py", path=str(course)).load_config()
    with Gradebook(config.CourseDirectory.db_url, config.CourseDirectory.course_id) as gb:
        submission = gb.find_submission(ASSIGNMENT, student)
        return {grade.name.removeprefix("test_"): grade.auto_score
                for notebook in submission.notebooks for grade in notebook.grades}


def cell_messages(course: Path, student: str, grade_ids: set[str]) -> dict[str, str]:
    """What the autograded test cells ``grade_ids`` of ``student`` say (for a failing assertion's message)."""
    out = {}
    for path in sorted((course / "autograded" / student / ASSIGNMENT).glob("*.ipynb")):
        for cell in nbformat.read(path, as_version=4).cells:
            if nbgrader_meta(cell).get("grade_id") in grade_ids:
                out[nbgrader_meta(cell)["grade_id"]] = "".join(str(o.get("text", "")) for o in cell.outputs)
    return out


def cli_scores(submission: dict) -> dict[str, float]:
    """``{item: points}`` of one submission of the CLI's JSON report (its rows summed per item)."""
    scores: dict[str, float] = {}
    for test in submission["tests"]:
        scores[test["item"]] = round(scores.get(test["item"], 0.0) + test["score"], 4)
    return scores


@pytest.fixture(scope="module")
def graded(course):
    """Three students submitted, autograded in one run, given feedback, exported to ``grades.csv``.

    One `nbgrader autograde` run: the sandboxed grader's self-check runs once and each grading uses
    the cores itself. The course's config gets ``SandboxAutograde.seed = SEED`` so the CLI can be run
    on the same inputs and compared item by item.
    """
    add_config(course, f"c.SandboxAutograde.seed = {SEED}")
    students = build_students(course / "source" / ASSIGNMENT, course / "release" / ASSIGNMENT, STUDENTS)
    for student, files in students.items():
        for name, text in files.items():
            path = course / "submitted" / student / ASSIGNMENT / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    start = time.perf_counter()
    proc = release_script.run_nbgrader(["autograde", ASSIGNMENT], course)
    print(f"\n[timing] nbgrader autograde, {len(students)} students: {time.perf_counter() - start:.1f}s")
    assert proc.returncode == 0, f"autograde failed:\n{proc.stdout[-3000:]}{proc.stderr[-8000:]}"
    log = proc.stdout + proc.stderr
    # the class as one batch (one grader run, its self-check once), then each student's scores written;
    # no student graded alone, and no false "checksum has changed" alarm on these untampered submissions
    assert log.count("Sandboxed grader: grading") == 1
    assert f"grading {len(students)} submissions as one batch" in log
    assert log.count("Sandboxed grader: writing") == len(students)
    assert "graded checks" in log and "ETA" in log
    assert "Attribute 'checksum'" not in log
    for command in (["generate_feedback", ASSIGNMENT], ["export", "--to", "grades.csv"]):
        start = time.perf_counter()
        proc = release_script.run_nbgrader(command, course)
        print(f"\n[timing] nbgrader {command[0]}: {time.perf_counter() - start:.1f}s")
        assert proc.returncode == 0, f"nbgrader {command[0]} failed:\n{proc.stdout[-3000:]}{proc.stderr[-8000:]}"
    return course


@pytest.mark.slow
def test_autograde_scores(graded):
    from nbgrader.api import Gradebook

    sources = read_notebooks(graded / "source" / ASSIGNMENT)
    item_points = points(sources)
    total = sum(item_points.values())
    assert total > 0
    assert f"test_{ONE_WRONG_ITEM}" in item_points

    with open(graded / "grades.csv", newline="") as f:
        rows = {row["student_id"]: row for row in csv.DictReader(f)}
    assert set(rows) == set(STUDENTS)
    for row in rows.values():
        assert float(row["max_score"]) == total
    expected_total = {"perfect": total, "empty": 0.0, "one_wrong": total - item_points[f"test_{ONE_WRONG_ITEM}"]}

    config = PyFileConfigLoader("nbgrader_config.py", path=str(graded)).load_config()
    lost: dict[str, dict[str, float]] = {}
    with Gradebook(config.CourseDirectory.db_url, config.CourseDirectory.course_id) as gb:
        for student in STUDENTS:
            lost[student] = {}
            for name in sources:
                notebook = gb.find_submission_notebook(Path(name).stem, ASSIGNMENT, student)
                for grade in notebook.grades:
                    if grade.score != grade.max_score:
                        lost[student][grade.name] = grade.max_score - grade.score
    why = {student: cell_messages(graded, student, set(lost[student])) for student in ("perfect", "one_wrong")}
    assert lost["perfect"] == {}, why["perfect"]
    assert lost["empty"] == item_points
    assert lost["one_wrong"] == {f"test_{ONE_WRONG_ITEM}": item_points[f"test_{ONE_WRONG_ITEM}"]}, why["one_wrong"]
    assert {s: float(r["score"]) for s, r in rows.items()} == expected_total


@pytest.mark.slow
def test_feedback_shows_no_hidden_test_and_no_solution(graded):
    sources = read_notebooks(graded / "source" / ASSIGNMENT)
    secrets, _ = secret_and_visible(sources)
    placeholder = HideHiddenTests().placeholder
    assert secrets["hidden"]
    feedback = graded / "feedback"
    pages = {(s, name): feedback / s / ASSIGNMENT / (Path(name).stem + ".html") for s in STUDENTS for name in sources}
    missing = [str(p) for p in pages.values() if not p.is_file()]
    assert missing == []
    texts = {key: html_text(path) for key, path in pages.items()}

    for (student, name), text in texts.items():
        where = f"feedback of {student}/{name}"
        assert leaks(secrets["hidden"], text) == [], f"hidden-test lines in the {where}"
        for secret in (*HIDDEN, "exercises.kernel", "import check"):
            assert secret not in text, f"{secret!r} in the {where}"
        assert not re.search(r"exercises[/\\]\w+\.py", text), f"a grading-library frame in the {where}"
        n_tests = sum(1 for c in sources[name].cells if HIDDEN[0] in c.source)
        assert text.count(placeholder) == n_tests, where
    for name in sources:
        text = texts[("empty", name)]
        assert leaks(secrets["solution"], text) == [], f"solution lines in the feedback of the release ({name})"
        assert "NotImplementedError" in text

    # positive controls: the extraction does find code lines (a student's own answers) and messages
    perfect = "\n".join(texts[("perfect", name)] for name in sources)
    own = secrets["solution"] & {x.strip() for x in perfect.splitlines()}
    assert own, "the perfect student's answers are not visible in their feedback: text extraction broken?"
    # one_wrong's test cell: the feedback shows the sandboxed grader's score and what to fix
    wrong = next(name for name, nb in sources.items() if ONE_WRONG_ITEM in answer_cells(nb))
    autograded = nbformat.read(graded / "autograded" / "one_wrong" / ASSIGNMENT / wrong, as_version=4)
    (cell,) = [c for c in autograded.cells if nbgrader_meta(c).get("grade_id") == f"test_{ONE_WRONG_ITEM}"]
    (stream,) = [o for o in cell.outputs if o.output_type == "stream"]
    first, *rows = stream.text.splitlines()
    assert first == f"Sandboxed grader (seed {SEED}): 0 / 3 points for `{ONE_WRONG_ITEM}`"
    assert any("zero_grad" in r for r in rows), rows  # one_wrong forgets optimizer.zero_grad(): the fix is named
    page = " ".join(texts[("one_wrong", wrong)].split())
    for line in (first, *rows):
        assert " ".join(line.split())[:200] in page


# --- slow: a failing hidden test, end to end, in a fixture course ---------------------------------


STOCK_AUTOGRADE = release_script.STOCK_AUTOGRADE


def _fixture_course(root: Path) -> Path:
    """A one-notebook course whose hidden tests fail inside library code and print a warning."""

    def meta(grade_id: str, **kw) -> dict:
        return {"nbgrader": {"grade": False, "solution": False, "locked": False, "grade_id": grade_id,
                             "schema_version": 3, "task": False, **kw}}

    def test(item: str, visible: str, hidden: str) -> nbformat.NotebookNode:
        source = f"{visible}\n### BEGIN HIDDEN TESTS\n{hidden}\n### END HIDDEN TESTS"
        return new_code_cell(source, metadata=meta(f"test_{item}", grade=True, locked=True, points=1))

    cells = [
        new_markdown_cell("# Fixture"),
        new_code_cell("import json\nimport warnings", metadata=meta("given_imports", locked=True)),
        new_code_cell("def double(x):\n    ### BEGIN SOLUTION\n    return 2 * x\n    ### END SOLUTION",
                      metadata=meta("double", solution=True)),
        # passes its visible test, then the hidden test fails deep inside the json module
        test("double", "assert double(1) == 2",
             'warnings.warn("the hidden test warns")\njson.loads("{secret_hidden_payload")'),
        new_code_cell("def add(a, b):\n    ### BEGIN SOLUTION\n    return a + b\n    ### END SOLUTION",
                      metadata=meta("add", solution=True)),
        # the visible test right before the hidden region fails: the traceback quotes nearby lines
        test("add", 'assert add(1, 2) == 3, "add(1, 2) should be 3"',
             'assert add(20, 22) == 42, "secret_context_line"'),
    ]
    nb = new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                            "language": "python"}})
    (root / "source" / ASSIGNMENT).mkdir(parents=True)
    nbformat.write(nb, root / "source" / ASSIGNMENT / "01_fixture.ipynb")
    (root / "nbgrader_config.py").write_bytes((ROOT / "nbgrader_config.py").read_bytes())
    # its items are not the course's, so the sandboxed grader cannot grade them: nbgrader's own chain
    # (the student's kernel) runs here, as in a course that does not use SandboxAutograde
    add_config(root, STOCK_AUTOGRADE)
    return root


@pytest.mark.slow
def test_feedback_of_failing_hidden_tests_in_a_fixture_course(tmp_path):
    root = _fixture_course(tmp_path / "fixture")
    release = release_script.generate_assignment(root)
    source = nbformat.read(root / "source" / ASSIGNMENT / "01_fixture.ipynb", as_version=4)
    student = build_submission(source, nbformat.read(release / "01_fixture.ipynb", as_version=4),
                               {"add": "def add(a, b):\n    return a - b"})
    (root / "submitted" / "s1" / ASSIGNMENT).mkdir(parents=True)
    nbformat.write(student, root / "submitted" / "s1" / ASSIGNMENT / "01_fixture.ipynb")
    for command in (["autograde", ASSIGNMENT], ["generate_feedback", ASSIGNMENT]):
        proc = release_script.run_nbgrader(command, root)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]

    secrets, _ = secret_and_visible({"01_fixture.ipynb": source})
    hidden = secrets["hidden"] | {'warnings.warn("the hidden test warns")'}
    autograded = nbformat.read(root / "autograded" / "s1" / ASSIGNMENT / "01_fixture.ipynb", as_version=4)
    outputs = strip_ansi("\n".join(
        "\n".join(o.get("traceback", [])) + str(o.get("text", ""))
        for c in autograded.cells
        for o in c.get("outputs", [])
    ))
    # positive controls: the outputs in nbgrader's autograded notebook do quote the hidden tests (IPython
    # shows the lines around the failing one, so even a failing *visible* check quotes the hidden test
    # below it) and the library frames; so does its feedback without HideHiddenTests.
    assert 'json.loads("{secret_hidden_payload")' in outputs and "decoder.py" in outputs
    assert 'warnings.warn("the hidden test warns")' in outputs and "secret_context_line" in outputs

    text = html_text(root / "feedback" / "s1" / ASSIGNMENT / "01_fixture.html")
    assert leaks(hidden, text) == []
    for secret in ("secret_hidden_payload", "secret_context_line", "decoder.py", *HIDDEN):
        assert secret not in text, secret
    assert text.count(HideHiddenTests().placeholder) == 2
    assert "JSONDecodeError: Expecting property name enclosed in double quotes" in text
    assert "UserWarning: the hidden test warns" in text  # why the cell scored 0 stays visible
    assert "AssertionError: add(1, 2) should be 3" in text
    assert "(Score: 0.0 / 2.0)" in text
    # MathJax from the Jupyter server, not a CDN (autograder/nbgrader/mathjax.py), through the real command
    from autograder.nbgrader.mathjax import MATHJAX_URL

    page = (root / "feedback" / "s1" / ASSIGNMENT / "01_fixture.html").read_text()
    assert f'src="{MATHJAX_URL}"' in page and "cdnjs" not in page


@pytest.mark.slow
def test_pytest_grader_and_nbgrader_give_the_same_scores(graded, tmp_path):
    """The bundled example submissions score the same from `nbgrader autograde` and the CLI, item by item."""
    from autograder.cli import main

    with open(graded / "grades.csv", newline="") as f:
        nbgrader_scores = {row["student_id"]: float(row["score"]) for row in csv.DictReader(f)}
    report = tmp_path / "report.json"
    assert main(["grade", str(ROOT / "examples" / "submissions"), "--json", str(report), "--seed", str(SEED),
                 "-q"]) == 0
    # the fixture's nbgrader course autogrades the English assignment; the Chinese examples (`*_zh`) are compared
    # with `nbgrader autograde self_attention_zh` in tests/test_editions.py
    subs = [s for s in json.loads(report.read_text())["submissions"] if not Path(s["path"]).name.endswith("_zh")]
    pytest_scores = {Path(s["path"]).name: s["score"] for s in subs}
    assert pytest_scores == pytest.approx(nbgrader_scores, abs=1e-6)
    for sub in subs:
        assert gradebook_scores(graded, Path(sub["path"]).name) == pytest.approx(cli_scores(sub), abs=1e-6)
    assert {s["max_score"] for s in subs} == {sum(points(read_notebooks(graded / "source" / ASSIGNMENT)).values())}


# --- slow: hostile submissions through the real `nbgrader autograde`, compared with the CLI ---------

NB1, NB2 = "01_attention_scores.ipynb", "02_scaled_dot_product_attention.ipynb"
#: grader options of the hostile runs, given to both front ends (nbgrader's through SandboxAutograde.grader_args)
GRADER_ARGS = ["--device", "cpu"]

#: The cheat of issue 11: the comparison functions always agree, the answer is zeros. In the student's
#: kernel it passes every in-kernel check (the control below shows it).
CHEAT = (
    "import torch\n"
    "torch.allclose = lambda *a, **k: True\n"
    "torch.equal = lambda *a, **k: True\n"
    "torch.testing.assert_close = lambda *a, **k: None\n"
    "def attention_scores(inputs):\n"
    "    return torch.zeros(*inputs.shape[:-1], inputs.shape[-2], dtype=inputs.dtype)\n")

#: One hostile trick per item (``tests/test_grader_hostile.py`` has each on its own, hangs included: a
#: hang costs its call timeout in both front ends, too slow here), in two notebooks so that the test sees
#: a submission graded once for all its notebooks. ``None`` deletes the answer cell. ``softmax_stable`` is
#: answered honestly and earns its points.
HOSTILE: dict[str, str | None] = {
    "attention_scores": CHEAT,
    "attention_scores_loop": "import os\ndef attention_scores_loop(inputs):\n    os._exit(0)\n",
    "softmax_naive": ("import torch\nclass Liar(torch.Tensor):\n    def __eq__(self, other):\n        return True\n"
                      "    def allclose(self, *a, **k):\n        return True\n"
                      "def softmax_naive(x, dim=-1):\n    return torch.zeros_like(x).as_subclass(Liar)\n"),
    "context_vectors": None,
    "simple_self_attention": ("def simple_self_attention(inputs):\n"
                              "    from solutions import simple_self_attention as reference\n"
                              "    return reference(inputs)\n"),
    # partial credit: right in float64 only
    "project_qkv": ("import torch\ndef project_qkv(x, W_q, W_k, W_v):\n"
                    "    if x.dtype == torch.float32:\n        return x, x, x\n"
                    "    return x @ W_q, x @ W_k, x @ W_v\n"),
    "scaled_dot_product_attention": ("import torch.nn.functional as F\n"
                                     "def scaled_dot_product_attention(q, k, v, mask=None):\n"
                                     "    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)\n"
                                     "    return out, out\n"),
}


def hostile_notebook(course: Path, name: str, overrides: dict[str, str | None], tamper: bool = False):
    """The release notebook ``name`` answered from source/, with ``overrides`` (``None``: cell deleted).

    ``tamper``: the test cell of ``softmax_naive`` is unlocked, emptied, claims 100 points and carries a
    full-marks output (nbgrader's sanitising must restore it; the grader never reads it).
    """
    source = nbformat.read(course / "source" / ASSIGNMENT / name, as_version=4)
    nb = build_submission(source, nbformat.read(course / "release" / ASSIGNMENT / name, as_version=4),
                          {k: v for k, v in overrides.items() if v is not None})
    nb.cells = [c for c in nb.cells if not (nbgrader_meta(c).get("grade_id") in overrides
                                            and overrides[nbgrader_meta(c)["grade_id"]] is None)]
    for cell in nb.cells:
        if tamper and nbgrader_meta(cell).get("grade_id") == "test_softmax_naive":
            cell.source = "pass"
            cell.metadata["nbgrader"].update(locked=False, points=100)
            cell.outputs = [new_output("execute_result", data={"text/plain": "100"}, execution_count=1)]
    return nb


def submit(course: Path, student: str, notebooks: dict[str, nbformat.NotebookNode]) -> None:
    folder = course / "submitted" / student / ASSIGNMENT
    folder.mkdir(parents=True, exist_ok=True)
    for name, nb in notebooks.items():
        nbformat.write(nb, folder / name)


def copy_course(course: Path, dest: Path) -> Path:
    """A second course root with ``course``'s config, source/, release/ and gradebook (no submissions)."""
    dest.mkdir(parents=True)
    for name in ("nbgrader_config.py", "gradebook.db"):
        shutil.copy2(course / name, dest / name)
    for name in ("source", "release"):
        shutil.copytree(course / name, dest / name)
    return dest


@pytest.fixture(scope="module")
def hostile(course, tmp_path_factory):
    """A hostile student (two notebooks) through `nbgrader autograde`, and through the CLI on the same seed."""
    root = copy_course(course, tmp_path_factory.mktemp("hostile") / "course")
    add_config(root, f"c.SandboxAutograde.seed = {SEED}", f"c.SandboxAutograde.grader_args = {GRADER_ARGS!r}")
    submit(root, "hostile", {NB1: hostile_notebook(root, NB1, HOSTILE, tamper=True),
                             NB2: hostile_notebook(root, NB2, HOSTILE)})
    start = time.perf_counter()
    proc = release_script.run_nbgrader(["autograde", ASSIGNMENT], root)
    print(f"\n[timing] nbgrader autograde, hostile student: {time.perf_counter() - start:.1f}s")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-8000:]
    start = time.perf_counter()
    cli = subprocess.run([sys.executable, "-m", "autograder", "grade", str(root / "submitted" / "hostile"), "--json",
                          str(root / "cli.json"), "--seed", str(SEED), "-q", *GRADER_ARGS],
                         capture_output=True, text=True, env=release_script.nbgrader_env(), timeout=1200)
    print(f"\n[timing] CLI, hostile student: {time.perf_counter() - start:.1f}s")
    assert cli.returncode == 0, cli.stdout[-3000:] + cli.stderr[-5000:]
    (sub,) = json.loads((root / "cli.json").read_text())["submissions"]
    return root, sub, proc.stdout + proc.stderr


@pytest.mark.slow
def test_hostile_submission_scores_the_same_in_nbgrader_and_the_cli(hostile):
    root, cli, log = hostile
    book = gradebook_scores(root, "hostile")
    assert book == pytest.approx(cli_scores(cli), abs=1e-6)
    assert log.count(f"Sandboxed grader: grading {root / 'submitted' / 'hostile'}") == 1  # once, both notebooks
    assert f"seed {SEED}" in log
    for item in ("attention_scores", "attention_scores_loop", "softmax_naive", "context_vectors",
                 "simple_self_attention", "scaled_dot_product_attention"):
        assert book[item] == 0, item  # the cheat (attention_scores) included
    assert book["softmax_stable"] == 2  # the honest answer keeps its points
    assert book["project_qkv"] == 0.5  # partial credit reaches the gradebook
    assert book["causal_mask"] == 0  # a notebook not submitted
    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{root / 'gradebook.db'}", "self-attention") as gb:
        grade = gb.find_grade("test_softmax_naive", Path(NB1).stem, ASSIGNMENT, "hostile")
        assert (grade.max_score, grade.needs_manual_grade) == (1, False)  # the tampered cell's 100 points ignored
        # the Formgrader's and export's total is the CLI's
        assert gb.find_submission(ASSIGNMENT, "hostile").score == pytest.approx(cli["score"])


@pytest.mark.slow
def test_feedback_of_a_hostile_submission_hides_the_tests(hostile):
    root, _, _ = hostile
    proc = release_script.run_nbgrader(["generate_feedback", ASSIGNMENT, "--student", "hostile"], root)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    text = html_text(root / "feedback" / "hostile" / ASSIGNMENT / (Path(NB1).stem + ".html"))
    secrets, _ = secret_and_visible(read_notebooks(root / "source" / ASSIGNMENT))
    assert leaks(secrets["hidden"], text) == [] and "exercises.kernel" not in text
    assert "Sandboxed grader (seed" in text and "not allowed" in text  # why simple_self_attention scored 0


@pytest.mark.slow
def test_the_cheat_beats_nbgraders_own_kernel_chain(course, tmp_path):
    """Control: the same cheat, autograded with nbgrader's stock chain (the student's kernel), gets the
    item's points. Without SandboxAutograde the hostile comparison above would fail."""
    root = copy_course(course, tmp_path / "stock")
    add_config(root, STOCK_AUTOGRADE)
    submit(root, "cheat", {NB1: hostile_notebook(root, NB1, {"attention_scores": CHEAT})})
    proc = release_script.run_nbgrader(["autograde", ASSIGNMENT], root)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-8000:]
    assert "Sandboxed grader" not in proc.stdout + proc.stderr
    assert gradebook_scores(root, "cheat")["attention_scores"] == 1


@pytest.mark.slow
def test_a_grader_fault_fails_the_student_loudly_and_scores_nothing(course, tmp_path):
    """The grader's exit 2 (here: its self-check cannot run in 1 MiB) is no zero: autograde fails for the
    student, leaves no autograded notebook, and the gradebook holds no automatic score."""
    root = copy_course(course, tmp_path / "fault")
    add_config(root, "c.SandboxAutograde.grader_args = ['--memory-mib', '1']")
    # every notebook submitted (nbgrader itself scores a missing notebook 0): all of them perfect
    # two students: the class's batch fails first, then each student graded alone fails too (issue 18)
    for student in ("unlucky", "unlucky_too"):
        submit(root, student, {p.name: hostile_notebook(root, p.name, {})
                               for p in sorted((root / "release" / ASSIGNMENT).glob("*.ipynb"))})
    proc = release_script.run_nbgrader(["autograde", ASSIGNMENT], root)
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0, log[-3000:]
    assert "the batch gave no scores; grading each student alone" in log
    assert "could not grade" in log and "exit status 2" in log and "not the student's fault" in log
    for student in ("unlucky", "unlucky_too"):
        assert f"There was an error processing assignment 'self_attention' for student '{student}'" in log
        assert not (root / "autograded" / student / ASSIGNMENT / NB1).exists()
        assert set(gradebook_scores(root, student).values()) == {None}
    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{root / 'gradebook.db'}", "self-attention") as gb:
        grades = [g for nb in gb.find_submission(ASSIGNMENT, "unlucky").notebooks for g in nb.grades]
        assert grades and all(g.needs_manual_grade for g in grades)  # the Formgrader flags them
