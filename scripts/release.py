"""Regenerate ``release/`` from ``source/`` with the real nbgrader, reproducibly, for both editions.

    python scripts/release.py            # build source/self_attention_zh/, rewrite both releases
    python scripts/release.py --check    # exit 1, with a summary, when either is out of sync

The course has one master per lesson (``source/self_attention/``, English) and a Chinese edition built
from it and ``i18n/zh/`` (``scripts/editions.py``); each is an nbgrader assignment of its own
(:data:`ASSIGNMENTS`: ``self_attention`` and ``self_attention_zh``, the same notebook names). The default
mode first writes ``source/self_attention_zh/`` (``scripts/editions.py build``); ``--check`` instead
checks that it is up to date (``scripts/editions.py build --check``), then both releases.

Both modes run ``nbgrader generate_assignment <assignment> --force`` in a *temporary* copy of the
course (``nbgrader_config.py`` and ``source/``), so the course's own gradebook is never touched,
and then check that nbgrader really wrote one release notebook per source notebook (its exit status
alone is not trusted).

What nbgrader makes volatile, found by regenerating twice (also from notebooks without cell ids):
nothing. Cell checksums are md5 sums of the cell's source and nbgrader metadata
(``nbgrader/utils.py: compute_checksum``), cell ids are copied from the source, and
``ClearOutput`` empties outputs. The release is nevertheless normalised, and the comparison
normalises both sides, so a ``release/`` written by a plain ``nbgrader generate_assignment`` run
also counts as in sync: code cells lose outputs and execution counts, the notebook metadata that
JupyterLab rewrites when it opens a notebook (``language_info``, the kernel's display name) takes one
fixed form, so opening and saving a notebook in the Lab changes nothing here, and the file is written in
nbformat's canonical layout (one-space indent, sorted keys, trailing newline). Other files that
nbgrader copies from ``source/self_attention/`` are compared byte for byte.

After nbgrader, ``scripts/figures.py`` draws the figures of a few given cells (pictures before
running) into the release as markdown cells with PNG attachments, each edition from its own source
(so the Chinese release's pictures carry the Chinese labels its translated strings give them); the
check compares where they are and which code drew them, not their pixels (see :func:`comparable`).

nbgrader's gradebook runs the ``alembic`` executable from ``PATH`` when it creates a database
(``nbgrader/api.py: get_alembic_version``); :func:`nbgrader_env` puts this interpreter's ``bin``
directory first on ``PATH`` so that works from an environment that is not activated.
"""

from __future__ import annotations

import argparse
import difflib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from exercises.editions import LANGUAGES, MASTER_ASSIGNMENT, assignment_for  # noqa: E402

ASSIGNMENT = MASTER_ASSIGNMENT  # the master's assignment (English)
#: every edition's nbgrader assignment, the master's first
ASSIGNMENTS = tuple(assignment_for(lang) for lang in LANGUAGES)
CONFIG = "nbgrader_config.py"


def nbgrader_env() -> dict[str, str]:
    """The environment for an nbgrader subprocess: this interpreter's ``bin`` first on ``PATH``."""
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    return env


