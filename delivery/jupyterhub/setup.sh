#!/usr/bin/env bash
# The course on a JupyterHub with real Unix users, the way courses deploy nbgrader (README, "JupyterHub").
# Root only; idempotent (run it again after a `git pull`: it refreshes the course's code, never the
# instructor's gradebook, submissions or feedback).
#
#   sudo bash delivery/jupyterhub/setup.sh            # = install + course
#   sudo bash delivery/jupyterhub/setup.sh install    # the software (needs PyPI and npm, once)
#   sudo bash delivery/jupyterhub/setup.sh course     # users, group, exchange, course root (offline)
#   sudo bash delivery/jupyterhub/setup.sh remove     # userdel -r the course's users, drop exchange and config
#   sudo bash delivery/jupyterhub/setup.sh start      # run the Hub in the foreground on 127.0.0.1:8000
#
# What it makes (every path and name can be changed with the variables below):
#   /opt/selfattn-hub/venv        one Python environment for the Hub and every user's server: jupyterhub,
#                                 JupyterLab, nbgrader, torch; NOT the course's packages (students must
#                                 not be able to `import solutions`): the instructor's nbgrader finds the
#                                 course's code through the course root's nbgrader_config.py
#   /opt/selfattn-hub/proxy       configurable-http-proxy (npm)
#   group selfattn                the course's members; users instructor, alice, bob (useradd -m)
#   /srv/nbgrader/exchange        nbgrader's shared exchange: root-owned, 1777 (world-writable, sticky)
#   /etc/jupyter/nbgrader_config.py   every user's nbgrader: the exchange and the course id
#   /etc/profile.d/selfattn-hub.sh    login shells (`su - alice`) find the shared environment's tools
#   ~instructor/self-attention    the course root (source/, solutions/, exercises/, gradebook.db), owned by
#                                 the instructor, mode 0700; ~instructor/.jupyter/nbgrader_config.py points
#                                 the instructor's Formgrader at it
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
COURSE_SRC=${SELFATTN_COURSE_SRC:-$(cd "$HERE/../.." && pwd)}
PREFIX=${SELFATTN_HUB_PREFIX:-/opt/selfattn-hub}
EXCHANGE=${SELFATTN_HUB_EXCHANGE:-/srv/nbgrader/exchange}
ETC_JUPYTER=${SELFATTN_HUB_ETC:-/etc/jupyter}
GROUP=${SELFATTN_HUB_GROUP:-selfattn}
INSTRUCTOR=${SELFATTN_HUB_INSTRUCTOR:-instructor}
STUDENTS=${SELFATTN_HUB_STUDENTS:-alice bob}
COURSE_ID=self-attention
COURSE_DIR_NAME=self-attention
# every user runs this Python (their servers and kernels): a system one, not one under root's home (pyenv)
PYTHON=${PYTHON:-$( [ -x /usr/bin/python3 ] && echo /usr/bin/python3 || echo python3 )}
MARKER="# written by delivery/jupyterhub/setup.sh"

die() { echo "error: $*" >&2; exit 2; }
[ "$(id -u)" = 0 ] || die "run as root (it creates Unix users and the shared exchange)"

