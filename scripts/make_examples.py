"""Write the bundled example submissions from ``source/`` and ``release/``.

    python scripts/make_examples.py           # (re)write examples/submissions/
    python scripts/make_examples.py --check   # exit 1 when examples/submissions/ is out of sync

Students (see ``autograder/examples/``): ``perfect`` (every answer from ``source/``), ``empty``
(the release unchanged) and ``one_wrong`` (``perfect`` with one classic mistake), in each edition: the
Chinese edition's ``perfect_zh``, ``empty_zh`` and ``one_wrong_zh`` are built from
``source/self_attention_zh/`` and ``release/self_attention_zh/``. The layout is
nbgrader's ``submitted/<student>/<assignment>/<notebook>.ipynb``, so the folder can be copied to
``submitted/`` and graded with ``nbgrader autograde`` or ``python -m autograder grade``.
Run ``python scripts/release.py`` first when ``source/`` changed.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from autograder.examples import EDITIONS, STUDENTS, build_students, edition_students  # noqa: E402

EXAMPLES = ROOT / "examples" / "submissions"


def expected_files(root: Path = ROOT) -> dict[str, str]:
    """``{path relative to examples/submissions: text}`` that the examples must hold."""
    out = {}
    for assignment, suffix in EDITIONS.values():
        students = build_students(root / "source" / assignment, root / "release" / assignment, STUDENTS)
        out.update({f"{student}{suffix}/{assignment}/{name}": text
                    for student, files in students.items() for name, text in files.items()})
    return out


def committed_files(folder: Path = EXAMPLES) -> dict[str, str]:
    """The notebooks under ``folder`` (students' folders only, other files are not examples)."""
    return {
        p.relative_to(folder).as_posix(): p.read_text(encoding="utf-8")
        for assignment, _ in EDITIONS.values()
        for p in sorted(folder.glob(f"*/{assignment}/*.ipynb"))
    }


def out_of_sync(root: Path = ROOT, folder: Path = EXAMPLES) -> list[str]:
    """What differs between the examples and what ``source/`` and ``release/`` give (empty: in sync)."""
    expected, committed = expected_files(root), committed_files(folder)
    problems = []
    for name in sorted(set(expected) | set(committed)):
        if name not in committed:
            problems.append(f"missing: {name}")
        elif name not in expected:
            problems.append(f"extra (no such student or release notebook): {name}")
        elif expected[name] != committed[name]:
            problems.append(f"differs: {name}")
    return problems


def write(root: Path = ROOT, folder: Path = EXAMPLES) -> int:
    files = expected_files(root)
    for student in edition_students():
        shutil.rmtree(folder / student, ignore_errors=True)
    for name, text in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return len(files)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="compare with examples/submissions/ instead")
    args = parser.parse_args(argv)
    if args.check:
        problems = out_of_sync()
        if problems:
            print("examples/submissions is out of sync with source/ and release/:", file=sys.stderr)
            print("\n".join(problems), file=sys.stderr)
            print("run: python scripts/make_examples.py", file=sys.stderr)
            return 1
        print(f"examples/submissions is in sync ({len(expected_files())} notebooks)")
        return 0
    print(f"wrote {write()} notebooks to {EXAMPLES.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
