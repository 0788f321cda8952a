"""What the grader needs installed, read from ``pyproject.toml`` (its ``[project] dependencies``).

``python delivery/requirements.py [PYPROJECT]`` prints one requirement a line (pip's
``-r`` format). The Gradescope bundle and the GitHub Classroom workflow both install from it, so the
course's dependency list stays in one place. The course itself is never pip-installed for grading:
an installed copy would put ``solutions`` in site-packages, where student code could import it.
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def requirements(pyproject: Path = PYPROJECT) -> list[str]:
    """The ``[project] dependencies`` of ``pyproject`` (torch, numpy, safetensors, ...), as written there."""
    with pyproject.open("rb") as fh:
        return list(tomllib.load(fh)["project"]["dependencies"])


if __name__ == "__main__":
    print("\n".join(requirements(Path(sys.argv[1]) if len(sys.argv) > 1 else PYPROJECT)))
