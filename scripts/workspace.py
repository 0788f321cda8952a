"""A student's own copy of the release: ``python scripts/workspace.py [--release DIR] [--workspace DIR]``.

``bash run.sh lab`` runs this before JupyterLab starts. For each edition of the course (English
``self_attention``, Chinese ``self_attention_zh``) it copies each file of ``release/<assignment>/`` that
``workspace/<assignment>/`` does not have yet, and never touches a
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
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from exercises.editions import LANGUAGES, MASTER_ASSIGNMENT, assignment_for  # noqa: E402

ASSIGNMENT = MASTER_ASSIGNMENT
ASSIGNMENTS = tuple(assignment_for(lang) for lang in LANGUAGES)  # self_attention, self_attention_zh
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
    parser.add_argument("--release", type=Path, default=None,
                        help="one release folder to copy from (default: release/<assignment> of every edition)")
    parser.add_argument("--workspace", type=Path, default=None,
                        help="its workspace (default: workspace/<assignment> of every edition)")
    args = parser.parse_args(argv)
    if (args.release is None) != (args.workspace is None):
        parser.error("--release and --workspace go together")
    pairs = ([(args.release, args.workspace)] if args.release is not None else
             [(ROOT / "release" / a, ROOT / "workspace" / a) for a in ASSIGNMENTS if (ROOT / "release" / a).is_dir()
              or a == ASSIGNMENT])
    for release, where in pairs:
        try:
            copied = fill(release, where)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"your notebooks: {where} ({len(copied)} new from the release)" if copied else
              f"your notebooks: {where} (nothing new in the release; your work is as you left it)")
    return 0

if __name__ == "__main__":
    sys.exit(main())
