"""Make nbgrader's gradebook either fully migrated or refused, never half-migrated.

nbgrader 0.9.6 creates a gradebook in ``Gradebook.__init__`` (``nbgrader/api.py``): it first creates
every table (``Base.metadata.create_all``) and only then asks for the schema version by running the
``alembic`` *executable found on PATH* (``get_alembic_version``) and writes it into the
``alembic_version`` table. When ``alembic`` is not on PATH (JupyterLab started as
``.venv/bin/jupyter lab`` without activating the environment), the call fails with
``FileNotFoundError: 'alembic'`` *after* the tables exist, and every later request finds a database
with tables, takes it for an existing gradebook and never adds the version table: a gradebook whose
migrations are silently skipped.

:func:`install` (called from ``nbgrader_config.py``, so it runs in every nbgrader process: the
command line, the Formgrader, the Lab extensions) fixes both halves:

* the head revision is read in-process from nbgrader's own migration scripts with alembic's Python
  API, before any table is created, and ``nbgrader.api.get_alembic_version`` returns it: no
  subprocess, no PATH lookup;
* ``Gradebook.__init__`` refuses an SQLite gradebook that has tables but no ``alembic_version``
  table, with :class:`HalfMigratedGradebook` saying what happened and how to repair it
  (``python -m autograder.nbgrader.gradebook stamp gradebook.db``).
"""

from __future__ import annotations

import functools
import sqlite3
import sys
from pathlib import Path

__all__ = ["HalfMigratedGradebook", "alembic_head", "half_migrated", "install", "sqlite_path", "stamp"]


class HalfMigratedGradebook(RuntimeError):
    """A gradebook with nbgrader's tables but without its ``alembic_version`` table."""


@functools.lru_cache(maxsize=1)
def alembic_head() -> str:
    """The head revision of nbgrader's gradebook migrations, read in-process (no ``alembic`` on PATH)."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory
    from nbgrader.dbutil import ALEMBIC_DIR

    config = Config()
    config.set_main_option("script_location", ALEMBIC_DIR)
    head = ScriptDirectory.from_config(config).get_current_head()
    if not head:
        raise RuntimeError(f"nbgrader's migration scripts in {ALEMBIC_DIR} have no head revision")
    return head


def sqlite_path(db_url: str) -> Path | None:
    """The file of an ``sqlite:///PATH`` URL (``None`` for other databases and in-memory SQLite)."""
    prefix = "sqlite:///"
    if not db_url.startswith(prefix) or db_url[len(prefix):] in ("", ":memory:"):
        return None
    return Path(db_url[len(prefix):])


def _tables(path: Path) -> set[str]:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as con:
        return {row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def half_migrated(db_url: str) -> bool:
    """Does ``db_url`` name an existing SQLite gradebook with tables but no ``alembic_version`` table?"""
    path = sqlite_path(db_url)
    if path is None or not path.is_file() or path.stat().st_size == 0:
        return False
    tables = _tables(path)
    return bool(tables) and "alembic_version" not in tables


def stamp(path: Path, revision: str | None = None) -> str:
    """Add the ``alembic_version`` table to a half-migrated gradebook; return the revision written.

    Only right for a gradebook that nbgrader created with this version's ``create_all`` (its tables
    are then already at the head revision), which is how a half-migrated gradebook comes about.
    """
    path = Path(path)
    if not half_migrated(f"sqlite:///{path}"):
        raise ValueError(f"{path} is not a half-migrated gradebook (no tables, or alembic_version present)")
    revision = revision or alembic_head()
    with sqlite3.connect(path) as con:
        con.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)")
        con.execute("INSERT INTO alembic_version (version_num) VALUES (?)", (revision,))
    return revision


def install() -> None:
    """Patch nbgrader (once per process) as the module docstring says; raises if the head is unknown."""
    import nbgrader.api as api

    head = alembic_head()  # fails here, loudly, before any gradebook is touched
    api.get_alembic_version = lambda: head
    if getattr(api.Gradebook.__init__, "_selfattn_guard", False):
        return
    original = api.Gradebook.__init__

    @functools.wraps(original)
    def guarded_init(self, db_url, *args, **kwargs):
        if half_migrated(db_url):
            path = sqlite_path(db_url)
            raise HalfMigratedGradebook(
                f"the gradebook {path} has nbgrader's tables but no alembic_version table: it was "
                "created by an nbgrader that could not run `alembic` (not on PATH), and its "
                "migrations would be skipped silently. If it holds no grades yet, delete it and "
                "nbgrader creates a new one; otherwise repair it with: "
                f"{Path(sys.executable).name} -m autograder.nbgrader.gradebook stamp {path}"
            )
        original(self, db_url, *args, **kwargs)

    guarded_init._selfattn_guard = True
    api.Gradebook.__init__ = guarded_init


def main(argv: list[str] | None = None) -> int:
    """``python -m autograder.nbgrader.gradebook stamp PATH``: repair a half-migrated gradebook."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("command", choices=["stamp", "check"])
    parser.add_argument("path", type=Path)
    args = parser.parse_args(argv)
    if args.command == "check":
        bad = half_migrated(f"sqlite:///{args.path}")
        print(f"{args.path}: {'half-migrated (no alembic_version table)' if bad else 'ok'}")
        return 1 if bad else 0
    try:
        revision = stamp(args.path)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{args.path}: alembic_version set to {revision}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
