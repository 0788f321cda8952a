"""The course on a real JupyterHub with real Unix users, as courses deploy nbgrader (issue 18, part 3).

``delivery/jupyterhub/setup.sh course`` makes the group ``selfattn``, the users ``instructor``, ``alice``
and ``bob`` (``useradd``), nbgrader's shared exchange ``/srv/nbgrader/exchange`` (1777),
``/etc/jupyter/nbgrader_config.py`` and the course root ``~instructor/self-attention`` (0700); the Hub
(``delivery/jupyterhub/jupyterhub_config.py``) runs as root on 127.0.0.1 with ``LocalProcessSpawner``, so
each user's server runs as that Unix user. Then, for real:

* the instructor generates ``self_attention`` and releases it to the exchange (``su - instructor``);
* each student fetches it (``su - alice``) and answers in the notebooks through *their own* server's
  contents API (the Hub starts the server as that user; it writes the files): alice every reference
  answer, bob the same with ``train_language_model`` wrong; each submits (``nbgrader submit``);
* permissions, as alice: she cannot list the exchange's inbound, cannot reach bob's submission there or his
  home, cannot read ``source/``, ``solutions/``, ``exercises/`` or ``gradebook.db`` of the course root, and
  cannot write the release. Each denial is shown to be a real check: the same attempt succeeds once the
  mode that forbids it is loosened on purpose, and fails again when the mode is put back;
* the instructor collects, autogrades (the course's sandboxed grader through ``nbgrader autograde``),
  generates and releases feedback; each student fetches the feedback and reads the scores in it: alice
  has full marks, bob loses exactly ``train_language_model``'s points (the gradebook says the same).
* in a browser (headless Chromium, when there is one): alice logs in to the Hub, her JupyterLab opens, she
  opens her fetched lesson 1, types an answer, saves it (the saved file is hers, with the answer) and submits
  from the Assignment List; after grading, the instructor logs in and reads both totals in the Formgrader.
  Only the instructor's server has the Formgrader (a student's answers 404).

On demand only (it creates and deletes Unix users and needs root, the software that
``setup.sh install`` fetches from PyPI and npm, and several minutes): ``SELFATTN_HUB_TESTS=1``. Then the
test runs ``setup.sh install`` itself when the software is missing (network), and ``setup.sh remove``
(``userdel -r``) before and after, so it can run twice. Otherwise every test here is skipped with the
reason. Timings and screenshots go to ``reports/jupyterhub/``.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import sqlite3
import stat
import subprocess
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import nbformat
import pytest

from autograder.examples import (
    ASSIGNMENT,
    ONE_WRONG_ITEM,
    ONE_WRONG_OVERRIDES,
    answer_cells,
    build_submission,
    strip_solution_delimiters,
)

ROOT = Path(__file__).resolve().parents[1]
SETUP = ROOT / "delivery" / "jupyterhub" / "setup.sh"
HUB_CONFIG = ROOT / "delivery" / "jupyterhub" / "jupyterhub_config.py"
REPORTS = ROOT / "reports" / "jupyterhub"
PREFIX = Path(os.environ.get("SELFATTN_HUB_PREFIX", "/opt/selfattn-hub"))
EXCHANGE = Path("/srv/nbgrader/exchange")
COURSE_ID = "self-attention"
INSTRUCTOR, STUDENTS = "instructor", ("alice", "bob")
COURSE = Path("/home") / INSTRUCTOR / "self-attention"
LESSON1 = "01_attention_scores.ipynb"
TIMINGS: dict[str, float] = {}
ENABLED = os.environ.get("SELFATTN_HUB_TESTS") == "1"
# the users' Unix passwords through PAM (set by the test, deleted with the users); the dummy authenticator (test
# only) where PAM has no `login` service
HUB_AUTH = "pam" if Path("/etc/pam.d/login").exists() else "dummy"


# --- what CI checks without root or network (fast) ---------------------------------------------------------


def _requirement_specs(lines) -> dict[str, str]:
    """{distribution name: version specifier} of requirement lines (comments and blanks skipped)."""
    specs = {}
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if line:
            found = re.match(r"([A-Za-z0-9_.\-]+)\s*(.*)", line)
            specs[found.group(1).lower().replace("_", "-")] = found.group(2).replace(" ", "")
    return specs


def test_hub_environment_carries_the_course_dependencies_and_versions():
    """The Hub's shared environment (delivery/jupyterhub/requirements.txt) has every runtime dependency of the
    course and the dev extra's nbgrader, JupyterLab and kernel pieces, with the same version specifiers as
    pyproject.toml: the instructor's autograde there must be the course's, and a student's kernel must run the
    lessons. It never lists the course itself (students could import ``solutions``)."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    hub = _requirement_specs((ROOT / "delivery" / "jupyterhub" / "requirements.txt").read_text().splitlines())
    wanted = _requirement_specs(project["dependencies"])
    dev = _requirement_specs(project["optional-dependencies"]["dev"])
    wanted |= {k: dev[k] for k in ("nbgrader", "jupyterlab", "ipykernel", "nbconvert", "jupyter-server-mathjax")}
    assert {k: hub.get(k) for k in wanted} == wanted
    assert "jupyterhub" in hub and project["name"] not in hub


