"""The course where its users live: JupyterLab 4 with nbgrader, driven by headless Chromium (Selenium).

A real JupyterLab runs on a loopback port in a temporary copy of the course (``nbgrader_config.py``,
``source/``, ``release/``, ``examples/``; nothing is written into the repository), started as the
README says once the environment exists: ``.venv/bin/jupyter lab`` from the course root, *without*
activating the environment (PATH has no ``alembic``; the Formgrader must work anyway).

Student (the README's path): open lesson 1 from ``workspace/self_attention/`` (filled from the release by
``scripts/workspace.py``, as ``bash run.sh lab`` does), type the reference answer of
``attention_scores_loop`` into its answer cell and save, Run All, see the visible check's pass message
and a plot, press Validate and read its summary (first, under no "The following cell failed:"), open
the Assignment List (no exchange errors).
Instructor: open the Formgrader from the Nbgrader menu, see the assignment, Generate it, autograde
the submitted example ``one_wrong`` (its lesson 7, the notebook with its wrong answer, copied to
``submitted/``) from the Formgrader, check the score, generate its feedback, open it and see its math
typeset by the MathJax the Jupyter server serves (no CDN).
Saved work: after the Formgrader's Generate, ``nbgrader generate_assignment --force`` and
``scripts/release.py --root COURSE`` (what ``bash run.sh main`` runs first), the student's saved notebook
is byte for byte what the Lab saved, and shows the answer when opened again.

Screenshots of each step go to ``reports/browser/`` (gitignored), with ``timings.json``. Needs Debian's
``chromium`` and ``chromium-driver`` (installed here with apt-get when missing, as root) and the
``selenium`` package (the ``dev`` extra); skipped with the reason otherwise.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import nbformat
import pytest

from autograder.examples import ASSIGNMENT, ONE_WRONG_ITEM, answer_cells, strip_solution_delimiters

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
SHOTS = ROOT / "reports" / "browser"
BIN = Path(sys.executable).parent
TOKEN = "selfattn-browser-test"
STUDENT_NOTEBOOK = "01_attention_scores.ipynb"
WORKSPACE = f"workspace/{ASSIGNMENT}"  # the README's student path (scripts/workspace.py)
ANSWERED = "attention_scores_loop"
EXAMPLE = "one_wrong"  # bundled example submission, with one wrong answer (ONE_WRONG_ITEM, in lesson 7)
# Only this notebook of the example is collected: autograding all seven takes 1.5-3 minutes here, one
# takes seconds, and the Formgrader's steps are the same. The other six count 0 of their points.
SUBMITTED_NOTEBOOK = "07_tiny_language_model"
APT_PACKAGES = ["chromium", "chromium-driver"]
TIMINGS: dict[str, float] = {}
SAVED: dict[str, bytes] = {}  # the student's notebook as the Lab saved it (the saved-work test compares)


# --- Chromium and Selenium ------------------------------------------------------------------------


def _browser_binaries() -> tuple[str | None, str | None]:
    return shutil.which("chromium"), shutil.which("chromedriver")


def ensure_chromium() -> tuple[str, str]:
    """Debian's chromium and chromedriver, installed with apt-get when missing (root only); else skip."""
    chromium, driver = _browser_binaries()
    if chromium and driver:
        return chromium, driver
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("browser tests need Debian's chromium and chromium-driver (apt-get install chromium "
                    "chromium-driver, as root)")
    install = ["apt-get", "install", "-y", "-qq", *APT_PACKAGES]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    proc = subprocess.run(install, capture_output=True, text=True, env=env, timeout=900)
    if proc.returncode != 0:  # the package lists may be missing or stale
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True, env=env, timeout=900)
        proc = subprocess.run(install, capture_output=True, text=True, env=env, timeout=900)
    chromium, driver = _browser_binaries()
    if not (chromium and driver):
        pytest.skip(f"could not install {' and '.join(APT_PACKAGES)} with apt-get: {proc.stderr.strip()[-300:]}")
    return chromium, driver


