#!/usr/bin/env bash
# Gradescope runs this once, as root, in /autograder/source, when it builds the autograder image
# (Ubuntu 22.04 or 24.04 base image). It installs Python 3.11+ and the grader's dependencies
# (requirements.txt, written from pyproject.toml by scripts/gradescope_bundle.py) into a virtual
# environment that every user can read: the grader runs student code as `nobody` when bubblewrap
# cannot be used (Gradescope's containers usually refuse it), and `nobody` must import torch.
# The course itself is NOT pip-installed: an installed copy would put `solutions` in site-packages.
#
# SELFATTN_SETUP_SKIP_INSTALL=1 skips apt and pip and runs only the final checks, with
# SELFATTN_PYTHON (default: the venv's python): how the course's tests exercise this script.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="${SELFATTN_VENV:-/opt/selfattn/venv}"
TORCH_INDEX="https://download.pytorch.org/whl/cpu"

python_is_new_enough() {
    "$1" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null
}

if [ "${SELFATTN_SETUP_SKIP_INSTALL:-0}" != 1 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    # bubblewrap: used where the container allows namespaces; harmless where it does not.
    apt-get install -y --no-install-recommends ca-certificates bubblewrap
    PY=""
    for candidate in python3.13 python3.12 python3.11 python3; do
        if command -v "$candidate" >/dev/null 2>&1 && python_is_new_enough "$candidate"; then
            PY="$(command -v "$candidate")"
            break
        fi
    done
    if [ -z "$PY" ]; then
        # Ubuntu 22.04's python3 is 3.10; its universe component carries python3.11.
        apt-get install -y --no-install-recommends python3.11 python3.11-venv
        PY="$(command -v python3.11)"
    else
        apt-get install -y --no-install-recommends "$(basename "$PY")-venv" \
            || apt-get install -y --no-install-recommends python3-venv
    fi
    "$PY" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --upgrade pip
    # torch first, from the CPU index (the PyPI wheel pulls several GB of CUDA libraries), then the rest.
    "$VENV/bin/python" -m pip install --index-url "$TORCH_INDEX" "$(grep -E '^torch([<>=!~ ]|$)' "$HERE/requirements.txt")"
    "$VENV/bin/python" -m pip install -r "$HERE/requirements.txt"
    chmod -R a+rX "$VENV"
fi

PYTHON="${SELFATTN_PYTHON:-$VENV/bin/python}"
cd "$HERE"
# Fail the image build now, not at the first student: the dependencies import, the course's files
# are here, and student code can be kept away from them (bubblewrap, or running it as nobody).
PYTHONPATH="$HERE" "$PYTHON" - <<'PY'
import sys

import matplotlib, nbformat, numpy, pytest, safetensors, torch  # noqa: F401,E401

from autograder import sandbox
from exercises.catalogue import NOTEBOOKS
from exercises.source import find_source_dir

print(f"python {sys.version.split()[0]}, torch {torch.__version__}, course files in {find_source_dir(None, NOTEBOOKS)}")
bwrap = sandbox.bubblewrap()
if not (bwrap or sandbox.can_drop_privileges(bwrap)):
    sys.exit("setup.sh: student code could not be kept away from the solutions here: bubblewrap does not work "
             "and the grader's Python is not readable by `nobody` (or this is not root)")
print("isolation: " + ("bubblewrap" if bwrap else "worker runs as nobody (no bubblewrap)"))
PY
echo "setup.sh: ready"
