"""Grade a deterministic slice of a batch: ``--shard I/N`` (1-based, like pytest-split).

Which submissions shard I of N grades is decided from their *names relative to the batch* (a
student's folder name under the batch folder given on the command line; the file or folder's own
name when the argument is itself one submission), never from absolute paths: Slurm nodes or CI
runners that mount the batch at different places agree on the slices. The names are sorted and dealt
round-robin: shard I takes sorted names I-1, I-1+N, I-1+2N, ... Round-robin (not contiguous blocks)
keeps the shards' sizes within one of each other and spreads a run of similar names (late
resubmissions, a section prefix) over every shard.

Every report also records where each of its submissions stands in the whole batch (``batch`` in
the JSON report: the shard, the batch's size, each member's name and position), so that
``python -m autograder merge`` can put the shards back in the unsharded order and tell when one is
missing. ``course_version`` fingerprints the grader and the course it grades with: shards graded by
different code must not be merged.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from exercises.i18n import tr

SHARD = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")
REPO = Path(__file__).resolve().parent.parent
# What decides a grade: the grader, the course's checks and references, and the source notebooks.
FINGERPRINTED = ("autograder", "exercises", "solutions")


class ShardError(ValueError):
    """A shard that cannot be graded or merged; the message says why (the CLI exits 2)."""


@dataclass(frozen=True)
class Member:
    """One submission of a batch: where it is, its name relative to the batch, its place in the batch."""

    path: Path
    name: str
    position: int


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` as ``(I, N)`` with ``1 <= I <= N``; ``ShardError`` otherwise."""
    match = SHARD.match(text or "")
    if not match:
        raise ShardError(tr("--shard must read I/N (for example 2/5), not {text!r}").format(text=text))
    index, count = int(match.group(1)), int(match.group(2))
    if count < 1 or not 1 <= index <= count:
        raise ShardError(tr("--shard {text}: I must be between 1 and N (shards are numbered from 1), and N at least "
                            "1").format(text=text))
    return index, count


def batch_name(root: Path, path: Path) -> str:
    """The name of submission ``path`` relative to the command-line argument ``root`` it was found under:
    the student's folder name in a batch folder, the argument's own name when it is one submission."""
    return path.name if path == root else path.relative_to(root).as_posix()


def select(batch: list[Member], index: int, count: int) -> list[Member]:
    """Shard ``index`` of ``count`` (1-based): the members whose sorted name falls to it round-robin,
    kept in grading order."""
    names = sorted(m.name for m in batch)
    mine = set(names[index - 1::count])
    return [m for m in batch if m.name in mine]


SEED_NEEDED = ("--shard needs an explicit --seed: shards graded with different random inputs cannot be merged "
               "honestly (give every shard the same --seed N)")


def plan(manifest: dict, options: dict) -> tuple[list[Path], dict]:
    """The submissions this run grades from a grading manifest, and the ``batch`` record of its report.

    The manifest lists the whole batch (``submissions``, with their batch-relative ``names`` when the
    CLI wrote it; a hand-written one falls back on each path's own name); ``options["shard"]`` picks
    the slice. ``ShardError`` for a bad shard, a shard without a seed, or two submissions of one name.
    """
    paths = [Path(p) for p in manifest["submissions"]]
    names = manifest.get("names") or [p.name for p in paths]
    batch, seen = [], {}
    for position, (path, name) in enumerate(zip(paths, names, strict=True)):
        if name in seen:
            raise ShardError(tr("two submissions are both named {name!r} ({first} and {second}); shard one batch "
                                "folder at a time").format(name=name, first=seen[name], second=path))
        seen[name] = path
        batch.append(Member(path, name, position))
    shard = None
    mine = batch
    if options.get("shard"):
        if options.get("seed") is None:
            raise ShardError(tr(SEED_NEEDED))
        shard = parse_shard(options["shard"])
        mine = select(batch, *shard)
    source = Path(manifest["source"]) if manifest.get("source") else REPO / "source"
    return [m.path for m in mine], batch_record(batch, mine, shard, course_version(source))


def course_version(source_dir: Path | None) -> str:
    """The package's version and a digest of the code and notebooks that decide a grade.

    Two shards with different versions were graded by different graders (or courses): the merge refuses
    them. The digest covers the ``.py`` files of the grader and the course and the source notebooks.
    """
    try:
        version = metadata.version("self-attention-course")
    except metadata.PackageNotFoundError:
        version = "0+unknown"
    digest = hashlib.sha256()
    # Named relative to their top folder, so that two checkouts at different places agree.
    files = [(p.relative_to(REPO).as_posix(), p) for top in FINGERPRINTED for p in (REPO / top).rglob("*.py")]
    if source_dir is not None:
        files += [(f"source/{p.relative_to(source_dir).as_posix()}", p) for p in Path(source_dir).rglob("*.ipynb")]
    for name, path in sorted(files):
        if "__pycache__" in path.parts or ".ipynb_checkpoints" in path.parts:
            continue
        digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    return f"{version}+{digest.hexdigest()[:12]}"


def batch_record(batch: list[Member], mine: list[Member], shard: tuple[int, int] | None, version: str) -> dict:
    """The manifest's (then the JSON report's) ``batch``: what the merge needs to check and order shards."""
    return {
        "shard": {"index": shard[0], "count": shard[1]} if shard else None,
        "size": len(batch),
        "course_version": version,
        "members": [{"name": m.name, "path": str(m.path), "position": m.position} for m in mine],
    }
