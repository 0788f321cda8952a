#!/usr/bin/env bash
# The course's two commands; each sets itself up on a fresh machine (a .venv in this folder).
#
#   bash run.sh main   regenerate release/ from source/, grade the bundled example submissions,
#                      print their scores (reports in reports/)
#   bash run.sh test   run the whole test suite (CPU; GPU tests report "GPU not exercised")
#   bash run.sh lab    start JupyterLab in this folder, with the Formgrader and the Validate button; the
#                      student's notebooks are in workspace/self_attention/ and, in Chinese,
#                      workspace/self_attention_zh/ (filled from release/ once)
set -euo pipefail
cd "$(dirname "$0")"

PYTHON=${PYTHON:-python3}
VENV=.venv

setup() {
  if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "error: Python >= 3.11 is required (nbgrader 0.9.6); set PYTHON=/path/to/python3.11" >&2
    exit 2
  fi
  local stamp="$VENV/.installed-$(sha256sum pyproject.toml | cut -c1-16)"
  if [ ! -f "$stamp" ]; then
    echo "== setting up $VENV (one time)"
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    "$VENV/bin/python" -m pip install --quiet -e ".[dev]"
    # the python3 kernel nbgrader runs notebooks in: this environment's, which has the course installed
    "$VENV/bin/python" -m ipykernel install --sys-prefix --name python3 >/dev/null
    rm -f "$VENV"/.installed-*
    touch "$stamp"
  fi
  if ! command -v bwrap >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      echo "== installing bubblewrap (full isolation of student code)"
      (apt-get install -y -qq bubblewrap >/dev/null 2>&1 || { apt-get update -qq >/dev/null 2>&1 &&
        apt-get install -y -qq bubblewrap >/dev/null 2>&1; }) ||
        echo "   could not install bubblewrap: grading runs with reduced isolation (the report says so)"
    else
      echo "   note: bubblewrap is not installed; grading runs with reduced isolation (the report says so)"
    fi
  fi
  # a CJK font for the Chinese edition's figures (matplotlib falls back to it glyph by glyph; given_cjk_font)
  # (find's status is ignored: a font folder that does not exist is no error here)
  if [ -z "$(find /usr/share/fonts /usr/local/share/fonts "$HOME/.local/share/fonts" "$HOME/.fonts" \
      -iname '*NotoSansCJK*' -print -quit 2>/dev/null || true)" ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      echo "== installing fonts-noto-cjk (Chinese labels in the figures)"
      if (apt-get install -y -qq fonts-noto-cjk >/dev/null 2>&1 || { apt-get update -qq >/dev/null 2>&1 &&
          apt-get install -y -qq fonts-noto-cjk >/dev/null 2>&1; }); then
        # matplotlib caches its font list once; a font installed later is unknown to it until the cache goes
        rm -f "$("$VENV/bin/python" -c 'import matplotlib; print(matplotlib.get_cachedir())')"/fontlist-v*.json
      else
        echo "   could not install fonts-noto-cjk: Chinese labels in figures show as empty boxes"
      fi
    else
      echo "   note: no Noto Sans CJK font; Chinese labels in figures show as empty boxes" \
        "(install fonts-noto-cjk, or any CJK font listed in the lessons' given_cjk_font cell)"
    fi
  fi
  export PATH="$PWD/$VENV/bin:$PATH"
}

case "${1:-}" in
  main)
    setup
    echo "== regenerating release/ from source/ with nbgrader (both editions: self_attention, self_attention_zh)"
    python scripts/release.py
    echo "== grading the example submissions in examples/submissions/"
    mkdir -p reports
    python -m autograder grade examples/submissions --json reports/examples.json --csv reports/grades.csv \
      --junit reports/junit.xml -q
    echo "== grading ran (the 'failed' count above counts the graded items the example students lost: 'empty' is the"
    echo "   unanswered release, 'one_wrong' has one wrong answer; each also in the Chinese edition, '_zh'; both"
    echo "   editions score the same); reports: reports/examples.json, reports/grades.csv, reports/junit.xml"
    ;;
  test)
    setup
    shift
    # Whole test files spread over parallel pytest processes (pytest-xdist), one per core up to four: the
    # suite waits on graders' workers, nbgrader and a browser as much as it computes. Arguments of your own
    # choose otherwise: `-n 0` runs it in this one process, `-n 3` in three.
    parallel=(-n "$(jobs=$(nproc 2>/dev/null || echo 1); echo $((jobs > 4 ? 4 : jobs)))" --dist loadfile)
    previous=""
    for arg in "$@"; do
      case "$arg" in
        -n|-n*|--numprocesses|--numprocesses=*|-pno:xdist) parallel=() ;;
        no:xdist) if [ "$previous" = "-p" ]; then parallel=(); fi ;;
      esac
      previous=$arg
    done
    python -m pytest ${parallel[@]+"${parallel[@]}"} "$@"
    ;;
  lab)
    # JupyterLab in the course root (nbgrader reads nbgrader_config.py from here); extra arguments go
    # to `jupyter lab`, e.g. bash run.sh lab --no-browser --port 8888
    setup
    shift
    # the student works in workspace/self_attention/, a copy filled from release/ (missing files only):
    # no instructor command (Generate, run.sh main, scripts/release.py) writes there
    python scripts/workspace.py
    # jupyter refuses to run as root without --allow-root (Docker images, course VMs)
    if [ "$(id -u)" = 0 ]; then set -- --allow-root "$@"; fi
    exec jupyter lab "$@"
    ;;
  gpu-check)
    # For a GPU machine with torch, numpy, pytest and safetensors but no package index (and maybe no
    # bubblewrap): no .venv, nothing downloaded. The course goes into a venv that sees the machine's
    # packages (torch included), installed with --no-deps; wheels carried in wheels/ (or
    # SELFATTN_WHEELS=DIR) are installed offline first, e.g. nbformat's. Then scripts/gpu_check.py
    # runs the needs_cuda tests and grades the examples on cpu and cuda; it exits non-zero without a GPU.
    shift
    GPY=${PYTHON:-python3}
    if ! "$GPY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      echo "error: Python >= 3.11 is required; set PYTHON=/path/to/python3" >&2
      exit 2
    fi
    if ! "$GPY" -c 'import sys; sys.exit(sys.prefix == sys.base_prefix)'; then  # not a venv: make one
      GPU_VENV=build/venv-gpu
      if [ ! -x "$GPU_VENV/bin/python" ]; then
        echo "== creating $GPU_VENV (--system-site-packages: the machine's torch is used as it is)"
        mkdir -p build
        "$GPY" -m venv --system-site-packages "$GPU_VENV" 2>/dev/null ||
          "$GPY" -m venv --system-site-packages --without-pip "$GPU_VENV" ||
          { echo "error: could not create $GPU_VENV; run: PYTHON=/path/to/venv/python bash run.sh gpu-check" >&2; exit 2; }
      fi
      GPY=$PWD/$GPU_VENV/bin/python
    fi
    WHEELS=${SELFATTN_WHEELS:-wheels}
    if [ -d "$WHEELS" ] && ! "$GPY" -c 'import nbformat' 2>/dev/null; then
      echo "== installing nbformat from $WHEELS/ (offline)"
      "$GPY" -m pip install --quiet --no-index --find-links "$WHEELS" nbformat ||
        echo "   could not install nbformat from $WHEELS/ (the check below says what is missing)"
    fi
    # -I: not the source tree's own self_attention_course.egg-info, which would pass for an installation
    if ! "$GPY" -I -c 'import importlib.metadata as m; m.distribution("self-attention-course")' 2>/dev/null; then
      echo "== installing the course with --no-deps (offline)"
      mkdir -p build
      "$GPY" -m pip install --quiet --no-deps --no-build-isolation --no-index . >build/gpu-check-pip.log 2>&1 ||
        echo "   could not install it (pip, setuptools>=70.1 or wheel missing? see build/gpu-check-pip.log):" \
          "running from the source tree instead"
    fi
    exec "$GPY" scripts/gpu_check.py "$@"
    ;;
  *)
    echo "usage: bash run.sh main | bash run.sh test [pytest args] | bash run.sh lab [jupyter lab args]" >&2
    exit 2
    ;;
esac
