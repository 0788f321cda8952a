"""Gather a student's notebooks from wherever an upload put them, into the layout the grader reads.

``python delivery/stage_submission.py UPLOAD DEST`` copies each of the course's notebooks found under
UPLOAD (at any depth; the shallowest copy wins, Jupyter's checkpoints are ignored) to
``DEST/self_attention/<name>``. Gradescope uploads put the files at the top; a GitHub repository may
hold them in ``self_attention/`` or ``release/self_attention/``: the grader sees the same thing.

Exit status: 0 when at least one notebook was found; 1 when none was (the student uploaded something
else: said on stderr, naming the files expected); 2 when it could not run.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

# The course root (this file's folder's parent) holds the catalogue: the one list of notebook names.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from exercises.catalogue import NOTEBOOKS  # noqa: E402
from exercises.source import ASSIGNMENT  # noqa: E402


def find(upload: Path, names: tuple[str, ...] = NOTEBOOKS) -> dict[str, Path]:
    """Each course notebook found under ``upload``, shallowest first; checkpoints and hidden folders skipped.

    Two copies at the same depth (a repository with both editions, ``self_attention/`` and
    ``self_attention_zh/``): the one with more answers written wins, as when the grader reads both."""
    from autograder.intake import answers_written

    found: dict[str, Path] = {}
    candidates = sorted((p for p in upload.rglob("*.ipynb") if p.name in names and p.is_file()),
                        key=lambda p: (len(p.relative_to(upload).parts), -answers_written(p), str(p)))
    for path in candidates:
        if any(part.startswith(".") for part in path.relative_to(upload).parts[:-1]):
            continue  # .ipynb_checkpoints/, .git/: never what the student meant to hand in
        found.setdefault(path.name, path)
    return found


def stage(upload: Path, dest: Path) -> list[str]:
    """Copy the notebooks found under ``upload`` to ``dest/<assignment>/``; return their names."""
    found = find(upload)
    target = dest / ASSIGNMENT
    target.mkdir(parents=True, exist_ok=True)
    for name, path in found.items():
        shutil.copyfile(path, target / name)
    return sorted(found)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("upload", type=Path)
    parser.add_argument("dest", type=Path)
    args = parser.parse_args(argv)
    if not args.upload.is_dir():
        print(f"stage_submission: {args.upload} is not a folder", file=sys.stderr)
        return 2
    names = stage(args.upload, args.dest)
    if not names:
        print("no notebook of this course was found in the submission: hand in the notebooks themselves "
              f"({', '.join(NOTEBOOKS)}), not a zip or another file", file=sys.stderr)
        return 1
    print(f"staged {len(names)} notebook(s): {', '.join(names)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