install_software() {
  if ! command -v npm >/dev/null 2>&1; then
    echo "== installing node and npm (apt-get)"
    apt-get install -y -qq nodejs npm >/dev/null 2>&1 ||
      { apt-get update -qq >/dev/null && apt-get install -y -qq nodejs npm >/dev/null; }
  fi
  "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
    die "Python >= 3.11 is required; set PYTHON=/path/to/python3.11"
  local stamp="$PREFIX/venv/.installed-$(sha256sum "$COURSE_SRC/pyproject.toml" "$HERE/requirements.txt" | sha256sum | cut -c1-16)"
  if [ -f "$stamp" ] && ! runuser -u nobody -- "$PREFIX/venv/bin/python" -c pass 2>/dev/null; then
    rm -f "$stamp"  # an environment that other users cannot run (its Python lies under root's home)
  fi
  if [ ! -f "$stamp" ]; then
    echo "== $PREFIX/venv: jupyterhub, JupyterLab, nbgrader and the course's dependencies"
    mkdir -p "$PREFIX"
    rm -rf "$PREFIX/venv"
    "$PYTHON" -m venv "$PREFIX/venv"
    runuser -u nobody -- "$PREFIX/venv/bin/python" -c pass ||
      die "$PYTHON cannot be run by other users (is it under /root?); set PYTHON to a system python3 >= 3.11"
    "$PREFIX/venv/bin/python" -m pip install --quiet --upgrade pip
    "$PREFIX/venv/bin/python" -m pip install --quiet -r "$HERE/requirements.txt"
    # the python3 kernel every user's notebooks run in: this environment's
    "$PREFIX/venv/bin/python" -m ipykernel install --sys-prefix --name python3 >/dev/null
    rm -f "$PREFIX"/venv/.installed-*
    touch "$stamp"
  fi
  # nbgrader's documentation for a shared server: students get the Assignment List and Validate, not the
  # Formgrader, the course list or the assignment creator; the instructor turns them on (deploy_course)
  local ext
  for ext in formgrader create-assignment course-list; do
    "$PREFIX/venv/bin/jupyter" labextension disable --level=sys_prefix "@jupyter/nbgrader:$ext" >/dev/null 2>&1
    # JupyterLab >= 4.1 may lock a disabled plugin at this level, which would also keep it from the instructor
    "$PREFIX/venv/bin/jupyter" labextension unlock --level=sys_prefix "@jupyter/nbgrader:$ext" >/dev/null 2>&1
  done
  for ext in formgrader course_list; do
    "$PREFIX/venv/bin/jupyter" server extension disable --sys-prefix "nbgrader.server_extensions.$ext" >/dev/null 2>&1
  done
  # a course server is often offline: JupyterLab asks no one whether to fetch Jupyter's news
  mkdir -p "$PREFIX/venv/share/jupyter/lab/settings"
  cat >"$PREFIX/venv/share/jupyter/lab/settings/overrides.json" <<EOF
{"@jupyterlab/apputils-extension:notification": {"fetchNews": "false", "checkForUpdates": false}}
EOF
  if [ ! -x "$PREFIX/proxy/node_modules/.bin/configurable-http-proxy" ]; then
    echo "== $PREFIX/proxy: configurable-http-proxy (npm)"
    mkdir -p "$PREFIX/proxy"
    npm install --silent --no-audit --no-fund --prefix "$PREFIX/proxy" configurable-http-proxy@4 >/dev/null
  fi
  chmod -R go+rX,go-w "$PREFIX"
  echo "== software ready in $PREFIX"
}

make_users() {
  getent group "$GROUP" >/dev/null || groupadd "$GROUP"
  local user
  for user in "$INSTRUCTOR" $STUDENTS; do
    if ! id "$user" >/dev/null 2>&1; then
      useradd --create-home --shell /bin/bash --user-group -G "$GROUP" "$user"
    fi
    usermod -a -G "$GROUP" "$user"
    chmod 0700 "$(getent passwd "$user" | cut -d: -f6)"  # no user reads another's home
  done
}

make_exchange() {
  # nbgrader's documentation: one exchange everyone can write, sticky so no one removes another's
  # files; nbgrader itself makes <course>/inbound write-only (0733) for students on the first release
  mkdir -p "$EXCHANGE"
  chown root:root "$EXCHANGE"
  chmod 1777 "$EXCHANGE"
  mkdir -p "$ETC_JUPYTER"
  cat >"$ETC_JUPYTER/nbgrader_config.py" <<EOF
$MARKER: every user's nbgrader uses the shared exchange
c = get_config()  # noqa: F821
c.CourseDirectory.course_id = "$COURSE_ID"
c.Exchange.root = "$EXCHANGE"
EOF
  chmod 0644 "$ETC_JUPYTER/nbgrader_config.py"
  # login shells (`su - alice`, a terminal in JupyterLab) find jupyter and nbgrader of the shared environment
  cat >/etc/profile.d/selfattn-hub.sh <<EOF
$MARKER
case ":\$PATH:" in *":$PREFIX/venv/bin:"*) ;; *) PATH="$PREFIX/venv/bin:\$PATH" ;; esac
EOF
  chmod 0644 /etc/profile.d/selfattn-hub.sh
}

