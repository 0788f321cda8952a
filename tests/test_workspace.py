"""A student's work is never overwritten (issue 18): the workspace, and both ways of making the release.

Fast: ``scripts/workspace.py`` copies only what the student lacks, never into or out of the release.
Slow: in a temporary course root, nbgrader's own ``generate_assignment`` (what the Formgrader's
Generate runs, with the course's post-convert hook) and ``scripts/release.py`` give the same notebooks,
pictures included, and neither changes a saved answer in ``workspace/``.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ASSIGNMENT = "self_attention"


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"_selfattn_{name}_test", ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


workspace = _script("workspace")
release_script = _script("release")


def _release(tmp_path: Path) -> Path:
    folder = tmp_path / "release" / ASSIGNMENT
    folder.mkdir(parents=True)
    (folder / "01_a.ipynb").write_text("released 1")
    (folder / "02_b.ipynb").write_text("released 2")
    (folder / ".ipynb_checkpoints").mkdir()
    (folder / ".ipynb_checkpoints" / "01_a-checkpoint.ipynb").write_text("checkpoint")
    return folder


def test_the_workspace_is_filled_once_and_the_students_files_never_overwritten(tmp_path):
    release = _release(tmp_path)
    mine = tmp_path / "workspace" / ASSIGNMENT
    assert workspace.fill(release, mine) == ["01_a.ipynb", "02_b.ipynb"]  # no checkpoints
    (mine / "01_a.ipynb").write_text("my answer")
    (mine / "02_b.ipynb").unlink()  # a lesson the student lost comes back from the release
    release_script.write_release({"01_a.ipynb": b"regenerated 1", "03_c.ipynb": b"new lesson"}, release)
    assert workspace.fill(release, mine) == ["03_c.ipynb"]
    assert (mine / "01_a.ipynb").read_text() == "my answer"
    assert (mine / "03_c.ipynb").read_text() == "new lesson"


@pytest.mark.parametrize("inside", ["release/self_attention", "release/self_attention/work", "."])
def test_a_workspace_inside_the_release_is_refused(tmp_path, inside):
    release = _release(tmp_path)
    with pytest.raises(ValueError, match="separate folders"):
        workspace.fill(release, (tmp_path / inside) if inside != "." else release.parent)


def test_the_command_says_where_the_notebooks_are(tmp_path):
    release = _release(tmp_path)
    run = [sys.executable, str(ROOT / "scripts" / "workspace.py"), "--release", str(release),
           "--workspace", str(tmp_path / "ws")]
    first = subprocess.run(run, capture_output=True, text=True, check=True)
    again = subprocess.run(run, capture_output=True, text=True, check=True)
    assert "2 new from the release" in first.stdout and "your work is as you left it" in again.stdout
    missing = subprocess.run([*run[:3], str(tmp_path / "nothing"), *run[4:]], capture_output=True, text=True)
    assert missing.returncode == 2 and "no release" in missing.stderr


@pytest.mark.slow
def test_generate_and_release_py_give_the_same_notebooks_and_leave_saved_work_alone(tmp_path):
    course = release_script.prepare_course(tmp_path / "course")
    shutil.copytree(ROOT / "scripts", course / "scripts")  # the course's own Generate hook draws from here
    generated = release_script.generate_assignment(course)  # nbgrader's Generate, with the course's config
    mine = course / "workspace" / ASSIGNMENT
    workspace.fill(generated, mine)
    saved = mine / "01_attention_scores.ipynb"
    saved.write_text(saved.read_text().replace('raise NotImplementedError(', 'my_answer = 1  # (', 1))
    before = {p.name: p.read_bytes() for p in mine.iterdir()}
    by_generate = release_script.comparable(release_script.read_release(generated))

    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "release.py"), "--root", str(course)],
                          capture_output=True, text=True, env=release_script.nbgrader_env(), timeout=1200)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    by_script = release_script.comparable(release_script.read_release(course / "release" / ASSIGNMENT))
    assert release_script.compare(by_script, by_generate) == []
    assert any(b"image/png" in data for data in by_generate.values())  # the pictures are there, both ways
    release_script.generate_assignment(course)  # Generate again, over the release
    assert {p.name: p.read_bytes() for p in mine.iterdir()} == before
