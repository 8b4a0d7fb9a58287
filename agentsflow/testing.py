"""Helpers for tests and benchmarks: real server processes (with the databases and
settings they run on) and the production stack, plus what the browser tests and
the async tests' teardown share."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
ARTIFACTS = BASE_DIR / "test-artifacts"  # screenshots from the browser tests

# Debian's Chromium, driven by Playwright (which downloads no browser of its own).
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_MISSING = not Path(CHROMIUM).exists()
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def watch_page_errors(page) -> list[str]:
    """A list that collects a Playwright page's console errors and uncaught
    exceptions as they happen (a test ends with ``assert problems == []``)."""
    problems: list[str] = []
    page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: problems.append(str(error)))
    return problems


def sign_in(page, url: str, email: str, password: str) -> None:
    """Open ``url`` signed out, which shows the sign-in page first, and sign in there."""
    page.goto(url)
    assert "/accounts/login/" in page.url
    page.fill("#id_username", email)
    page.fill("#id_password", password)
    page.click("button[type=submit]")


async def stop_running_generations() -> None:
    """End of an async test: cancel every reply still generating in this process,
    wait for each one's task (5 s at most), and close the provider's HTTP client."""
    from chat import streaming
    from chat.providers.openai import close_http_client

    for generation in list(streaming._running.values()):
        generation.cancel("test teardown")
        if generation.task is not None:
            await asyncio.wait({generation.task}, timeout=5)
    await close_http_client()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    url: str
    port: int
    process: subprocess.Popen
    log_path: Path
    key: str = ""  # the prepared user's API key, when the server runs on a prepared platform
    env: dict[str, str] | None = None  # what it runs with on top of os.environ, when prepared here

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def _websocket_protocol(checkout: Path) -> str:
    """ops/run-asgi.sh's WebSocket protocol, or uvicorn's own for a checkout from
    before agentsflow/uvicorn_ws.py (benchmarks run older checkouts beside this one)."""
    if (checkout / "agentsflow" / "uvicorn_ws.py").exists():
        return "agentsflow.uvicorn_ws:WebSocketProtocol"
    return "websockets-sansio"


def server_command(kind: str, port: int, workers: int = 1, checkout: Path = BASE_DIR) -> list[str]:
    """The command line for one of the supported servers (see README, "Serving")."""
    if kind == "uvicorn":
        return [
            str(BIN / "uvicorn"),
            "agentsflow.asgi:application",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            str(workers),
            "--no-access-log",
            # core.net decides who the client is (TRUSTED_PROXIES); uvicorn would
            # otherwise believe X-Forwarded-For from any loopback peer.
            "--no-proxy-headers",
            "--lifespan",
            "off",
            "--ws-max-size",
            "1048576",
            # As ops/run-asgi.sh: the production protocol, no per-message deflate (its
            # zlib state stays with every socket).
            "--ws",
            _websocket_protocol(checkout),
            "--ws-per-message-deflate",
            "false",
        ]
    if kind == "granian-asgi":
        return [
            str(BIN / "granian"),
            "--interface",
            "asgi",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            str(workers),
            "--no-ws",
            "agentsflow.asgi:application",
        ]
    if kind == "granian-wsgi":
        return [
            str(BIN / "granian"),
            "--interface",
            "wsgi",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            str(workers),
            "--blocking-threads",
            "1",
            "agentsflow.wsgi:application",
        ]
    raise ValueError(f"unknown server kind {kind!r}")


@contextlib.contextmanager
def run_server(
    env: dict[str, str] | None = None,
    *,
    kind: str = "uvicorn",
    workers: int = 1,
    log_path: Path | None = None,
    ready_path: str = "/health",
    timeout: float = 30.0,
    cwd: Path = BASE_DIR,
) -> Iterator[Server]:
    """Start a server process on a free loopback port; stop it (and its workers) on exit.

    ``cwd`` is the checkout the server imports the project from (benchmarks run
    an older checkout next to this one to compare them).
    """
    port = free_port()
    full_env = {**os.environ, **(env or {})}
    full_env.pop("DJANGO_SETTINGS_MODULE", None)
    full_env["DJANGO_SETTINGS_MODULE"] = "agentsflow.settings"
    log_path = log_path or Path(tempfile.gettempdir()) / f"agentsflow-server-{port}.log"
    process = start_process(server_command(kind, port, workers, cwd), env=full_env, log_path=log_path, cwd=cwd)
    server = Server(url=f"http://127.0.0.1:{port}", port=port, process=process, log_path=log_path)
    try:
        wait_until_up(server, ready_path, timeout)
        yield server
    finally:
        stop(process)


def wait_until_up(server: Server, path: str, timeout: float) -> None:
    """Wait until ``server`` answers ``path`` without an HTTP error; raise, with the
    tail of its log, if it exits first or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"server exited with {server.process.returncode}:\n{server.log()[-3000:]}")
        try:
            with urllib.request.urlopen(server.url + path, timeout=1):  # noqa: S310 (loopback)
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"server not up after {timeout}s:\n{server.log()[-3000:]}")