deploy_course() {
  local home course
  home=$(getent passwd "$INSTRUCTOR" | cut -d: -f6)
  course="$home/$COURSE_DIR_NAME"
  echo "== course root $course (from $COURSE_SRC)"
  mkdir -p "$course"
  # the course's code and notebooks, refreshed on each run; gradebook.db, submitted/, autograded/ and
  # feedback/ are the instructor's and are never touched
  local item
  for item in source release solutions exercises autograder scripts; do
    rm -rf "${course:?}/$item"
    cp -a "$COURSE_SRC/$item" "$course/$item"
  done
  find "$course" -name __pycache__ -prune -exec rm -rf {} +
  cp "$COURSE_SRC/nbgrader_config.py" "$COURSE_SRC/pyproject.toml" "$course/"
  # the course's config sets a single-machine exchange inside the course; on the Hub the shared one wins
  cat >>"$course/nbgrader_config.py" <<EOF

# --- JupyterHub deployment ($MARKER) ---
# nbgrader loads this file after /etc/jupyter/nbgrader_config.py, so the shared exchange is set again here
c.Exchange.root = "$EXCHANGE"
EOF
  mkdir -p "$home/.jupyter"
  cat >"$home/.jupyter/nbgrader_config.py" <<EOF
$MARKER: the instructor's Formgrader and nbgrader commands use the course root
c = get_config()  # noqa: F821
c.CourseDirectory.root = "$course"
EOF
  chown -R "$INSTRUCTOR:$INSTRUCTOR" "$course" "$home/.jupyter"
  # the instructor's own server gets the Formgrader and the instructor's tools back: the user level wins over
  # the environment's. This is what `jupyter labextension enable --level=user` and `jupyter server extension
  # enable --user` write, as the instructor, for each of them (written directly: those take seconds each).
  mkdir -p "$home/.jupyter/labconfig"
  cat >"$home/.jupyter/labconfig/page_config.json" <<EOF
{"disabledExtensions": {"@jupyter/nbgrader:formgrader": false, "@jupyter/nbgrader:create-assignment": false,
                        "@jupyter/nbgrader:course-list": false}}
EOF
  cat >"$home/.jupyter/jupyter_server_config.json" <<EOF
{"ServerApp": {"jpserver_extensions": {"nbgrader.server_extensions.formgrader": true,
                                       "nbgrader.server_extensions.course_list": true}}}
EOF
  chown -R "$INSTRUCTOR:$INSTRUCTOR" "$home/.jupyter"
  chmod 0700 "$course"
  # the course's own exchange folder inside the course root is not used on the Hub
  rm -rf "$course/exchange"
}

remove_all() {
  local user
  for user in "$INSTRUCTOR" $STUDENTS; do
    if id "$user" >/dev/null 2>&1; then
      pkill -KILL -u "$user" 2>/dev/null || true  # the user's own servers and kernels, by uid
      userdel -r "$user" 2>/dev/null || userdel "$user"
    fi
  done
  getent group "$GROUP" >/dev/null && groupdel "$GROUP" 2>/dev/null || true
  rm -rf "$EXCHANGE"
  rmdir "$(dirname "$EXCHANGE")" 2>/dev/null || true
  if [ -f "$ETC_JUPYTER/nbgrader_config.py" ] && grep -q "$MARKER" "$ETC_JUPYTER/nbgrader_config.py"; then
    rm -f "$ETC_JUPYTER/nbgrader_config.py"
  fi
  rmdir "$ETC_JUPYTER" 2>/dev/null || true  # only if nothing else is in it
  if [ -f /etc/profile.d/selfattn-hub.sh ] && grep -q "$MARKER" /etc/profile.d/selfattn-hub.sh; then
    rm -f /etc/profile.d/selfattn-hub.sh
  fi
  echo "== removed the course's users, group, exchange and /etc/jupyter config (the software in $PREFIX stays)"
}

case "${1:-all}" in
  install) install_software ;;
  course) make_users; make_exchange; deploy_course ;;
  all) install_software; make_users; make_exchange; deploy_course ;;
  remove) remove_all ;;
  start)
    [ -x "$PREFIX/venv/bin/jupyterhub" ] || die "run '$0 install' first"
    mkdir -p "$PREFIX/state"
    cd "$PREFIX/state"
    exec env PATH="$PREFIX/venv/bin:$PATH" SELFATTN_HUB_PREFIX="$PREFIX" \
      "$PREFIX/venv/bin/jupyterhub" -f "$HERE/jupyterhub_config.py" "${@:2}"
    ;;
  *) die "usage: $0 [all|install|course|remove|start]" ;;
esac
