"""Helpers for tests and benchmarks that need a real server process."""

from __future__ import annotations

import contextlib
import os
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

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def server_command(kind: str, port: int, workers: int = 1) -> list[str]:
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
) -> Iterator[Server]:
    """Start a server process on a free loopback port; stop it (and its workers) on exit."""
    port = free_port()
    full_env = {**os.environ, **(env or {})}
    full_env.pop("DJANGO_SETTINGS_MODULE", None)
    full_env["DJANGO_SETTINGS_MODULE"] = "agentsflow.settings"
    log_path = log_path or Path(tempfile.gettempdir()) / f"agentsflow-server-{port}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            server_command(kind, port, workers),
            cwd=BASE_DIR,
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = Server(url=f"http://127.0.0.1:{port}", port=port, process=process, log_path=log_path)
    try:
        _wait_until_up(server, ready_path, timeout)
        yield server
    finally:
        stop(process)


def _wait_until_up(server: Server, path: str, timeout: float) -> None:
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


def fresh_database_env(name: str, tmp_dir: Path) -> dict[str, str]:
    """Environment for a database of its own: a new PostgreSQL database next to
    DATABASE_URL's when it is set, else a SQLite file in ``tmp_dir``."""
    database_url = os.environ.get("DATABASE_URL")
    if not database_url:
        return {"SQLITE_PATH": str(tmp_dir / f"{name}.sqlite3")}
    import psycopg

    from agentsflow.env import database_from_url

    settings = database_from_url(database_url)
    admin = dict(
        host=settings["HOST"] or None,
        port=settings["PORT"] or None,
        user=settings["USER"] or None,
        password=settings["PASSWORD"] or None,
        dbname="postgres",
        autocommit=True,
    )
    database = f"{settings['NAME']}_{name}"
    with psycopg.connect(**admin) as conn:
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