def test_hub_config_listens_on_loopback_with_real_users(tmp_path, monkeypatch):
    """jupyterhub_config.py, loaded as JupyterHub loads it: loopback only, LocalProcessSpawner (each server runs
    as its Unix user), PAM limited to the course's group unless the test-only dummy authenticator is asked for."""
    from traitlets.config import Config

    def load(**env) -> Config:
        for key in ("SELFATTN_HUB_AUTH", "SELFATTN_HUB_PASSWORD", "SELFATTN_HUB_SERVICE_TOKEN"):
            monkeypatch.delenv(key, raising=False)
        monkeypatch.setenv("SELFATTN_HUB_STATE", str(tmp_path / "state"))
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        config = Config()
        exec(compile(HUB_CONFIG.read_text(), str(HUB_CONFIG), "exec"), {"get_config": lambda: config})
        return config

    c = load()
    assert (c.JupyterHub.ip, c.JupyterHub.hub_ip) == ("127.0.0.1", "127.0.0.1")
    assert c.ConfigurableHTTPProxy.api_url.startswith("http://127.0.0.1:")
    assert c.JupyterHub.spawner_class == "localprocess"
    assert c.JupyterHub.authenticator_class == "pam" and c.PAMAuthenticator.allowed_groups == {"selfattn"}
    assert c.Authenticator.admin_users == {"instructor"} and "services" not in c.JupyterHub
    assert stat.S_IMODE((tmp_path / "state").stat().st_mode) == 0o700  # the cookie secret's folder
    assert load(SELFATTN_HUB_SERVICE_TOKEN="t").JupyterHub.services[0]["api_token"] == "t"
    import grp

    group = grp.getgrgid(os.getgid()).gr_name
    dummy = load(SELFATTN_HUB_AUTH="dummy", SELFATTN_HUB_PASSWORD="pw", SELFATTN_HUB_GROUP=group)
    assert dummy.JupyterHub.authenticator_class == "dummy" and dummy.DummyAuthenticator.password == "pw"
    assert dummy.Authenticator.allowed_users == set(grp.getgrnam(group).gr_mem)
    proc = subprocess.run(["bash", "-n", str(SETUP)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


# --- may it run here? ---------------------------------------------------------------------------------


def _why_not() -> str | None:
    if not ENABLED:
        return ("on demand only: SELFATTN_HUB_TESTS=1 (as root; creates and deletes the Unix users instructor, "
                "alice and bob; runs delivery/jupyterhub/setup.sh, whose install step needs PyPI and npm once)")
    if os.geteuid() != 0:
        return "needs root: it creates Unix users and the Hub spawns each user's server as that user"
    for tool in ("useradd", "userdel", "groupadd", "su", "chpasswd", "node"):
        if not shutil.which(tool):
            return f"needs {tool} (Debian's passwd, util-linux and nodejs packages)"
    if not _installed() and not shutil.which("npm"):
        return "setup.sh install needs npm for the proxy (apt-get install npm)"
    return None


def _installed() -> bool:
    return (PREFIX / "venv" / "bin" / "jupyterhub").exists() and \
        (PREFIX / "proxy" / "node_modules" / ".bin" / "configurable-http-proxy").exists()


@contextmanager
def step(name: str):
    """Time one step (timings.json in reports/jupyterhub/ and the test output)."""
    start = time.perf_counter()
    yield
    TIMINGS[name] = time.perf_counter() - start
    print(f"[timing] {name}: {TIMINGS[name]:.1f}s")


def run_setup(action: str) -> None:
    proc = subprocess.run(["bash", str(SETUP), action], capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, f"setup.sh {action} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"


def as_user(user: str, command: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """``command`` in a login shell of the Unix user ``user`` (``su - user -c``), as a student would type it."""
    return subprocess.run(["su", "-", user, "-c", command], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def ok(user: str, command: str, timeout: float = 600) -> str:
    proc = as_user(user, command, timeout)
    assert proc.returncode == 0, f"as {user}: {command}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def deployment():
    """setup.sh install (if needed) and course; ``setup.sh remove`` before (a crashed run) and after."""
    reason = _why_not()
    if reason:
        pytest.skip(reason)
    if not _installed():
        with step("setup.sh install (network)"):
            run_setup("install")
    start = time.perf_counter()
    run_setup("remove")
    with step("setup.sh course (users, exchange, course root)"):
        run_setup("course")
    try:
        yield
    finally:
        run_setup("remove")
        TIMINGS["whole hub test: remove, course, hub, browser, workflow, remove"] = time.perf_counter() - start
        REPORTS.mkdir(parents=True, exist_ok=True)
        (REPORTS / "timings.json").write_text(json.dumps({k: round(v, 1) for k, v in TIMINGS.items()}, indent=1))


# --- the Hub ---------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Hub:
    """A running JupyterHub: its URL and a service token that may start and use the users' servers."""

    def __init__(self, url: str, token: str, password: str, log: Path):
        self.url, self.token, self.password, self.log = url, token, password, log

    def api(self, method: str, path: str, body: bytes | None = None, timeout: float = 60) -> tuple[int, bytes]:
        request = urllib.request.Request(self.url + path, data=body, method=method,
                                         headers={"Authorization": f"token {self.token}",
                                                  "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as reply:
                return reply.status, reply.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()
        except OSError as err:  # not listening (yet): no HTTP status
            return 0, str(err).encode()

    def start_server(self, user: str, timeout: float = 300) -> None:
        """Start ``user``'s server through the Hub's REST API and wait until it answers."""
        status, body = self.api("POST", f"/hub/api/users/{user}")  # the Hub knows a user once they logged in
        assert status in (201, 409), (status, body[:500])  # 409: known already
        status, body = self.api("POST", f"/hub/api/users/{user}/server")
        assert status in (201, 202, 400), (status, body[:500])  # 400: already running
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status, body = self.api("GET", f"/hub/api/users/{user}")
            server = json.loads(body).get("servers", {}).get("", {}) if status == 200 else {}
            if server.get("ready"):
                return
            time.sleep(1)
        pytest.fail(f"{user}'s server did not start in {timeout} s:\n{self.log.read_text()[-3000:]}")

    def contents(self, user: str, path: str, model: dict | None = None) -> dict:
        """GET (or PUT ``model``) ``path`` through ``user``'s own server's contents API."""
        body = None if model is None else json.dumps(model).encode()
        status, reply = self.api("GET" if model is None else "PUT", f"/user/{user}/api/contents/{path}", body)
        assert status in (200, 201), f"{user}'s server, {path}: HTTP {status}: {reply[:500]!r}"
        return json.loads(reply)


@pytest.fixture(scope="module")
def hub(deployment, tmp_path_factory):
    """JupyterHub as root on 127.0.0.1 with the course's config; PAM, or the dummy authenticator."""
    state = tmp_path_factory.mktemp("hub-state")
    os.chmod(state, 0o700)
    token, password = secrets.token_hex(24), secrets.token_urlsafe(12)
    port = _free_port()
    env = dict(os.environ, SELFATTN_HUB_PREFIX=str(PREFIX), SELFATTN_HUB_STATE=str(state),
               SELFATTN_HUB_PORT=str(port), SELFATTN_HUB_API_PORT=str(_free_port()),
               SELFATTN_HUB_PROXY_API_PORT=str(_free_port()), SELFATTN_HUB_SERVICE_TOKEN=token,
               SELFATTN_HUB_AUTH=HUB_AUTH, SELFATTN_HUB_PASSWORD=password,
               PATH=f"{PREFIX / 'venv' / 'bin'}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    env.pop("VIRTUAL_ENV", None)
    env.pop("PYTHONPATH", None)
    if HUB_AUTH == "pam":  # the users' Unix passwords (test users only: set here, deleted with the users)
        lines = "".join(f"{user}:{password}\n" for user in (INSTRUCTOR, *STUDENTS))
        subprocess.run(["chpasswd"], input=lines, text=True, check=True, capture_output=True)
    log = state / "jupyterhub.log"
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen([str(PREFIX / "venv" / "bin" / "jupyterhub"), "-f", str(HUB_CONFIG)], cwd=state,
                                env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    the_hub = Hub(url, token, password, log)
    try:
        deadline = time.monotonic() + 180
        while the_hub.api("GET", "/hub/api/")[0] != 200:
            if proc.poll() is not None:
                pytest.fail(f"jupyterhub exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"jupyterhub did not answer in 180 s:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        TIMINGS["jupyterhub start"] = time.perf_counter() - start
        yield the_hub
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the Hub stops the users' servers it spawned (cleanup_servers)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        REPORTS.mkdir(parents=True, exist_ok=True)
        shutil.copy2(log, REPORTS / "jupyterhub.log")



# --- the course: released and fetched ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def released(hub):
    """The instructor generates and releases the assignment; each student fetches it as that Unix user."""
    with step("instructor: generate_assignment + release_assignment"):
        ok(INSTRUCTOR, f"cd ~/self-attention && nbgrader generate_assignment {ASSIGNMENT} --force && "
                       f"nbgrader release_assignment {ASSIGNMENT} --force")
    outbound = EXCHANGE / COURSE_ID / "outbound" / ASSIGNMENT
    assert (outbound / LESSON1).is_file(), sorted(p.name for p in EXCHANGE.rglob("*"))
    with step("students: fetch_assignment"):
        for student in STUDENTS:
            ok(student, f"nbgrader fetch_assignment {ASSIGNMENT}")
            fetched = Path("/home") / student / ASSIGNMENT / LESSON1
            assert fetched.is_file() and fetched.stat().st_uid == _uid(student)
    return outbound


def _uid(user: str) -> int:
    import pwd

    return pwd.getpwnam(user).pw_uid


def expected_scores() -> tuple[float, float]:
    """(total points of the assignment, points of ONE_WRONG_ITEM), from the test cells of source/."""
    points = {}
    for path in sorted((ROOT / "source" / ASSIGNMENT).glob("*.ipynb")):
        for cell in nbformat.read(path, as_version=4).cells:
            meta = cell.metadata.get("nbgrader", {})
            if meta.get("grade"):
                points[meta["grade_id"]] = float(meta.get("points", 0))
    return sum(points.values()), points[f"test_{ONE_WRONG_ITEM}"]


@pytest.fixture(scope="module")
def submitted(hub, released):
    """alice and bob answer through their own servers (alice right, bob one item wrong) and submit."""
    with step("students: servers started by the Hub"):
        for student in STUDENTS:
            hub.start_server(student)
    with step("students: answer every lesson through their servers, then nbgrader submit"):
        for student in STUDENTS:
            overrides = ONE_WRONG_OVERRIDES if student == "bob" else {}
            listing = hub.contents(student, ASSIGNMENT)
            names = sorted(x["name"] for x in listing["content"] if x["name"].endswith(".ipynb"))
            assert LESSON1 in names and len(names) == len(list((ROOT / "source" / ASSIGNMENT).glob("*.ipynb")))
            for name in names:
                mine = nbformat.from_dict(hub.contents(student, f"{ASSIGNMENT}/{name}")["content"])
                source = nbformat.read(ROOT / "source" / ASSIGNMENT / name, as_version=4)
                answered = build_submission(source, mine, overrides)
                hub.contents(student, f"{ASSIGNMENT}/{name}", {"type": "notebook", "format": "json",
                                                                "content": answered})
            on_disk = Path("/home") / student / ASSIGNMENT / LESSON1
            assert on_disk.stat().st_uid == _uid(student), "the student's server did not write as the student"
            assert "NotImplementedError" not in "".join(
                c.source for c in nbformat.read(on_disk, as_version=4).cells if c.cell_type == "code"
                and c.metadata.get("nbgrader", {}).get("solution"))
            ok(student, f"nbgrader submit {ASSIGNMENT}")
    inbound = EXCHANGE / COURSE_ID / "inbound"
    mine = {s: [p for p in inbound.iterdir() if p.name.startswith(f"{s}+{ASSIGNMENT}+")] for s in STUDENTS}
    # alice may have submitted from the browser before (test above); her newest submission is this one (the
    # time stamp follows the id in the name, so the names sort by time)
    assert len(mine["bob"]) == 1 and 1 <= len(mine["alice"]) <= 2, mine
    return {s: max(v) for s, v in mine.items()}


# --- in a browser: alice logs in, opens her lesson, answers and saves ----------------------------------------


def log_in(browser, hub: Hub, user: str) -> None:
    """The Hub's login form, as a person fills it in; returns once the user's JupyterLab is there."""
    from selenium.webdriver.common.by import By
    from test_browser import wait

    browser.get(f"{hub.url}/hub/login")
    wait(browser, lambda d: d.find_elements(By.ID, "username_input"), 60, "no login form")
    browser.find_element(By.ID, "username_input").send_keys(user)
    browser.find_element(By.ID, "password_input").send_keys(hub.password)
    browser.find_element(By.ID, "login_submit").click()
    wait(browser, lambda d: f"/user/{user}/lab" in d.current_url
         and d.find_elements(By.CSS_SELECTOR, ".lm-MenuBar-itemLabel"), 300,
         f"{user}'s JupyterLab did not open after the login")


@pytest.mark.slow
def test_student_logs_in_opens_answers_and_saves_in_a_browser(hub, released):
    """alice's login to the Hub (PAM: her Unix password), her JupyterLab, her fetched lesson 1, one answer typed
    and saved with File > Save (the file in her home holds it, owned by her), then Submit in nbgrader's Assignment
    List (the exchange's inbound holds her submission, with the answer)."""
    pytest.importorskip("selenium", reason="pip install selenium (the dev extra)")
    from selenium.webdriver.common.by import By
    from test_browser import kernel_idle, menu, start_chromium, type_answer, wait

    browser = start_chromium()
    REPORTS.mkdir(parents=True, exist_ok=True)
    item = "attention_scores_loop"
    source = nbformat.read(ROOT / "source" / ASSIGNMENT / LESSON1, as_version=4)
    answer = strip_solution_delimiters(answer_cells(source)[item].source)
    saved = Path("/home") / "alice" / ASSIGNMENT / LESSON1
    try:
        with step("browser: alice logs in to the Hub"):
            log_in(browser, hub, "alice")
            browser.save_screenshot(str(REPORTS / "02_alice_lab.png"))
        with step("browser: alice opens her fetched lesson 1"):
            browser.get(f"{hub.url}/user/alice/lab/tree/{ASSIGNMENT}/{LESSON1}")
            wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, ".jp-Notebook .jp-Cell")) > 20
                 and kernel_idle(d), 240, "the lesson did not open with an idle kernel")
            browser.save_screenshot(str(REPORTS / "03_alice_lesson.png"))
        with step("browser: alice types an answer and saves"):
            type_answer(browser, item, answer)
            menu(browser, "File", "docmanager:save")

            def answer_saved(_driver) -> bool:
                cells = nbformat.read(saved, as_version=4).cells
                return any(f"def {item}(" in c.source and "NotImplementedError" not in c.source
                           for c in cells if c.cell_type == "code")

            wait(browser, answer_saved, 60, "the answer was not saved in alice's notebook")
            browser.save_screenshot(str(REPORTS / "04_alice_saved.png"))
        assert saved.stat().st_uid == _uid("alice"), "the file was not written by alice's own server"
        with step("browser: alice submits from the Assignment List"):
            inbound = EXCHANGE / COURSE_ID / "inbound"
            menu(browser, "Nbgrader", "nbgrader:open-assignment-list")
            submit = (By.XPATH, "//div[@id='fetched_assignments_list']//button[normalize-space()='Submit']")
            wait(browser, lambda d: d.find_elements(*submit), 120, "no Submit button for the fetched assignment")
            browser.find_element(*submit).click()
            wait(browser, lambda d: ASSIGNMENT in d.find_element(By.ID, "submitted_assignments_list").text, 180,
                 "the Assignment List shows no submission")
            browser.save_screenshot(str(REPORTS / "05_alice_submitted.png"))
            handed_in = sorted(inbound.glob(f"alice+{ASSIGNMENT}+*"))
            assert len(handed_in) == 1 and handed_in[0].stat().st_uid == _uid("alice"), handed_in
            sent = nbformat.read(handed_in[0] / LESSON1, as_version=4)
            assert any(f"def {item}(" in c.source and "NotImplementedError" not in c.source for c in sent.cells)
    finally:
        browser.quit()


@pytest.mark.slow
def test_only_the_instructor_has_the_formgrader(hub, released):
    """nbgrader's set-up for a shared server: the Formgrader's handlers exist in the instructor's server only, and
    only the instructor's JupyterLab loads its menu entries; a student's server answers 404."""
    for user in (INSTRUCTOR, "alice"):
        hub.start_server(user)
    status, body = hub.api("GET", f"/user/{INSTRUCTOR}/formgrader")
    assert status == 200, (status, body[:300])
    status, _ = hub.api("GET", "/user/alice/formgrader")
    assert status == 404, status
    disabled = {}
    for user in (INSTRUCTOR, "alice"):
        status, page = hub.api("GET", f"/user/{user}/lab")
        assert status == 200, status
        config = json.loads(re.search(rb'id="jupyter-config-data"[^>]*>(.*?)</script>', page, re.S).group(1))
        disabled[user] = {k for k, v in config.get("disabledExtensions", {}).items() if v} \
            if isinstance(config.get("disabledExtensions"), dict) else set(config.get("disabledExtensions", []))
    assert "@jupyter/nbgrader:formgrader" in disabled["alice"], disabled
    assert not any(x.startswith("@jupyter/nbgrader") for x in disabled[INSTRUCTOR]), disabled


# --- permissions, as the students ---------------------------------------------------------------------


def _modes(paths: list[Path]) -> dict[Path, int]:
    return {p: stat.S_IMODE(p.stat().st_mode) for p in paths}


def _chain(target: Path, top: Path) -> list[Path]:
    """``top`` and every folder from it down to ``target``'s, and ``target``."""
    chain, here = [target], target.parent
    while True:
        chain.append(here)
        if here == top or here == here.parent:
            break
        here = here.parent
    return chain[::-1]


def assert_denied_for_real(user: str, command: str, loosen: dict[Path, int], why: str) -> subprocess.CompletedProcess:
    """``command`` as ``user`` fails; with the modes in ``loosen`` added on purpose it succeeds (so the check
    can fail: the permission is what stops it), and after the modes are restored it fails again."""
    first = as_user(user, command, timeout=60)
    assert first.returncode != 0, f"{why}: as {user}, `{command}` succeeded:\n{first.stdout[:1000]}"
    before = _modes(list(loosen))
    try:
        for path, extra in loosen.items():
            os.chmod(path, before[path] | extra)
        loosened = as_user(user, command, timeout=60)
        assert loosened.returncode == 0, (
            f"{why}: the check is not real: `{command}` still fails as {user} with the modes loosened "
            f"({ {str(p): oct(before[p] | e) for p, e in loosen.items()} }):\n{loosened.stderr[-1000:]}")
    finally:
        for path, mode in before.items():
            os.chmod(path, mode)
    assert _modes(list(loosen)) == before
    again = as_user(user, command, timeout=60)
    assert again.returncode != 0, f"{why}: the modes were restored but `{command}` now succeeds as {user}"
    return first


@pytest.mark.slow
def test_students_cannot_read_others_work_the_course_or_write_the_release(submitted, released):
    alice, bob = STUDENTS
    inbound = EXCHANGE / COURSE_ID / "inbound"
    bob_submission = submitted[bob]
    # controls: su works and alice reaches what is hers to reach (else every denial below proves nothing)
    assert LESSON1 in ok(alice, f"ls {released}")
    ok(alice, f"head -c 100 {released / LESSON1} >/dev/null && ls ~/{ASSIGNMENT}/{LESSON1}")
    assert stat.S_IMODE(EXCHANGE.stat().st_mode) == 0o1777, oct(EXCHANGE.stat().st_mode)
    # write-only for students (nbgrader adds setgid so the instructor's group owns what lands there)
    assert inbound.stat().st_mode & 0o777 == 0o733, oct(inbound.stat().st_mode)
    R, X, W = stat.S_IROTH, stat.S_IXOTH, stat.S_IWOTH

    with step("permission checks (as alice)"):
        denied = assert_denied_for_real(alice, f"ls {inbound}", {inbound: R}, "alice lists the exchange's inbound")
        assert "Permission denied" in denied.stderr, denied.stderr
        # bob's submission through the only name alice knows (his id and the assignment); the rest of the
        # name (time stamp and 72 random bits) is what nbgrader hides by making inbound unlistable
        assert_denied_for_real(alice, f"cat {inbound}/{bob}+{ASSIGNMENT}+*/{LESSON1}", {inbound: R},
                               "alice reads bob's submission in the exchange")
        assert_denied_for_real(alice, f"ls {inbound}/{bob}+*", {inbound: R},
                               "alice finds bob's submission in the exchange")
        bob_home = Path("/home") / bob
        assert_denied_for_real(alice, f"cat {bob_home / ASSIGNMENT / LESSON1}", {bob_home: R | X},
                               "alice reads bob's notebooks in his home")
        home = COURSE.parent
        for target in (COURSE / "source" / ASSIGNMENT / LESSON1, COURSE / "solutions" / "lesson1_scores.py",
                       COURSE / "exercises" / "catalogue.py", COURSE / "gradebook.db"):
            assert target.exists(), target
            loosen = {p: X for p in _chain(target, home)[:-1]} | {target: R}
            denied = assert_denied_for_real(alice, f"head -c 100 {target}", loosen,
                                            f"alice reads {target.relative_to(COURSE)} of the course root")
            assert "Permission denied" in denied.stderr, denied.stderr
        for folder in ("source", "solutions", "exercises"):
            loosen = {home: X, COURSE: X, COURSE / folder: R}
            assert_denied_for_real(alice, f"ls {COURSE / folder}", loosen, f"alice lists {folder}/ of the course root")
        # the release: no new file in it, no write to a released notebook (`: >>` opens for writing, writes nothing)
        assert_denied_for_real(alice, f"touch {released}/planted.ipynb && rm {released}/planted.ipynb",
                               {released: W}, "alice adds a file to the release")
        assert_denied_for_real(alice, f": >> {released / LESSON1}", {released / LESSON1: W},
                               "alice writes a released notebook")
        assert_denied_for_real(alice, f"touch {released.parent}/planted && rm {released.parent}/planted",
                               {released.parent: W}, "alice adds an assignment to the outbound")
    assert bob_submission.is_dir()


# --- the instructor grades, the students read their feedback ------------------------------------------------


@pytest.mark.slow
def test_instructor_grades_and_students_read_their_scores(submitted, hub):
    total, lost = expected_scores()
    with step("instructor: collect + autograde (sandboxed grader) + generate/release feedback"):
        ok(INSTRUCTOR, f"cd ~/self-attention && nbgrader collect {ASSIGNMENT}")
        for student in STUDENTS:
            assert (COURSE / "submitted" / student / ASSIGNMENT / LESSON1).is_file()
        graded = ok(INSTRUCTOR, f"cd ~/self-attention && nbgrader autograde {ASSIGNMENT}", timeout=1800)
        REPORTS.mkdir(parents=True, exist_ok=True)
        (REPORTS / "autograde.log").write_text(graded)  # the grader's seed and isolation mode, as the instructor
        assert "Sandboxed grader" in graded, graded[-3000:]
        ok(INSTRUCTOR, f"cd ~/self-attention && nbgrader generate_feedback {ASSIGNMENT} && "
                       f"nbgrader release_feedback {ASSIGNMENT}")
    with sqlite3.connect(f"file:{COURSE / 'gradebook.db'}?mode=ro", uri=True) as con:
        rows = con.execute(
            "SELECT student.id, SUM(COALESCE(grade.manual_score, grade.auto_score)) FROM grade "
            "JOIN submitted_notebook ON grade.notebook_id = submitted_notebook.id "
            "JOIN submitted_assignment ON submitted_notebook.assignment_id = submitted_assignment.id "
            "JOIN student ON submitted_assignment.student_id = student.id "
            "GROUP BY student.id").fetchall()
    gradebook = {student: score for student, score in rows}
    assert gradebook == pytest.approx({"alice": total, "bob": total - lost}), gradebook

    with step("students: fetch_feedback and read the scores"):
        for student in STUDENTS:
            ok(student, f"nbgrader fetch_feedback {ASSIGNMENT}")
            pages = sorted((Path("/home") / student / ASSIGNMENT / "feedback").glob("*/*.html"))
            assert len(pages) == len(list((ROOT / "source" / ASSIGNMENT).glob("*.ipynb"))), pages
            assert all(p.stat().st_uid == _uid(student) for p in pages)
            scores = [_page_score(p.read_text()) for p in pages]
            earned, possible = sum(s for s, _ in scores), sum(p for _, p in scores)
            assert possible == pytest.approx(total)
            expected = total if student == "alice" else total - lost
            assert earned == pytest.approx(expected), (student, earned, expected, [p.name for p in pages])
            assert "BEGIN HIDDEN TESTS" not in "".join(p.read_text() for p in pages)
    # feedback in the exchange: alice cannot list it (nbgrader names each page by a hash of bob's submission)
    feedback = EXCHANGE / COURSE_ID / "feedback"
    assert_denied_for_real("alice", f"ls {feedback}", {feedback: stat.S_IROTH}, "alice lists everyone's feedback")
    TIMINGS["workflow steps (release to feedback, both students, permissions)"] = sum(
        v for k, v in TIMINGS.items() if k.startswith(("instructor:", "students:", "permission")))


def _page_score(html: str) -> tuple[float, float]:
    """(score, possible) of one feedback page: nbgrader's header ``NAME (Score: X / Y)``."""
    found = re.search(r"\(Score:\s*([0-9.]+)\s*/\s*([0-9.]+)\)", html)
    assert found, html[:2000]
    return float(found.group(1)), float(found.group(2))


@pytest.mark.slow
def test_instructor_sees_the_scores_in_the_formgrader(hub):
    """After the grading test: the instructor logs in to the Hub and reads both students' totals in the
    Formgrader of his own JupyterLab (Manage Students), from the gradebook the command line wrote."""
    pytest.importorskip("selenium", reason="pip install selenium (the dev extra)")
    from selenium.webdriver.common.by import By
    from test_browser import start_chromium, wait

    if not (EXCHANGE / COURSE_ID / "feedback").is_dir():
        pytest.fail("the grading test did not release feedback (it failed or did not run first)")
    total, lost = expected_scores()
    browser = start_chromium()
    try:
        with step("browser: instructor logs in and opens the Formgrader's students"):
            log_in(browser, hub, INSTRUCTOR)
            browser.get(f"{hub.url}/user/{INSTRUCTOR}/formgrader/manage_students")
            table = (By.CSS_SELECTOR, "#main-table")
            wait(browser, lambda d: d.find_elements(*table) and all(
                s in d.find_element(*table).text for s in STUDENTS), 120, "the Formgrader lists no students")
            text = browser.find_element(*table).text
            browser.save_screenshot(str(REPORTS / "06_instructor_formgrader_students.png"))
        # one row a student ("alice, alice None 76 / 76": name, id, e-mail, score)
        rows = {s: line for line in text.splitlines() for s in STUDENTS if re.search(rf"\b{s}\b", line)}
        assert f"{total:g} / {total:g}" in rows.get("alice", ""), text
        assert f"{total - lost:g} / {total:g}" in rows.get("bob", ""), text
    finally:
        browser.quit()