def run_nbgrader(args: list[str], course_root: Path, timeout: float = 1800) -> subprocess.CompletedProcess:
    """Run ``python -m nbgrader ARGS`` with ``cwd = course_root``; the output is captured."""
    return subprocess.run(
        [sys.executable, "-m", "nbgrader", *args],
        cwd=course_root,
        env=nbgrader_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


#: A line for a course copy's nbgrader_config.py that puts back nbgrader's stock autograde chain (Execute: the
#: student's kernel) in place of the course's sandboxed one: the benchmark's baseline, the tests' control.
STOCK_AUTOGRADE = ("from nbgrader.converters import Autograde as _Autograde; c.Autograde.autograde_preprocessors = "
                   "_Autograde.class_traits()['autograde_preprocessors'].default()")


def prepare_course(dest: Path, root: Path = ROOT) -> Path:
    """Copy ``nbgrader_config.py`` and ``source/`` of ``root`` to the new course root ``dest``."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy2(root / CONFIG, dest / CONFIG)
    shutil.copytree(
        root / "source", dest / "source", ignore=shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__")
    )
    return dest


def generate_assignment(course_root: Path, assignment: str = ASSIGNMENT) -> Path:
    """Run ``nbgrader generate_assignment`` in ``course_root``; return its ``release/<assignment>``.

    Raises ``RuntimeError`` (with nbgrader's output) unless every source notebook has a release
    notebook that nbformat can read and that contains no solution or hidden-test delimiter.
    """
    course_root = Path(course_root)
    proc = run_nbgrader(["generate_assignment", assignment, "--force"], course_root)
    source = course_root / "source" / assignment
    release = course_root / "release" / assignment
    problems = []
    notebooks = sorted(p.name for p in source.glob("*.ipynb"))
    if not notebooks:
        problems.append(f"no notebooks in {source}")
    for name in notebooks:
        path = release / name
        if not path.is_file():
            problems.append(f"nbgrader wrote no {path.relative_to(course_root)}")
            continue
        try:
            nb = nbformat.read(path, as_version=4)
        except Exception as exc:  # noqa: BLE001 - reported with nbgrader's log below
            problems.append(f"{path.name} is not a readable notebook: {exc}")
            continue
        text = "\n".join(cell.source for cell in nb.cells)
        for marker in ("BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN TESTS", "END HIDDEN TESTS"):
            if marker in text:
                problems.append(f"{path.name} still contains {marker!r}")
    if problems or proc.returncode != 0:
        raise RuntimeError(
            f"nbgrader generate_assignment (exit status {proc.returncode}) failed:\n  "
            + "\n  ".join(problems or ["non-zero exit status"])
            + "\n--- nbgrader output ---\n"
            + proc.stdout[-4000:]
            + proc.stderr[-8000:]
        )
    return release


# Notebook metadata that JupyterLab rewrites when a kernel starts: it fills in ``language_info`` from the
# kernel (the Python version included) and renames the kernel to its spec's display name ("Python 3
# (ipykernel)"). Neither is course content, so the release keeps a fixed form of both.
KERNEL_DISPLAY_NAMES = {"python3": "Python 3"}


def normalise_metadata(nb: nbformat.NotebookNode) -> None:
    """Give ``nb`` the fixed ``language_info`` (its name only) and kernel display name of the release."""
    meta = nb.metadata
    if "language_info" in meta:
        meta["language_info"] = {"name": meta["language_info"].get("name", "python")}
    kernelspec = meta.get("kernelspec")
    if kernelspec and kernelspec.get("name") in KERNEL_DISPLAY_NAMES:
        kernelspec["display_name"] = KERNEL_DISPLAY_NAMES[kernelspec["name"]]


def normalise_notebook(text: str) -> str:
    """A release notebook's text without what may vary: outputs and execution counts, the metadata
    JupyterLab rewrites on opening (:func:`normalise_metadata`), layout."""
    nb = nbformat.reads(text, as_version=4)
    normalise_metadata(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
    out = nbformat.writes(nb)
    return out if out.endswith("\n") else out + "\n"


def read_release(folder: Path) -> dict[str, bytes]:
    """``{relative path: normalised content}`` of every file under ``folder``."""
    folder = Path(folder)
    files: dict[str, bytes] = {}
    if not folder.is_dir():
        return files
    for path in sorted(folder.rglob("*")):
        if not path.is_file() or ".ipynb_checkpoints" in path.parts or "__pycache__" in path.parts:
            continue
        data = path.read_bytes()
        if path.suffix == ".ipynb":
            data = normalise_notebook(data.decode("utf-8")).encode("utf-8")
        files[path.relative_to(folder).as_posix()] = data
    return files


def _script(name: str):
    """``scripts/<name>.py``, loaded beside this file (scripts are no package)."""
    spec = importlib.util.spec_from_file_location(f"_selfattn_{name}", Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def figures_script():
    """``scripts/figures.py`` (pictures before running)."""
    return _script("figures")


def editions_script():
    """``scripts/editions.py`` (the Chinese edition's source, built from the master and ``i18n/zh/``)."""
    return _script("editions")


def regenerate(root: Path = ROOT, assignment: str = ASSIGNMENT) -> dict[str, bytes]:
    """The normalised release of ``root``'s ``source/<assignment>``, generated in a temporary course root,
    with the figures of ``scripts/figures.py`` drawn into it from that assignment's own source."""
    with tempfile.TemporaryDirectory(prefix="selfattn-release-") as tmp:
        course = prepare_course(Path(tmp) / "course", root)
        release = generate_assignment(course, assignment)
        figures_script().add_figures_to_release(release, course / "source" / assignment)
        return read_release(release)


def comparable(files: dict[str, bytes]) -> dict[str, bytes]:
    """``read_release`` output with each figure's PNG replaced by a placeholder, for comparison.

    A figure cell records the SHA-256 of the code that drew it; that, its place and its text are
    compared. The pixels are not: another matplotlib or FreeType draws the same figure with other
    bytes, which is no change to the lesson. (``tests/test_figures.py`` redraws them and compares the
    images approximately.)
    """
    mark = figures_script().MARK
    out = {}
    for name, data in files.items():
        if name.endswith(".ipynb") and mark.encode() in data:
            nb = json.loads(data)
            for cell in nb["cells"]:
                if mark in cell.get("metadata", {}):
                    cell["attachments"] = {k: {"image/png": "(drawn by scripts/figures.py)"}
                                           for k in cell.get("attachments", {})}
            data = json.dumps(nb, indent=1, sort_keys=True).encode()
        out[name] = data
    return out


def compare(expected: dict[str, bytes], actual: dict[str, bytes], max_lines: int = 40) -> list[str]:
    """Differences between two ``read_release`` results, as readable lines (empty: in sync)."""
    lines: list[str] = []
    for name in sorted(set(expected) | set(actual)):
        if name not in actual:
            lines.append(f"missing from the committed release: {name}")
        elif name not in expected:
            lines.append(f"in the committed release but not generated from source: {name}")
        elif expected[name] != actual[name]:
            lines.append(f"differs: {name}")
            try:
                diff = difflib.unified_diff(
                    actual[name].decode().splitlines(),
                    expected[name].decode().splitlines(),
                    f"committed/{name}",
                    f"generated/{name}",
                    lineterm="",
                    n=1,
                )
                shown = list(diff)
            except UnicodeDecodeError:
                shown = ["(binary file)"]
            lines += ["    " + x for x in shown[:max_lines]]
            if len(shown) > max_lines:
                lines.append(f"    ... {len(shown) - max_lines} more diff lines")
    return lines


def write_release(files: dict[str, bytes], folder: Path) -> None:
    """Make ``folder`` hold exactly ``files``."""
    folder = Path(folder)
    if folder.exists():
        shutil.rmtree(folder)
    for name, data in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="compare with the committed release/ instead")
    parser.add_argument("--root", type=Path, default=ROOT, help="course root (default: this repository)")
    args = parser.parse_args(argv)
    root = args.root.resolve()
    editions = editions_script()
    status = 0
    for lang in LANGUAGES[1:]:  # each edition's source first: its release is generated from it
        built = editions.build(lang, check=args.check, root=root)
        if built and not args.check:
            return 2  # a translation that does not fit its master: nothing released (the error says which)
        status = max(status, built)
    for assignment in ASSIGNMENTS:
        committed = root / "release" / assignment
        try:
            generated = regenerate(root, assignment)
        except RuntimeError as exc:
            print(exc, file=sys.stderr)
            return 2
        if args.check:
            problems = compare(comparable(generated), comparable(read_release(committed)))
            if problems:
                print(f"release/{assignment} is out of sync with source/{assignment}:", file=sys.stderr)
                print("\n".join(problems), file=sys.stderr)
                print("run: python scripts/release.py", file=sys.stderr)
                status = 1
            else:
                print(f"release/{assignment} is in sync with source/{assignment} ({len(generated)} files)")
            continue
        write_release(generated, committed)
        print(f"wrote {len(generated)} files to {committed.relative_to(root)}")
    return status

if __name__ == "__main__":
    sys.exit(main())
