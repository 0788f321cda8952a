"""The grader's options, defined once: the CLI's flags and the pytest plugin's are generated from here.

``python -m autograder grade --call-timeout 5`` and ``pytest --selfattn-call-timeout=5`` are the same
option. The CLI writes the values it parsed into the grading manifest (``"options"``), so a run is
described whole by its manifest; the plugin reads them from there, over its own command line.
Also here: the two names both front ends share (the manifest's suffix, the session's stash key),
so that neither imports the other.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

MANIFEST_SUFFIX = ".selfattn.json"
SESSION_KEY = pytest.StashKey["object"]()
PLUGIN_PREFIX = "selfattn-"


@dataclass(frozen=True)
class Option:
    """One option: ``--NAME`` on the CLI, ``--selfattn-NAME`` in pytest, ``NAME`` with dashes as underscores in code."""

    name: str
    help: str
    type: Any = None  # None: a flag
    default: Any = None
    choices: tuple[str, ...] | None = None
    repeat: bool = False  # may be given several times (a list)
    metavar: str | None = None

    @property
    def dest(self) -> str:
        return self.name.replace("-", "_")

    def _kwargs(self) -> dict[str, Any]:
        if self.type is None:
            return {"action": "store_true", "help": self.help}
        kwargs: dict[str, Any] = {"help": self.help, "default": self.default, "metavar": self.metavar}
        if self.repeat:
            kwargs["action"] = "append"
        if self.choices:
            kwargs["choices"] = list(self.choices)
            kwargs.pop("metavar")
        kwargs["type"] = str if self.type is Path else self.type  # paths travel as text (JSON, pytest)
        return kwargs


OPTIONS: tuple[Option, ...] = (
    Option("json", "write the spec's JSON report here", Path, metavar="PATH"),
    Option("gradescope", "write Gradescope's results.json here (a batch: results-<student>.json beside it)", Path,
           metavar="PATH"),
    Option("csv", "write a CSV of grades, one row per submission", Path, metavar="PATH"),
    Option("seed", "seed of the random inputs (default: a fresh one each run, reported)", int, metavar="N"),
    Option("call-timeout", "seconds per graded call (default 30)", float, 30.0, metavar="S"),
    Option("cell-timeout", "seconds per notebook cell (default 60)", float, 60.0, metavar="S"),
    Option("memory-mib", "worker memory limit on CPU, MiB (default 6144)", int, 6144, metavar="M"),
    Option("device", "grade on this device only (repeatable; default: every device present)", str,
           choices=("cpu", "cuda"), repeat=True),
    Option("no-bwrap", "do not use bubblewrap even where it works (reduced isolation, reported)"),
    Option("no-canary", "skip the self-check that first grades the reference solutions through the worker"),
    Option("shard", "grade only shard I of N of the batch (1-based; the slice is decided from the submissions' "
           "names, sorted, round-robin); needs --seed; merge the shards with `python -m autograder merge`", str,
           metavar="I/N"),
    Option("jobs", "notebooks graded at once, each in its own worker (default: the CPU count)", int,
           metavar="N"),
    Option("all-cells", "run every given cell, the lesson's demos and plots too, not only those the graded code "
           "needs (slower; the same scores)"),
    Option("cold-workers", "start every worker as a fresh process instead of forking it from a warm one that has "
           "imported torch (slower; the same limits and isolation)"),
    Option("lang", "language of the messages: auto (default: each notebook in its edition's language, "
           "metadata.course.edition or a self_attention_zh folder; the run's own lines in English), or en / zh for "
           "every message and the run's own lines", str, "auto", choices=("auto", "en", "zh")),
)
BY_DEST = {option.dest: option for option in OPTIONS}


def add_cli_options(parser: argparse.ArgumentParser) -> None:
    """The options as ``--NAME`` flags of an argparse (sub)parser."""
    for option in OPTIONS:
        parser.add_argument(f"--{option.name}", dest=option.dest, **option._kwargs())


def add_plugin_options(group: Any) -> None:
    """The options as ``--selfattn-NAME`` flags of a pytest option group."""
    for option in OPTIONS:
        group.addoption(f"--{PLUGIN_PREFIX}{option.name}", dest=f"selfattn_{option.dest}", **option._kwargs())


def from_cli(args: argparse.Namespace) -> dict[str, Any]:
    """The values the CLI parsed, for the manifest: paths made absolute (the grader runs elsewhere)."""
    values = {}
    for option in OPTIONS:
        value = getattr(args, option.dest)
        if option.type is Path and value is not None:
            value = str(Path(value).resolve())
        values[option.dest] = value
    return values


def resolve(config: pytest.Config, manifest: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every option's value for this run: the manifest's where it names one, else pytest's command line."""
    values = {option.dest: config.getoption(f"selfattn_{option.dest}") for option in OPTIONS}
    for dest, value in ((manifest or {}).get("options") or {}).items():
        if dest not in BY_DEST:
            raise pytest.UsageError(f"unknown grading option in the manifest: {dest!r}")
        values[dest] = value
    return values
