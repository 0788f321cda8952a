"""A student's own copy of the release: ``python scripts/workspace.py [--release DIR] [--workspace DIR]``.

``bash run.sh lab`` runs this before JupyterLab starts. It copies each file of
``release/self_attention/`` that ``workspace/self_attention/`` does not have yet, and never touches a
file that is there: the student works in ``workspace/``, which no instructor command writes
(*Generate*, ``bash run.sh main`` and ``scripts/release.py`` rewrite ``release/`` only), so saved
answers survive every regeneration of the release. A lesson added to the release later is copied
on the next start; a lesson the student already has stays as the student left it.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ASSIGNMENT = "self_attention"
SKIP_PARTS = {".ipynb_checkpoints", "__pycache__"}


def fill(release: Path, workspace: Path) -> list[str]:
    """Copy into ``workspace`` each file of ``release`` it lacks; return their relative paths.

    Raises ``ValueError`` when one folder lies inside the other (a workspace that a regenerated
    release would delete, or a release the student could edit).
    """
    release, workspace = release.resolve(), workspace.resolve()
    if release == workspace or release in workspace.parents or workspace in release.parents:
        raise ValueError(f"the workspace {workspace} and the release {release} must be separate folders")
    if not release.is_dir():
        raise ValueError(f"no release at {release}: run `python scripts/release.py` first")
    copied = []
    for path in sorted(release.rglob("*")):
        if not path.is_file() or SKIP_PARTS & set(path.relative_to(release).parts):
            continue
        target = workspace / path.relative_to(release)
        if target.exists():
            continue  # the student's: never overwritten
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)  # contents only: the release's read-only bits would stop Save
        copied.append(path.relative_to(release).as_posix())
    return copied


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--release", type=Path, default=ROOT / "release" / ASSIGNMENT)
    parser.add_argument("--workspace", type=Path, default=ROOT / "workspace" / ASSIGNMENT)
    args = parser.parse_args(argv)
    try:
        copied = fill(args.release, args.workspace)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    where = args.workspace
    print(f"your notebooks: {where} ({len(copied)} new from the release)" if copied else
          f"your notebooks: {where} (nothing new in the release; your work is as you left it)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
