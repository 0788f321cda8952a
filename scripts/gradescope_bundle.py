"""Build the Gradescope autograder zip: ``python scripts/gradescope_bundle.py [--out PATH]``.

Gradescope's specification: ``setup.sh`` and ``run_autograder`` at the root of the zip (Gradescope
unpacks it into ``/autograder/source`` and copies ``run_autograder`` to ``/autograder``). Beside
them go the files the grader needs and nothing else: ``autograder/``, ``exercises/``,
``solutions/``, ``source/`` (the master notebooks), ``pyproject.toml``, the submission stager and a
``requirements.txt`` written from ``pyproject.toml``. Never ``release/``, ``tests/`` or ``examples/``.
The zip is reproducible: same files, same bytes (fixed timestamps, sorted entries).
"""

from __future__ import annotations

import argparse
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from delivery.requirements import requirements  # noqa: E402

SCRIPTS = {"setup.sh": "delivery/gradescope/setup.sh", "run_autograder": "delivery/gradescope/run_autograder"}
FOLDERS = ("autograder", "exercises", "solutions", "source")
FILES = ("pyproject.toml", "delivery/__init__.py", "delivery/stage_submission.py", "delivery/requirements.py")
SKIP_PARTS = {"__pycache__", ".ipynb_checkpoints"}
STAMP = (2024, 1, 1, 0, 0, 0)  # zip entries carry a date: a fixed one makes the bundle reproducible


def course_files(repo: Path = REPO) -> list[str]:
    """The course files the bundle carries, as sorted paths relative to ``repo``."""
    found = [f for f in FILES if (repo / f).is_file()]
    for folder in FOLDERS:
        for path in (repo / folder).rglob("*"):
            rel = path.relative_to(repo)
            if path.is_file() and not SKIP_PARTS & set(rel.parts) and path.suffix not in (".pyc", ".pyo"):
                found.append(rel.as_posix())
    return sorted(found)


def _add(zf: zipfile.ZipFile, name: str, data: bytes, executable: bool = False) -> None:
    info = zipfile.ZipInfo(name, date_time=STAMP)
    info.external_attr = (0o100755 if executable else 0o100644) << 16  # unzip restores the mode
    info.compress_type = zipfile.ZIP_DEFLATED
    zf.writestr(info, data)


def build(out: Path, repo: Path = REPO) -> list[str]:
    """Write the bundle to ``out``; return the names of its entries."""
    out.parent.mkdir(parents=True, exist_ok=True)
    names = []
    with zipfile.ZipFile(out, "w") as zf:
        for name, origin in SCRIPTS.items():
            _add(zf, name, (repo / origin).read_bytes(), executable=True)
            names.append(name)
        _add(zf, "requirements.txt", ("\n".join(requirements(repo / "pyproject.toml")) + "\n").encode())
        names.append("requirements.txt")
        for rel in course_files(repo):
            _add(zf, rel, (repo / rel).read_bytes())
            names.append(rel)
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "dist" / "gradescope_autograder.zip",
                        help="where to write the zip (default: dist/gradescope_autograder.zip)")
    args = parser.parse_args(argv)
    names = build(args.out)
    print(f"wrote {args.out} ({len(names)} files, {args.out.stat().st_size / 1e6:.2f} MB): upload it on "
          "Gradescope under Configure Autograder")
    return 0


if __name__ == "__main__":
    sys.exit(main())