def start_chromium():
    """A headless Chromium, 1400x1000, driven by Selenium (skips without selenium; raises if it cannot start)."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="pip install selenium (the dev extra)")
    from selenium.webdriver.chrome.service import Service

    chromium, driver = ensure_chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,1000", "--disable-extensions"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(driver), options=options)


def type_answer(browser, item: str, answer: str):
    """Replace the unanswered answer cell of ``item`` with ``answer`` in the open notebook; the cell."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    cells = browser.find_elements(By.CSS_SELECTOR, ".jp-Notebook .jp-CodeCell")
    cell = next(c for c in cells if f"def {item}(" in c.text and "NotImplementedError" in c.text)
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", cell)
    cell.find_element(By.CSS_SELECTOR, ".cm-content").click()
    browser.find_element(By.CSS_SELECTOR, ".cm-focused .cm-content").send_keys(Keys.CONTROL, "a")
    # typed as text input (what a paste or an input method does): no auto-indent on top of ours
    browser.execute_cdp_cmd("Input.insertText", {"text": answer})
    return cell


@pytest.fixture(scope="module")
def browser():
    """A headless Chromium, 1400x1000, driven by Selenium."""
    start = time.perf_counter()
    try:
        chrome = start_chromium()
    except Exception as exc:  # noqa: BLE001 - any start-up failure means: no browser on this machine
        pytest.skip(f"Chromium could not start: {type(exc).__name__}: {str(exc).strip()[:300]}")
    TIMINGS["browser start"] = time.perf_counter() - start
    yield chrome
    chrome.quit()