def start_process(
    command: list[str], *, env: dict[str, str], log_path: Path, cwd: Path = BASE_DIR, append: bool = False
) -> subprocess.Popen:
    """Start ``command`` in a session of its own (so ``stop`` ends it and every process
    it forks), its output and errors written to ``log_path`` (added to with ``append``)."""
    with open(log_path, "ab" if append else "wb") as log:
        return subprocess.Popen(command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def stop(process: subprocess.Popen, timeout: float = 10.0) -> None:
    """Stop a server and every worker it forked (it runs in its own session)."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, 15)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, 9)
        process.wait()


@dataclass
class Platform:
    """A database prepared for a server process: migrated, with a user and a key."""

    env: dict[str, str]
    key: str
    email: str
    password: str


def manage(*args: str, env: dict[str, str], timeout: float = 120) -> str:
    full_env = {**os.environ, **env, "DJANGO_SETTINGS_MODULE": "agentsflow.settings"}
    result = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=BASE_DIR,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if result.returncode != 0:
        raise RuntimeError(f"manage.py {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result.stdout


def pg_admin_connection(database_url: str, dbname: str = "postgres", **options):
    """An autocommit psycopg connection to ``database_url``'s server as its user,
    on ``dbname`` (the maintenance database by default): for creating databases and
    reading pg_stat_activity. ``options`` go to ``psycopg.connect`` (e.g. connect_timeout)."""
    import psycopg

    from agentsflow.env import database_from_url

    settings = database_from_url(database_url)
    return psycopg.connect(
        host=settings["HOST"] or None,
        port=settings["PORT"] or None,
        user=settings["USER"] or None,
        password=settings["PASSWORD"] or None,
        dbname=dbname,
        autocommit=True,
        **options,
    )


def fresh_database_env(name: str, tmp_dir: Path) -> dict[str, str]:
    """Environment for a database of its own: a new PostgreSQL database next to
    DATABASE_URL's when it is set, else a SQLite file in ``tmp_dir``."""
    database_url = os.environ.get("DATABASE_URL")
    if not database_url:
        return {"SQLITE_PATH": str(tmp_dir / f"{name}.sqlite3")}
    from agentsflow.env import database_from_url

    database = f"{database_from_url(database_url)['NAME']}_{name}"
    with pg_admin_connection(database_url) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{database}"')
    return {"DATABASE_URL": database_url.rsplit("/", 1)[0] + "/" + database}


def prepare_platform(env: dict[str, str], *, scopes: str = "chat,conversations:read,analytics:read,admin") -> Platform:
    """Migrate the database ``env`` names and create a user with a key."""
    email, password = "live@example.com", "live-password-123"
    manage("migrate", "--no-input", env=env)
    manage("createuser", email, "--password", password, env=env)
    key = manage("issuekey", email, "--scopes", scopes, env=env).strip()
    return Platform(env=env, key=key, email=email, password=password)


@contextlib.contextmanager
def run_platform_on_fake_upstream(
    name: str, tmp_dir: Path, upstream: str, models: list[dict], *, workers: int = 1, **settings: str
) -> Iterator[Server]:
    """A server process on a prepared database of its own (``fresh_database_env``,
    ``prepare_platform``) whose provider "fake" is the fake upstream at ``upstream``
    and whose models are ``models``; ``settings`` are added to its environment.
    The server's ``.key`` is the prepared user's key; its log is ``tmp_dir/server.log``."""
    env = {
        **fresh_database_env(name, tmp_dir),
        "AGENTSFLOW_VAR_DIR": str(tmp_dir),
        "EXTRA_PROVIDERS": "fake",
        "FAKE_BASE_URL": upstream,
        "AGENTSFLOW_MODELS": json.dumps(models),
        "ACCESS_LOG": "false",
        **settings,
    }
    platform = prepare_platform(env)
    with run_server(env, workers=workers, log_path=tmp_dir / "server.log") as server:
        server.key, server.env = platform.key, env
        yield server


# --- The production stack: nginx -> granian WSGI + uvicorn ASGI ------------------------

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
NGINX_MISSING = not Path(NGINX).exists()


@dataclass
class Stack:
    """A running production stack (see ``run_stack``)."""

    url: str  # nginx: what clients use
    wsgi_url: str  # granian WSGI, directly
    asgi_url: str  # uvicorn ASGI, directly
    env: dict[str, str]  # what the servers run with on top of this process's environment
    directory: Path  # rendered nginx.conf, logs, static files, temp files
    static_root: Path
    logs: dict[str, Path]  # "nginx_error", "nginx_access", "wsgi", "asgi"
    processes: dict[str, subprocess.Popen]  # "nginx", "wsgi", "asgi"

    def log(self, name: str) -> str:
        path = self.logs[name]
        return path.read_text(errors="replace") if path.exists() else ""


def loopback_production_env(secret_key: str) -> dict[str, str]:
    """Production settings, as deployed, for a server on loopback: plain HTTP, so no
    SSL redirect."""
    return {
        "AGENTSFLOW_ENV": "production",
        "SECRET_KEY": secret_key,
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "SECURE_SSL_REDIRECT": "false",
    }


def production_env(tmp_dir: Path) -> dict[str, str]:
    """Production settings for a loopback run (``run_stack``), with its own
    directories and nginx as the trusted proxy."""
    return {
        **loopback_production_env("stack-" + secrets.token_urlsafe(48)),
        "AGENTSFLOW_VAR_DIR": str(tmp_dir / "var"),
        "STATIC_ROOT": str(tmp_dir / "static"),
        "TRUSTED_PROXIES": "127.0.0.1",
    }


@contextlib.contextmanager
def run_stack(
    env: dict[str, str] | None = None,
    *,
    tmp_dir: Path | None = None,
    wsgi_workers: int | None = None,
    asgi_workers: int = 2,
    nginx: dict | None = None,
    asgi_only: bool = False,
    collectstatic: bool = True,
    timeout: float = 60.0,
    checkout: Path = BASE_DIR,
) -> Iterator[Stack]:
    """Run the platform as deployed: nginx in front of granian WSGI and uvicorn ASGI,
    each started by its production script (ops/run-wsgi.sh, ops/run-asgi.sh) on free
    loopback ports; wait until all three answer /health; stop everything on exit.

    ``env`` is laid over ``production_env`` (production settings, plain HTTP) and
    over this process's environment; pass the database and Redis there, e.g.
    ``fresh_database_env(...)`` after ``prepare_platform(...)``. ``tmp_dir`` (a new
    temporary directory by default, removed on exit) holds the rendered
    nginx.conf, the logs and STATIC_ROOT, filled by ``collectstatic``.
    ``wsgi_workers`` defaults to the run script's (one per core). ``nginx``
    overrides ops.render.NginxConfig fields, e.g. ``{"api_rate": None}`` switches
    nginx's per-address API limit off (tests of the platform's own limits), and
    ``{"api_rate": None, "auth_rate": None, "conn_limit": None}`` every per-address
    limit (benchmarks: all load comes from one address). ``asgi_only=True`` starts
    no WSGI server and nginx sends everything to ASGI (the single-server
    deployment, for comparison; ``.wsgi_url`` is then the ASGI server's).
    ``checkout`` is the project the run scripts and nginx.conf template come from
    (benchmarks run an older checkout's stack to compare). As root,
    nginx's workers run as root too (they read STATIC_ROOT under a private tmp).

    Yields a ``Stack``: ``.url`` (nginx), ``.wsgi_url``, ``.asgi_url``, ``.logs``
    (paths by name), ``.log(name)``, ``.processes``.
    """
    from ops.render import NginxConfig, render

    with contextlib.ExitStack() as cleanup:
        if tmp_dir is None:
            tmp_dir = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="agentsflow-stack-")))
        tmp_dir.mkdir(parents=True, exist_ok=True)
        overrides = {**production_env(tmp_dir), **(env or {})}
        if collectstatic:
            manage("collectstatic", "--no-input", env=overrides)

        asgi_port, nginx_port = free_port(), free_port()
        wsgi_port = asgi_port if asgi_only else free_port()
        overrides.update(
            WSGI_PORT=str(wsgi_port),
            ASGI_PORT=str(asgi_port),
            ASGI_WORKERS=str(asgi_workers),
            WSGI_PROMETHEUS_DIR=str(tmp_dir / "prometheus-wsgi"),
            ASGI_PROMETHEUS_DIR=str(tmp_dir / "prometheus-asgi"),
        )
        if wsgi_workers:
            overrides["WSGI_WORKERS"] = str(wsgi_workers)
        full_env = {**os.environ, **overrides, "DJANGO_SETTINGS_MODULE": "agentsflow.settings", "VENV": str(BIN.parent)}
        logs = {name: tmp_dir / f"{name}.log" for name in ("nginx_error", "nginx_access", "wsgi", "asgi")}
        loopback = {
            "listen": f"127.0.0.1:{nginx_port}",
            "wsgi": f"127.0.0.1:{wsgi_port}",
            "asgi": f"127.0.0.1:{asgi_port}",
            "static_root": overrides["STATIC_ROOT"],
            "user": "root" if os.geteuid() == 0 else None,
            "pid": str(tmp_dir / "nginx.pid"),
            "error_log": str(logs["nginx_error"]),
            "access_log": str(logs["nginx_access"]),
            "temp_dir": str(tmp_dir / "nginx-temp"),
            "daemon": False,
            "max_body_bytes": int(overrides.get("MAX_BODY_BYTES", 1024 * 1024)),
            # As much as this process may have (nginx cannot raise the hard limit).
            "rlimit_nofile": min(65535, resource.getrlimit(resource.RLIMIT_NOFILE)[1]),
        }
        config = NginxConfig(**{**loopback, **(nginx or {})})
        (tmp_dir / "nginx-temp").mkdir(exist_ok=True)
        conf = tmp_dir / "nginx.conf"
        conf.write_text(render(config, template=checkout / "ops" / "nginx.conf"))

        commands = {
            "wsgi": [str(checkout / "ops" / "run-wsgi.sh")],
            "asgi": [str(checkout / "ops" / "run-asgi.sh")],
            "nginx": [NGINX, "-p", str(tmp_dir), "-c", str(conf), "-e", str(logs["nginx_error"])],
        }
        if asgi_only:
            del commands["wsgi"]
        processes: dict[str, subprocess.Popen] = {}
        for name, command in commands.items():
            log_path = logs["nginx_error" if name == "nginx" else name]
            processes[name] = start_process(command, env=full_env, log_path=log_path, append=True)
            cleanup.callback(stop, processes[name])  # stopped in reverse: nginx first

        stack = Stack(
            url=f"http://127.0.0.1:{nginx_port}",
            wsgi_url=f"http://127.0.0.1:{wsgi_port}",
            asgi_url=f"http://127.0.0.1:{asgi_port}",
            env=overrides,
            directory=tmp_dir,
            static_root=Path(overrides["STATIC_ROOT"]),
            logs=logs,
            processes=processes,
        )
        for name, url in (("wsgi", stack.wsgi_url), ("asgi", stack.asgi_url), ("nginx", stack.url)):
            if name not in processes:
                continue
            log_name = "nginx_error" if name == "nginx" else name
            server = Server(url=url, port=0, process=processes[name], log_path=logs[log_name])
            wait_until_up(server, "/health", timeout)
        yield stack
