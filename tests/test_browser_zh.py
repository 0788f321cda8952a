"""A Chinese lesson where its students live: JupyterLab with nbgrader, driven by headless Chromium (issue 19).

The set-up of ``tests/test_browser.py`` (its browser, its JupyterLab started as the README says, its helpers)
on a temporary course whose student workspace is the Chinese edition: ``workspace/self_attention_zh/``, filled
from ``release/self_attention_zh/`` by ``scripts/workspace.py`` as ``bash run.sh lab`` does. The student opens
lesson 1 in Chinese, types the reference answer of ``attention_scores_loop``, saves, runs that answer cell and
its check cell (the check's pass message is the edition's own text), and presses Validate: the summary, in
Chinese, counts that one answer as passed. Screenshots go to ``reports/browser/`` with the prefix ``zh_``.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import test_browser as en
from test_browser import browser, lab  # noqa: F401 - fixtures, used by name

from autograder.examples import answer_cells, strip_solution_delimiters

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
ASSIGNMENT = "self_attention_zh"
WORKSPACE = f"workspace/{ASSIGNMENT}"
NOTEBOOK = "01_attention_scores.ipynb"
ANSWERED = "attention_scores_loop"


@pytest.fixture(scope="module")
def course(tmp_path_factory) -> Path:
    """A temporary course root with both editions' source and release, the Chinese workspace filled."""
    root = tmp_path_factory.mktemp("browser-zh") / "course"
    root.mkdir()
    shutil.copy2(ROOT / "nbgrader_config.py", root)
    for folder in ("source", "release"):
        shutil.copytree(ROOT / folder, root / folder, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    subprocess.run([sys.executable, str(ROOT / "scripts" / "workspace.py"), "--release",
                    str(root / "release" / ASSIGNMENT), "--workspace", str(root / WORKSPACE)],
                   check=True, capture_output=True, timeout=60)
    return root


def pass_message() -> str:
    """What the zh edition's check of ``attention_scores_loop`` prints when it passes (its own text)."""
    nb = nbformat.read(ROOT / "source" / ASSIGNMENT / NOTEBOOK, as_version=4)
    [test] = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == f"test_{ANSWERED}"]
    printed = [node.args[0].value for node in ast.walk(ast.parse(test.source))
               if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "print"
               and node.args and isinstance(node.args[0], ast.Constant)]
    assert len(printed) == 1, printed
    return printed[0]


def test_student_answers_checks_and_validates_a_chinese_lesson(browser, lab, course):  # noqa: F811
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec

    url, log_path = lab
    opened = nbformat.read(course / WORKSPACE / NOTEBOOK, as_version=4)
    assert opened.metadata.course.edition == "zh"
    source = nbformat.read(ROOT / "source" / ASSIGNMENT / NOTEBOOK, as_version=4)
    answer = strip_solution_delimiters(answer_cells(source)[ANSWERED].source)
    passed = pass_message()

    with en.step("zh student: open the Chinese lesson in the workspace"):
        browser.get(f"{url}/lab/tree/{WORKSPACE}/{NOTEBOOK}?token={en.TOKEN}")
        en.wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, ".jp-Notebook .jp-Cell")) > 20
                and en.kernel_idle(d), 180, "the notebook did not open with an idle kernel")
        en.shot(browser, "zh_01_notebook_open")

    with en.step("zh student: type the answer"):
        cell = en.type_answer(browser, ANSWERED, answer)
        typed = cell.find_element(By.CSS_SELECTOR, ".cm-content").text
        assert "NotImplementedError" not in typed and "scores[i, j] = torch.dot" in typed, typed
        en.menu(browser, "File", "docmanager:save")
        saved = course / WORKSPACE / NOTEBOOK
        en.wait(browser, lambda _d: any("scores[i, j] = torch.dot" in c.source and "NotImplementedError" not in
                                        c.source for c in nbformat.read(saved, as_version=4).cells),
                60, "the answer was not saved to the workspace notebook")
        en.shot(browser, "zh_02_answer_typed", cell)

    with en.step("zh student: run everything above the check, then the check"):
        # the given cells above (imports, the font, the data) and the answer, then the check cell itself
        checks = [c for c in browser.find_elements(By.CSS_SELECTOR, ".jp-Notebook .jp-CodeCell")
                  if f"out = {ANSWERED}(book_inputs)" in c.text]
        assert len(checks) == 1, "the check cell of the answered item was not found"
        checks[0].find_element(By.CSS_SELECTOR, ".jp-InputPrompt").click()  # select it (command mode)
        en.menu(browser, "Run", "notebook:run-all-above")
        en.wait(browser, en.kernel_idle, 180, "the kernel did not become idle")
        checks[0].find_element(By.CSS_SELECTOR, ".jp-InputPrompt").click()
        en.menu(browser, "Run", "notebook:run-cell")
        en.wait(browser, lambda d: passed in checks[0].text, 120, f"no '{passed}' under the check cell")
        en.shot(browser, "zh_03_check_passed", checks[0])

    with en.step("zh student: Validate"):
        browser.find_element(By.CSS_SELECTOR, ".validate-button").click()
        dialog = en.wait(browser, ec.visibility_of_element_located((By.ID, "validation-message")), 300,
                         "Validate showed no result")
        text = dialog.text
        en.shot(browser, "zh_04_validate", dialog)
        lines = [x.strip() for x in text.splitlines()]
        # the summary in the notebook's language (autograder/nbgrader/validate.py)
        assert lines[0] == "计分单元格小结：1 个通过，0 个未通过，5 个未作答", text[:3000]
        assert any(x.split() == ["已通过", ANSWERED, "（1", "分）"] for x in lines), text[:3000]
        browser.find_element(By.CSS_SELECTOR, ".jp-Dialog .jp-mod-accept").click()
    # Validate saved the notebook: the answer and the edition are what is on disk
    saved = nbformat.read(course / WORKSPACE / NOTEBOOK, as_version=4)
    assert saved.metadata.course.edition == "zh"
    assert any("scores[i, j] = torch.dot" in c.source for c in saved.cells if c.cell_type == "code")
    assert "ExchangeError" not in log_path.read_text()