# --- JupyterLab on a loopback port, in a copy of the course ---------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def course(tmp_path_factory) -> Path:
    """A temporary course root: config, source/, release/, examples/, and one collected submission."""
    root = tmp_path_factory.mktemp("browser") / "course"
    root.mkdir()
    shutil.copy2(ROOT / "nbgrader_config.py", root)
    for folder in ("source", "release", "examples"):
        shutil.copytree(ROOT / folder, root / folder, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    # the student's workspace, filled from the release as `bash run.sh lab` does before the Lab starts
    subprocess.run([sys.executable, str(ROOT / "scripts" / "workspace.py"), "--release",
                    str(root / "release" / ASSIGNMENT), "--workspace", str(root / WORKSPACE)],
                   check=True, capture_output=True, timeout=60)
    submitted = root / "submitted" / EXAMPLE / ASSIGNMENT
    submitted.mkdir(parents=True)
    shutil.copy2(ROOT / "examples" / "submissions" / EXAMPLE / ASSIGNMENT / f"{SUBMITTED_NOTEBOOK}.ipynb", submitted)
    return root


def expected_score() -> tuple[float, float, float]:
    """(score, notebook points, total points) of the collected notebook, from the points in source/."""
    points = {}
    for path in sorted((ROOT / "source" / ASSIGNMENT).glob("*.ipynb")):
        for cell in nbformat.read(path, as_version=4).cells:
            meta = cell.metadata.get("nbgrader", {})
            if meta.get("grade"):
                points[meta["grade_id"]] = (path.stem, float(meta.get("points", 0)))
    total = sum(p for _, p in points.values())
    in_notebook = sum(p for nb, p in points.values() if nb == SUBMITTED_NOTEBOOK)
    lost = points[f"test_{ONE_WRONG_ITEM}"]
    assert lost[0] == SUBMITTED_NOTEBOOK, "the example's wrong answer is in another notebook"
    return in_notebook - lost[1], in_notebook, total


@pytest.fixture(scope="module")
def lab(course, tmp_path_factory):
    """``jupyter lab`` from the course root, the environment not activated; yields (url, log path)."""
    if not (BIN / "jupyter-lab").exists():
        pytest.skip(f"JupyterLab is not installed in {BIN} (the dev extra)")
    state = tmp_path_factory.mktemp("lab-state")
    settings = state / "settings"
    # no news pop-up over the screenshots; every cell in the DOM (JupyterLab renders only visible cells);
    # no autosave
    for name, value in {"apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
                        "notebook-extension/tracker": {"windowingMode": "none"},
                        # what is on disk is what the student saved (File > Save), not Run All's autosaved outputs
                        "docmanager-extension/plugin": {"autosave": False}}.items():
        path = settings / "@jupyterlab" / f"{name}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(value))
    env = dict(
        os.environ,
        PATH="/usr/local/bin:/usr/bin:/bin",  # not activated: no alembic, no jupyter on PATH
        PYTHONPATH=str(ROOT),  # the config imports this checkout's `autograder`
        JUPYTERLAB_SETTINGS_DIR=str(settings),
        JUPYTERLAB_WORKSPACES_DIR=str(state / "workspaces"),
        JUPYTER_RUNTIME_DIR=str(state / "runtime"),
    )
    env.pop("VIRTUAL_ENV", None)
    port = _free_port()
    command = [str(BIN / "jupyter"), "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
               f"--IdentityProvider.token={TOKEN}", "--ServerApp.open_browser=False"]
    if os.geteuid() == 0:
        command.append("--allow-root")
    log_path = state / "lab.log"
    start = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(command, cwd=course, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                pytest.fail(f"jupyter lab exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{url}/api/status?token={TOKEN}", timeout=5) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"jupyter lab did not answer in 180 s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        TIMINGS["jupyter lab start"] = time.perf_counter() - start
        yield url, log_path
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the server and the kernels it started (its own session)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        SHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copy2(log_path, SHOTS / "jupyter-lab.log")
        (SHOTS / "timings.json").write_text(json.dumps({k: round(v, 1) for k, v in TIMINGS.items()}, indent=1))


# --- helpers ----------------------------------------------------------------------------------------


@contextmanager
def step(name: str):
    """Time one step of the walk-through (reported in timings.json and the test output)."""
    start = time.perf_counter()
    yield
    TIMINGS[name] = time.perf_counter() - start
    print(f"[timing] {name}: {TIMINGS[name]:.1f}s")


def shot(driver, name: str, element=None) -> Path:
    """A screenshot of the window (after scrolling ``element`` into view) in reports/browser/."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    if element is not None:
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", element)
        time.sleep(0.3)
    path = SHOTS / f"{name}.png"
    driver.save_screenshot(str(path))
    return path


def wait(driver, condition, timeout: float = 120, message: str = ""):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.25).until(condition, message)


def kernel_idle(driver) -> bool:
    return driver.execute_script(
        "return document.querySelector('.jp-Notebook-ExecutionIndicator')?.getAttribute('data-status')") == "idle"


def menu(driver, top: str, command: str) -> None:
    """Click JupyterLab's menu ``top`` and then the item that runs ``command``."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec

    driver.find_element(By.XPATH, f"//div[contains(@class, 'lm-MenuBar-itemLabel') and text()='{top}']").click()
    item = (By.CSS_SELECTOR, f"li.lm-Menu-item[data-command='{command}']")
    wait(driver, ec.element_to_be_clickable(item), 10, f"menu item {command}").click()


def text_of(driver, css: str) -> str:
    from selenium.webdriver.common.by import By

    return "\n".join(e.text for e in driver.find_elements(By.CSS_SELECTOR, css))


# --- the student -------------------------------------------------------------------------------------


def test_student_answers_runs_and_validates_in_jupyterlab(browser, lab, course):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec

    url, log_path = lab
    source = nbformat.read(ROOT / "source" / ASSIGNMENT / STUDENT_NOTEBOOK, as_version=4)
    answer = strip_solution_delimiters(answer_cells(source)[ANSWERED].source)
    pass_message = f"{ANSWERED}: all visible checks passed"

    with step("student: open the notebook in the workspace"):
        browser.get(f"{url}/lab/tree/{WORKSPACE}/{STUDENT_NOTEBOOK}?token={TOKEN}")
        wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, ".jp-Notebook .jp-Cell")) > 20 and kernel_idle(d),
             180, "the notebook did not open with an idle kernel")
        shot(browser, "01_student_notebook_open")

    with step("student: type the answer"):
        cell = type_answer(browser, ANSWERED, answer)
        typed = cell.find_element(By.CSS_SELECTOR, ".cm-content").text
        assert "NotImplementedError" not in typed and "scores[i, j] = torch.dot" in typed, typed
        shot(browser, "02_student_answer_typed", cell)

    with step("student: save"):
        menu(browser, "File", "docmanager:save")
        saved = course / WORKSPACE / STUDENT_NOTEBOOK

        def answer_saved(_driver) -> bool:
            cells = nbformat.reads(saved.read_text(), as_version=4).cells
            return any("scores[i, j] = torch.dot" in c.source and "NotImplementedError" not in c.source
                       for c in cells if c.cell_type == "code")

        wait(browser, answer_saved, 60, "the answer was not saved to the workspace notebook")

    with step("student: Run All (until the next unanswered exercise)"):
        menu(browser, "Run", "runmenu:run-all")
        wait(browser, lambda d: pass_message in text_of(d, ".jp-OutputArea-output"), 180,
             f"no '{pass_message}' after Run All")
        wait(browser, kernel_idle, 180, "the kernel did not become idle")
        outputs = browser.find_elements(By.CSS_SELECTOR, ".jp-OutputArea-output")
        passed = next(o for o in outputs if pass_message in o.text)
        shot(browser, "03_student_check_passed", passed)
        images = browser.find_elements(By.CSS_SELECTOR, ".jp-OutputArea-output img")
        assert images, "Run All drew no plot"
        shot(browser, "04_student_plot", images[0])
        errors = text_of(browser, ".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
        # Run All stops at the next exercise, whose check reports the stub's message
        assert "NotImplementedError: write your answer here" in errors, errors[-2000:]

    with step("student: Validate"):
        browser.find_element(By.CSS_SELECTOR, ".validate-button").click()
        dialog = wait(browser, ec.visibility_of_element_located((By.ID, "validation-message")), 300,
                      "Validate showed no result")
        text = dialog.text
        shot(browser, "05_student_validate", dialog)
        lines = [x.strip() for x in text.splitlines()]
        # the summary opens the dialog, under no "The following cell failed:" (Selenium's text is what shows)
        assert lines[0] == "Summary of the graded cells: 1 passed, 0 failed, 5 not answered", text[:3000]
        assert "The following cell failed:" not in text, text[:3000]
        assert any(x.split() == ["passed", ANSWERED, "(1", "point)"] for x in lines), text[:3000]
        assert sum(x.startswith("not answered ") for x in lines) == 5, text[:3000]
        assert len(text) < 3000, f"Validate's result is {len(text)} characters long"
        browser.find_element(By.CSS_SELECTOR, ".jp-Dialog .jp-mod-accept").click()

    with step("student: Assignment List"):
        menu(browser, "Nbgrader", "nbgrader:open-assignment-list")
        panel = wait(browser, ec.visibility_of_element_located((By.ID, "nbgrader-assignment-list")), 60)
        wait(browser, lambda d: "Released assignments" in panel.text and "Loading" not in panel.text, 60,
             "the Assignment List did not load")
        time.sleep(1)  # the course list and the three lists load separately
        shot(browser, "06_student_assignment_list")
        assert "Error" not in panel.text and "exchange directory does not exist" not in panel.text, panel.text

    log = log_path.read_text()
    assert "ExchangeError" not in log and "FileNotFoundError" not in log, log[-3000:]
    # the notebook as the student last saved it (Validate saves before it validates): the saved-work test's
    # reference; autosave is off, so nothing else writes it from here on
    saved = course / WORKSPACE / STUDENT_NOTEBOOK
    assert answer_saved(None)
    SAVED[STUDENT_NOTEBOOK] = saved.read_bytes()


# --- the instructor ----------------------------------------------------------------------------------


def test_instructor_grades_in_the_formgrader(browser, lab, course):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec

    url, log_path = lab

    def modal(name: str, timeout: float) -> str:
        """Wait for the Formgrader's result dialog, screenshot it, close it, return its text."""
        dialog = wait(browser, ec.visibility_of_element_located((By.CSS_SELECTOR, "#success-modal, #error-modal")),
                      timeout, f"{name}: no result dialog")
        text = dialog.get_attribute("textContent")  # all of it, also what the dialog has scrolled away
        shot(browser, name)
        assert dialog.get_attribute("id") == "success-modal", text[-3000:]
        close_dialog(dialog)
        return text

    def close_dialog(dialog) -> None:
        """Click the dialog's close button until it is gone: a click during its fade-in animation can be lost."""
        from selenium.common.exceptions import WebDriverException

        def closed(driver) -> bool:
            try:
                if not dialog.is_displayed():
                    return True
                dialog.find_element(By.CSS_SELECTOR, ".modal-footer button").click()
                return not dialog.is_displayed()
            except WebDriverException:  # detached (gone) or not clickable yet: look again
                return not driver.find_elements(By.CSS_SELECTOR, "#success-modal.in, #error-modal.in")

        wait(browser, closed, 30, "the result dialog did not close")

    with step("instructor: open the Formgrader from the Nbgrader menu"):
        browser.get(f"{url}/lab?token={TOKEN}")
        wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".lm-MenuBar-itemLabel"), 180, "no JupyterLab")
        menu(browser, "Nbgrader", "nbgrader:open-formgrader")
        frame = wait(browser, ec.presence_of_element_located((By.CSS_SELECTOR, ".jp-MainAreaWidget iframe")), 60)
        browser.switch_to.frame(frame)
        # the table is redrawn when the assignments arrive: read it afresh each time
        wait(browser, lambda d: ASSIGNMENT in text_of(d, "#main-table td.name"), 180,
             "the Formgrader does not list the assignment")
        shot(browser, "07_instructor_formgrader")
        assert "exchange directory does not exist" not in browser.find_element(By.TAG_NAME, "body").text

    with step("instructor: Generate the student version"):
        wait(browser, ec.element_to_be_clickable((By.CSS_SELECTOR, "#main-table td.assign a")), 30).click()
        assert "Successfully created the student version" in modal("08_instructor_generate", 300)

    with step("instructor: autograde the submitted example"):
        wait(browser, ec.element_to_be_clickable((By.CSS_SELECTOR, "#main-table td.num-submissions a")), 60).click()
        wait(browser, lambda d: EXAMPLE in text_of(d, "#main-table"), 60, f"no submission of {EXAMPLE}")
        browser.find_element(By.CSS_SELECTOR, "#main-table td.autograde a").click()
        assert f"Successfully autograded '{ASSIGNMENT}' for student '{EXAMPLE}'" in modal("09_instructor_autograde",
                                                                                           600)
        wait(browser, lambda d: "graded" in text_of(d, "#main-table td.status"), 60)
        score = browser.find_element(By.CSS_SELECTOR, "#main-table td.score").text
        shot(browser, "10_instructor_graded")
        earned, _, total = expected_score()
        assert score == f"{earned:g} / {total:g}", score

    with step("instructor: generate and open the feedback"):
        browser.find_element(By.CSS_SELECTOR, "#main-table td.generate-feedback a").click()
        assert "Successfully generated feedback" in modal("11_instructor_feedback_generated", 300)
        browser.switch_to.default_content()
        feedback = f"feedback/{EXAMPLE}/{ASSIGNMENT}/{SUBMITTED_NOTEBOOK}.html"
        assert (course / feedback).is_file()
        browser.get(f"{url}/files/{feedback}?token={TOKEN}")
        body = wait(browser, ec.visibility_of_element_located((By.TAG_NAME, "body")), 60).text
        shot(browser, "12_instructor_feedback")
        earned, in_notebook, _ = expected_score()
        assert f"{SUBMITTED_NOTEBOOK} (Score: {earned:.1f} / {in_notebook:.1f})" in body, body[:2000]
        assert "hidden tests ran here" in body and "BEGIN HIDDEN TESTS" not in body
        # the math is typeset by the MathJax of this Jupyter server (jupyter-server-mathjax), not a CDN
        from autograder.nbgrader.mathjax import MATHJAX_URL

        assert MATHJAX_URL in (course / feedback).read_text() and "cdnjs" not in (course / feedback).read_text()
        wait(browser, lambda d: d.execute_script(
            "return !!(window.MathJax && MathJax.Hub) && document.querySelectorAll('.MathJax, .MathJax_SVG').length"),
            60, "MathJax did not typeset the feedback's math")
        math = browser.find_elements(By.CSS_SELECTOR, ".MathJax, .MathJax_SVG")
        shot(browser, "12b_instructor_feedback_math", math[0])
        # the table of contents links each test cell; follow the one that lost its points
        lost = browser.find_element(By.XPATH, "//li[contains(., '(Score: 0.0')]/a")
        lost.click()
        time.sleep(0.5)
        shot(browser, "13_instructor_feedback_failed_check")
        assert ONE_WRONG_ITEM in body

    with sqlite3.connect(course / "gradebook.db") as con:
        version = con.execute("SELECT version_num FROM alembic_version").fetchall()
    assert len(version) == 1, "the gradebook was created without its alembic version"
    log = log_path.read_text()
    assert "FileNotFoundError" not in log and "ExchangeError" not in log, log[-3000:]


