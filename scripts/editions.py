"""Build the course's language editions of the master notebooks (see ``exercises/editions.py``).

    python scripts/editions.py build              # source/self_attention_zh/ from source/ + i18n/zh/
    python scripts/editions.py build --check      # exit 1 when source/self_attention_zh/ is out of date
    python scripts/editions.py skeleton 01        # start i18n/zh/01_*.md (the master's text, to replace)

A lesson with no translation file yet is built from the master unchanged (English prose); the suite's
completeness test says which are missing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from exercises.editions import (  # noqa: E402
    MASTER_ASSIGNMENT,
    REPO,
    EditionError,
    Translation,
    assignment_for,
    build_edition,
    load_notebook,
    parse_translation,
    skeleton,
    translation_path,
)


def dumps(nb: dict) -> str:
    """nbformat's canonical layout: one-space indent, sorted keys, UTF-8 kept, trailing newline."""
    return json.dumps(nb, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


def built(lang: str, root: Path = ROOT) -> dict[str, str]:
    """File name -> text of every notebook of the ``lang`` edition of the course at ``root``."""
    out = {}
    for master in sorted((root / "source" / MASTER_ASSIGNMENT).glob("*.ipynb")):
        path = root / translation_path(lang, master.name).relative_to(REPO)  # i18n/<lang>/ of that course
        translation = parse_translation(path) if path.is_file() else Translation(path)
        out[master.name] = dumps(build_edition(load_notebook(master), translation, lang))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="write source/<assignment>_<lang>/ from the master and i18n/<lang>/")
    b.add_argument("--lang", default="zh")
    b.add_argument("--check", action="store_true", help="exit 1 when the edition on disk is out of date")
    s = sub.add_parser("skeleton", help="write i18n/<lang>/NN_*.md with the master's text, to translate")
    s.add_argument("lesson", help="the notebook's number, e.g. 01")
    s.add_argument("--lang", default="zh")
    args = parser.parse_args(argv)

    if args.command == "skeleton":
        [master] = sorted((ROOT / "source" / MASTER_ASSIGNMENT).glob(f"{args.lesson}_*.ipynb"))
        path = translation_path(args.lang, master.name)
        if path.exists():
            print(f"{path} exists; not overwritten", file=sys.stderr)
            return 1
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(skeleton(load_notebook(master), master.name), encoding="utf-8")
        print(f"wrote {path.relative_to(ROOT)}")
        return 0

    return build(args.lang, check=args.check)


def out_of_date(lang: str, root: Path = ROOT) -> tuple[dict[str, str], list[str], list[str]]:
    """The edition as built, the notebooks on disk that differ from it, and those it does not have.

    Raises ``EditionError`` when a translation does not fit its master."""
    notebooks = built(lang, root)
    target = root / "source" / assignment_for(lang)
    stale = [name for name, text in notebooks.items()
             if not (target / name).is_file() or (target / name).read_text(encoding="utf-8") != text]
    extra = sorted(p.name for p in target.glob("*.ipynb") if p.name not in notebooks) if target.is_dir() else []
    return notebooks, stale, extra


def build(lang: str = "zh", check: bool = False, root: Path = ROOT) -> int:
    """Write (or with ``check``, compare) ``source/<assignment>_<lang>/``; the exit status."""
    try:
        notebooks, stale, extra = out_of_date(lang, root)
    except EditionError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    target = root / "source" / assignment_for(lang)
    shown = target.relative_to(root)
    if check:
        for name in stale:
            print(f"out of date: {shown}/{name}", file=sys.stderr)
        for name in extra:
            print(f"not in the master: {shown}/{name}", file=sys.stderr)
        if stale or extra:
            print("run: python scripts/editions.py build", file=sys.stderr)
            return 1
        print(f"{shown} is in sync with source/{MASTER_ASSIGNMENT} and i18n/{lang}/ ({len(notebooks)} notebooks)")
        return 0
    target.mkdir(parents=True, exist_ok=True)
    for name in stale:
        (target / name).write_text(notebooks[name], encoding="utf-8")
    for name in extra:
        (target / name).unlink()
    print(f"{shown}: {len(stale)} written, {len(notebooks) - len(stale)} unchanged")
    return 0

if __name__ == "__main__":
    sys.exit(main())
