"""Feedback pages load MathJax from the Jupyter server that shows them, never from a CDN (issue 18).

The page is rendered by nbconvert's HTMLExporter exactly as ``nbgrader generate_feedback`` and the
Formgrader's button configure it (``nbgrader_config.py`` loaded, template ``feedback``), from a notebook
with math; a browser check that the math renders is in tests/test_browser.py.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import nbformat
import pytest
from nbconvert.exporters import HTMLExporter
from traitlets.config import Config, PyFileConfigLoader

from autograder.nbgrader import mathjax

ROOT = Path(__file__).resolve().parents[1]
RESOURCES = {"nbgrader": {"notebook": "01_attention_scores", "score": 1.0, "max_score": 2.0, "late_penalty": 0}}


def _notebook() -> nbformat.NotebookNode:
    return nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(
        r"The scores are $\omega_{ij} = x_i^\top x_j$, scaled by $1/\sqrt{d_k}$.")])


def _feedback_html(tmp_path: Path, course_config: bool) -> str:
    """One feedback page as nbgrader renders it: GenerateFeedback's exporter settings, plus the API's
    explicit ``template_name = 'feedback'`` (the Formgrader's button), with or without the course config."""
    from nbgrader.converters import GenerateFeedback
    from nbgrader.coursedir import CourseDirectory

    if course_config:
        shutil.copy2(ROOT / "nbgrader_config.py", tmp_path / "nbgrader_config.py")
        config = PyFileConfigLoader("nbgrader_config.py", path=str(tmp_path)).load_config()
    else:
        config = Config()
    config.CourseDirectory.root = str(tmp_path)
    feedback = GenerateFeedback(coursedir=CourseDirectory(config=config), config=config)
    feedback.update_config(Config({"HTMLExporter": {"template_name": "feedback"}}))
    exporter = HTMLExporter(parent=feedback, config=feedback.config)
    html, _ = exporter.from_notebook_node(_notebook(), resources=RESOURCES)
    return html


def _script_sources(html: str) -> list[str]:
    return re.findall(r"<script[^>]*\bsrc=\"([^\"]*)\"", html)


def test_feedback_loads_mathjax_from_the_jupyter_server_not_a_cdn(tmp_path):
    html = _feedback_html(tmp_path, course_config=True)
    assert "Score: 1.0 / 2.0" in html  # nbgrader's feedback template, not some other one
    sources = _script_sources(html)
    assert mathjax.MATHJAX_URL in sources, sources
    assert not [s for s in sources if urlsplit(s).scheme or s.startswith("//")], sources  # nothing remote
    assert "cdnjs" not in html and "cdn.jsdelivr" not in html and "unpkg.com" not in html


def test_without_the_course_template_nbgrader_would_use_the_cdn(tmp_path):
    """The check above can fail: nbgrader's feedback template alone loads MathJax from cdnjs."""
    sources = _script_sources(_feedback_html(tmp_path, course_config=False))
    assert any("cdnjs.cloudflare.com/ajax/libs/mathjax" in s for s in sources), sources


@pytest.mark.parametrize("page", [
    "http://127.0.0.1:8888/files/feedback/ada/self_attention/01_attention_scores.html",  # the instructor's Lab
    "https://hub.example/user/ada/files/self_attention/feedback/2026-12-07 15:00:00.000000 UTC/01.html",  # fetched
])
def test_the_relative_url_reaches_the_servers_mathjax(page):
    base = page[:page.index("files/")]
    assert urljoin(page, mathjax.MATHJAX_URL).split("?")[0] == base + "static/jupyter_server_mathjax/MathJax.js"


def test_the_mathjax_the_server_serves_is_installed():
    path = mathjax.installed_mathjax()
    assert path is not None, "pip install jupyter-server-mathjax (the dev extra): the feedback's math needs it"
    config = mathjax.MATHJAX_URL.split("config=")[1].split(",")
    assert all((path.parent / "config" / f"{name}.js").is_file() for name in config), config  # what the URL asks for
    template = (mathjax.TEMPLATES / "feedback" / "mathjax.html.j2").read_text()
    assert f'url="{mathjax.MATHJAX_URL}"' in template