# --- saved work survives the instructor's commands ----------------------------------------------------


def test_saved_work_survives_generate_and_release_py(browser, lab, course):
    """The answer the student saved in the workspace (first test) after the Formgrader's Generate (second
    test), ``nbgrader generate_assignment --force`` and ``scripts/release.py`` (``bash run.sh main``'s
    first step) rewrote ``release/``: the same bytes on disk, and the answer in the Lab."""
    from selenium.webdriver.common.by import By

    url, _ = lab
    assert STUDENT_NOTEBOOK in SAVED, "the student test saved no answer (it failed before saving)"
    assert "instructor: Generate the student version" in TIMINGS, "the Formgrader's Generate did not run"
    saved = course / WORKSPACE / STUDENT_NOTEBOOK
    released = course / "release" / ASSIGNMENT / STUDENT_NOTEBOOK
    assert saved.read_bytes() == SAVED[STUDENT_NOTEBOOK], "Generate (Formgrader) changed the student's notebook"
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", PYTHONPATH=str(ROOT))
    for name, command in [
        ("instructor: nbgrader generate_assignment --force",
         [str(BIN / "nbgrader"), "generate_assignment", ASSIGNMENT, "--force"]),
        ("instructor: scripts/release.py",
         [sys.executable, str(ROOT / "scripts" / "release.py"), "--root", str(course)]),
    ]:
        before = released.stat().st_mtime_ns
        with step(name):
            proc = subprocess.run(command, cwd=course, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"{name} failed:\n{proc.stdout[-2000:]}{proc.stderr[-3000:]}"
        assert released.stat().st_mtime_ns != before, f"{name} did not rewrite release/ (nothing was tested)"
        assert saved.read_bytes() == SAVED[STUDENT_NOTEBOOK], f"{name} changed the student's notebook"

    with step("student: open the saved notebook again"):
        browser.get(f"{url}/lab/tree/{WORKSPACE}/{STUDENT_NOTEBOOK}?token={TOKEN}")
        wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, ".jp-Notebook .jp-Cell")) > 20, 180,
             "the saved notebook did not open")
        # the Lab renders the cells as they load: wait for the answer cell's text, not only for the cells

        def answer_cell(driver):
            found = [c for c in driver.find_elements(By.CSS_SELECTOR, ".jp-Notebook .jp-CodeCell")
                     if f"def {ANSWERED}(" in c.text]
            return found[0] if found else False

        mine = wait(browser, answer_cell, 60, f"the saved notebook shows no cell defining {ANSWERED}")
        assert "scores[i, j] = torch.dot" in mine.text and "NotImplementedError" not in mine.text, mine.text
        shot(browser, "14_student_work_after_regeneration", mine)
