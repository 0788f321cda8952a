"""JupyterHub for the self-attention course: real Unix users, one server each, on loopback.

Started by ``delivery/jupyterhub/setup.sh start`` (as root, from the Hub's state folder), or by
``tests/test_jupyterhub.py``. Everything a deployment may change comes from the environment:

    SELFATTN_HUB_PREFIX        where setup.sh installed the software (default /opt/selfattn-hub)
    SELFATTN_HUB_STATE         the Hub's database and cookie secret (default $PREFIX/state)
    SELFATTN_HUB_PORT          the public port on 127.0.0.1 (default 8000)
    SELFATTN_HUB_GROUP         the Unix group whose members may log in (default selfattn)
    SELFATTN_HUB_INSTRUCTOR    the Hub's admin (default instructor)
    SELFATTN_HUB_AUTH          "pam" (default: the users' Unix passwords) or "dummy" (TEST ONLY: any
                               member of the group logs in with SELFATTN_HUB_PASSWORD)
    SELFATTN_HUB_SERVICE_TOKEN optional: an API token for a service that may start, stop and use the
                               users' servers (the test suite drives the student servers with it)

Each user's server is ``jupyterhub-singleuser`` from the shared environment, started by
``LocalProcessSpawner`` as that Unix user (setuid from the root Hub), in the user's home directory,
with the nbgrader extensions: students see the Assignment List; the instructor's Formgrader uses the
course root named in ``~instructor/.jupyter/nbgrader_config.py``.
"""

import os

c = get_config()  # noqa: F821 (provided by traitlets when it loads this file)

PREFIX = os.environ.get("SELFATTN_HUB_PREFIX", "/opt/selfattn-hub")
STATE = os.environ.get("SELFATTN_HUB_STATE", os.path.join(PREFIX, "state"))
GROUP = os.environ.get("SELFATTN_HUB_GROUP", "selfattn")
INSTRUCTOR = os.environ.get("SELFATTN_HUB_INSTRUCTOR", "instructor")
os.makedirs(STATE, mode=0o700, exist_ok=True)

# --- network: loopback only (put a TLS reverse proxy in front for a real course) -----------------
c.JupyterHub.ip = "127.0.0.1"
c.JupyterHub.port = int(os.environ.get("SELFATTN_HUB_PORT", "8000"))
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = int(os.environ.get("SELFATTN_HUB_API_PORT", "8081"))
c.ConfigurableHTTPProxy.command = [os.path.join(PREFIX, "proxy", "node_modules", ".bin", "configurable-http-proxy")]
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:" + os.environ.get("SELFATTN_HUB_PROXY_API_PORT", "8001")
c.JupyterHub.db_url = "sqlite:///" + os.path.join(STATE, "jupyterhub.sqlite")
c.JupyterHub.cookie_secret_file = os.path.join(STATE, "jupyterhub_cookie_secret")
c.JupyterHub.pid_file = os.path.join(STATE, "jupyterhub.pid")

# --- who may log in -----------------------------------------------------------------------------
if os.environ.get("SELFATTN_HUB_AUTH", "pam") == "dummy":
    # TEST ONLY: one shared password, no Unix password checked. Never on a reachable machine.
    c.JupyterHub.authenticator_class = "dummy"
    c.DummyAuthenticator.password = os.environ["SELFATTN_HUB_PASSWORD"]
    import grp

    c.Authenticator.allowed_users = set(grp.getgrnam(GROUP).gr_mem)
else:
    c.JupyterHub.authenticator_class = "pam"  # the users' Unix passwords
    c.PAMAuthenticator.allowed_groups = {GROUP}
c.Authenticator.admin_users = {INSTRUCTOR}

# --- each user's server: their own Unix user, the shared environment ------------------------------
c.JupyterHub.spawner_class = "localprocess"  # jupyterhub.spawner.LocalProcessSpawner (setuid per user)
c.Spawner.cmd = [os.path.join(PREFIX, "venv", "bin", "jupyterhub-singleuser")]
c.Spawner.default_url = "/lab"
c.Spawner.environment = {
    "PATH": os.pathsep.join([os.path.join(PREFIX, "venv", "bin"), "/usr/local/bin", "/usr/bin", "/bin"]),
}
c.Spawner.start_timeout = 180  # a busy course machine: the first server imports JupyterLab cold
c.Spawner.http_timeout = 180

# --- a service that drives the users' servers (the test suite) ------------------------------------
token = os.environ.get("SELFATTN_HUB_SERVICE_TOKEN")
if token:
    c.JupyterHub.services = [{"name": "selfattn-driver", "api_token": token}]
    c.JupyterHub.load_roles = [{
        "name": "selfattn-driver",
        "scopes": ["admin:users", "admin:servers", "access:servers", "read:users"],
        "services": ["selfattn-driver"],
    }]
