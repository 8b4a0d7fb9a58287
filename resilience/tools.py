"""Fault injectors and a bounded load loop for the resilience suites.

Everything here targets loopback only, and every loop is bounded in count and time.

- ``FaultProxy``: a TCP proxy in front of a server (PostgreSQL) that passes traffic,
  refuses new connections (ECONNREFUSED, like a stopped server), drops every open
  connection, black-holes new ones (accepts, forwards nothing) or delays every chunk.
- ``PrivateRedis``: a redis-server of the test's own on a free port, to stop, start,
  ``DEBUG SLEEP`` or ``CLIENT PAUSE`` without touching the shared one.
- ``Load``: a few threads sending requests until a count or a deadline, recording
  each answer's status, content type and latency (p95 by nearest rank).
- ``worker_pids`` / ``pids_owning``: which worker process of a server holds a given
  TCP connection (from /proc), to kill the right worker or count connections per process.
- ``pg_backends`` / ``pg_terminate``: PostgreSQL backends of one database, counted or ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import os
import shutil
import socket
import struct
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from agentsflow.testing import free_port, pg_admin_connection

LOOPBACK = "127.0.0.1"


# --- TCP fault proxy -------------------------------------------------------------------


class FaultProxy:
    """A TCP proxy on a free loopback port in front of ``target_port``.

    Modes for new connections: ``pass`` (forward), ``refuse`` (the listening socket is
    closed, so connecting fails with ECONNREFUSED) and ``blackhole`` (accepted, then
    nothing is forwarded either way). ``drop_all()`` resets every open connection;
    ``delay`` (seconds) is added before each forwarded chunk, both ways.
    """

    def __init__(self, target_port: int, target_host: str = LOOPBACK) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self.mode = "pass"
        self.delay = 0.0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fault-proxy", daemon=True)
        self._server: asyncio.base_events.Server | None = None
        self._pairs: dict[tuple[asyncio.StreamWriter, asyncio.StreamWriter], int] = {}  # -> client's port
        self._held: set[asyncio.StreamWriter] = set()

    # lifecycle

    def start(self) -> FaultProxy:
        self._thread.start()
        self._call(self._listen())
        return self

    def close(self) -> None:
        if not self._thread.is_alive():
            return
        self._call(self._unlisten())
        self._call(self._drop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # faults

    def passthrough(self) -> None:
        """Forward new connections again (and stop delaying)."""
        self.mode, self.delay = "pass", 0.0
        self._call(self._listen())

    def refuse(self) -> None:
        """New connections fail with ECONNREFUSED; open ones are left alone."""
        self.mode = "refuse"
        self._call(self._unlisten())

    def blackhole(self) -> None:
        """New connections are accepted and then never answered."""
        self.mode = "blackhole"
        self._call(self._listen())

    def drop_all(self) -> int:
        """Reset every open connection; returns how many there were."""
        return self._call(self._drop())

    def stop_server(self) -> None:
        """What clients see when the server behind stops: open connections reset, new ones refused."""
        self.refuse()
        self.drop_all()

    def open_client_ports(self) -> list[int]:
        """The client-side port of every connection being forwarded now."""
        return self._call(self._client_ports())

    # internals (run on the proxy's loop)

    def _call(self, coro, timeout: float = 10.0):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def _client_ports(self) -> list[int]:
        return list(self._pairs.values())

    async def _listen(self) -> None:
        if self._server is not None:
            return
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((LOOPBACK, self.port))
        sock.listen(256)
        self._server = await asyncio.start_server(self._handle, sock=sock)

    async def _unlisten(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

    async def _drop(self) -> int:
        writers = [*self._held, *(writer for pair in self._pairs for writer in pair)]
        for writer in writers:
            _reset(writer)
        count = len(self._held) + len(self._pairs)
        self._held.clear()
        self._pairs.clear()
        return count

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.mode == "blackhole":
            self._held.add(writer)
            with contextlib.suppress(Exception):
                while await reader.read(65536):
                    pass
            self._held.discard(writer)
            _reset(writer)
            return
        try:
            upstream_reader, upstream_writer = await asyncio.wait_for(asyncio.open_connection(*self.target), 5)
        except (OSError, TimeoutError):
            _reset(writer)
            return
        pair = (writer, upstream_writer)
        self._pairs[pair] = writer.get_extra_info("peername")[1]
        try:
            await asyncio.gather(self._pump(reader, upstream_writer), self._pump(upstream_reader, writer))
        finally:
            self._pairs.pop(pair, None)
            for side in pair:
                with contextlib.suppress(Exception):
                    side.close()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                if self.delay:
                    await asyncio.sleep(self.delay)
                writer.write(data)
                await writer.drain()
        except (OSError, ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP reset, as a crashed server or a cut network would."""
    with contextlib.suppress(Exception):
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(Exception):
        writer.transport.abort()


# --- Private Redis ---------------------------------------------------------------------------


def redis_server_binary() -> str | None:
    return shutil.which("redis-server")


class PrivateRedis:
    """A redis-server of our own on a free loopback port (no persistence), which the
    tests may stop, restart, put to sleep or pause freely."""

    def __init__(self, log_path: Path | None = None) -> None:
        self.port = free_port()
        self.log_path = log_path or Path(tempfile.gettempdir()) / f"agentsflow-redis-{self.port}.log"
        self.process: subprocess.Popen | None = None

    def url(self, db: int = 0) -> str:
        return f"redis://{LOOPBACK}:{self.port}/{db}"

    def start(self, timeout: float = 10.0) -> PrivateRedis:
        binary = redis_server_binary()
        if binary is None:
            raise RuntimeError("redis-server is not installed")
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [
                    binary,
                    "--port",
                    str(self.port),
                    "--bind",
                    LOOPBACK,
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--daemonize",
                    "no",
                    "--enable-debug-command",
                    "local",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited: {self.log_path.read_text()[-2000:]}")
            if self.ping():
                return self
            time.sleep(0.05)
        raise RuntimeError(f"redis-server not up after {timeout}s")

    def stop(self) -> None:
        """Stop it the way a service manager does (SIGTERM: clients are disconnected)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def __enter__(self) -> PrivateRedis:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def client(self, timeout: float = 2.0):
        import redis

        return redis.Redis(host=LOOPBACK, port=self.port, socket_timeout=timeout, socket_connect_timeout=timeout)

    def ping(self) -> bool:
        try:
            return bool(self.client(0.5).ping())
        except Exception:
            return False

    def debug_sleep(self, seconds: float) -> threading.Thread:
        """``DEBUG SLEEP seconds`` (the server answers nobody meanwhile); returns the
        thread waiting for it, already started."""
        client = self.client(timeout=seconds + 10)
        thread = threading.Thread(
            target=client.execute_command, args=("DEBUG", "SLEEP", str(seconds)), name="redis-sleep", daemon=True
        )
        thread.start()
        return thread

    def client_pause(self, milliseconds: int) -> None:
        """``CLIENT PAUSE ms ALL``: every client's commands wait that long."""
        self.client().execute_command("CLIENT", "PAUSE", str(milliseconds), "ALL")

    def dbsize(self, db: int = 0) -> int:
        import redis

        return redis.Redis(host=LOOPBACK, port=self.port, db=db, socket_timeout=2).dbsize()


# --- Bounded load loop -----------------------------------------------------------------------


def percentile(values: Iterable[float], q: float) -> float | None:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    if not ordered:
        return None
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


@dataclass(frozen=True, slots=True)
class Sample:
    at: float  # seconds since the load started (when the request was sent)
    latency: float  # seconds
    status: int  # 0: no answer (connection refused or reset, client timeout)
    method: str
    path: str
    content_type: str = ""
    body: str = ""  # the first 300 characters of a non-2xx answer, or the client error

    @property
    def is_json(self) -> bool:
        return self.content_type.startswith("application/json")


@dataclass
class LoadResult:
    samples: list[Sample] = field(default_factory=list)

    def between(self, start: float, end: float = math.inf) -> LoadResult:
        """The samples sent in [start, end) seconds after the load started."""
        return LoadResult([s for s in self.samples if start <= s.at < end])

    def where(self, predicate: Callable[[Sample], bool]) -> LoadResult:
        return LoadResult([s for s in self.samples if predicate(s)])

    @property
    def count(self) -> int:
        return len(self.samples)

    @property
    def statuses(self) -> Counter:
        return Counter(s.status for s in self.samples)

    @property
    def server_errors(self) -> list[Sample]:
        """5xx answers and requests that got no answer at all."""
        return [s for s in self.samples if s.status >= 500 or s.status == 0]

    def p(self, q: float) -> float:
        """Latency percentile in milliseconds (0 when there are no samples)."""
        value = percentile((s.latency for s in self.samples), q)
        return 0.0 if value is None else value * 1000

    @property
    def p95_ms(self) -> float:
        return self.p(0.95)

    @property
    def max_ms(self) -> float:
        return max((s.latency for s in self.samples), default=0.0) * 1000

    def describe(self) -> str:
        codes = ", ".join(f"{code}×{n}" for code, n in sorted(self.statuses.items()))
        return f"{self.count} requests ({codes}), p95 {self.p95_ms:.0f} ms, max {self.max_ms:.0f} ms"


Target = tuple[str, str] | tuple[str, str, dict]


def send(client: httpx.Client, method: str, path: str, *, started_at: float = 0.0, **kwargs) -> Sample:
    """One request, timed; a transport error becomes status 0."""
    sent = time.monotonic()
    try:
        response = client.request(method, path, **kwargs)
    except httpx.HTTPError as exc:
        return Sample(sent - started_at, time.monotonic() - sent, 0, method, path, body=repr(exc)[:300])
    latency = time.monotonic() - sent
    body = "" if response.status_code < 300 else response.text[:300]
    return Sample(
        sent - started_at, latency, response.status_code, method, path, response.headers.get("content-type", ""), body
    )


class Load:
    """``concurrency`` threads cycling through ``targets`` until ``max_requests`` have
    been sent, ``max_seconds`` have passed, or ``stop()`` is called.

    Use it as a context manager around the fault; ``mark()`` gives the time since
    the start, to cut ``result`` into before / during / after windows.
    """

    def __init__(
        self,
        base_url: str,
        targets: Sequence[Target],
        *,
        headers: dict[str, str] | None = None,
        concurrency: int = 4,
        max_requests: int = 5000,
        max_seconds: float = 60.0,
        timeout: float = 10.0,
        pause: float = 0.0,
    ) -> None:
        self.base_url = base_url
        self.targets = list(targets)
        self.headers = headers or {}
        self.concurrency = concurrency
        self.max_requests = max_requests
        self.max_seconds = max_seconds
        self.timeout = timeout
        self.pause = pause  # seconds each thread waits between requests
        self.result = LoadResult()
        self._lock = threading.Lock()
        self._sent = 0
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.started_at = 0.0

    def mark(self) -> float:
        return time.monotonic() - self.started_at

    def start(self) -> Load:
        # Clients first (making one costs milliseconds of CPU), so every thread starts at once.
        clients = [
            httpx.Client(base_url=self.base_url, headers=self.headers, timeout=self.timeout, verify=False)  # noqa: S501 (loopback HTTP)
            for _ in range(self.concurrency)
        ]
        cycle = itertools.cycle(self.targets)
        self.started_at = time.monotonic()
        for n, client in enumerate(clients):
            thread = threading.Thread(target=self._worker, args=(client, cycle), name=f"load-{n}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> LoadResult:
        self._stop.set()
        for thread in self._threads:
            thread.join(self.timeout + 5)
        return self.result

    def __enter__(self) -> Load:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _next(self, cycle) -> Target | None:
        with self._lock:
            if self._stop.is_set() or self._sent >= self.max_requests or self.mark() >= self.max_seconds:
                return None
            self._sent += 1
            return next(cycle)

    def _worker(self, client: httpx.Client, cycle) -> None:
        with client:
            while (target := self._next(cycle)) is not None:
                method, path, *rest = target
                sample = send(client, method, path, started_at=self.started_at, **(rest[0] if rest else {}))
                with self._lock:
                    self.result.samples.append(sample)
                if self.pause:
                    self._stop.wait(self.pause)


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> float | None:
    """Poll ``predicate`` until it holds; the seconds it took, or None after ``timeout``."""
    started = time.monotonic()
    while True:
        with contextlib.suppress(Exception):
            if predicate():
                return time.monotonic() - started
        if time.monotonic() - started >= timeout:
            return None
        time.sleep(interval)


# --- Processes and connections ------------------------------------------------------------------


def worker_pids(parent_pid: int) -> list[int]:
    """The live worker processes of a server: its main process's children, without
    the dead ones not reaped yet and multiprocessing's resource tracker."""
    children: set[int] = set()
    for task in Path(f"/proc/{parent_pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            children.update(int(pid) for pid in (task / "children").read_text().split())
    workers = []
    for pid in sorted(children):
        with contextlib.suppress(OSError):
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            if state not in ("Z", "X") and b"resource_tracker" not in Path(f"/proc/{pid}/cmdline").read_bytes():
                workers.append(pid)
    return workers


def _socket_inodes(local_port: int, remote_port: int | None = None) -> set[str]:
    """Inodes of loopback TCP sockets with this local port (and remote port, if given)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                local, remote, inode = fields[1], fields[2], fields[9]
                if int(local.rsplit(":", 1)[1], 16) != local_port:
                    continue
                if remote_port is not None and int(remote.rsplit(":", 1)[1], 16) != remote_port:
                    continue
                inodes.add(inode)
    return inodes


def pids_owning(pids: Iterable[int], inodes: set[str]) -> dict[str, int]:
    """inode -> the pid (among ``pids``) that has that socket open."""
    owners: dict[str, int] = {}
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    target = os.readlink(fd)
                    if target.startswith("socket:[") and target[8:-1] in inodes:
                        owners[target[8:-1]] = pid
    return owners


def pid_serving(pids: Iterable[int], server_port: int, client_port: int) -> int | None:
    """Which of ``pids`` holds the server side of the connection from ``client_port``."""
    owners = pids_owning(pids, _socket_inodes(server_port, client_port))
    return next(iter(owners.values()), None)


def connections_per_pid(pids: Iterable[int], client_ports: Iterable[int]) -> Counter:
    """How many of the connections made from ``client_ports`` each pid holds."""
    inodes = set().union(*(_socket_inodes(port) for port in client_ports)) if client_ports else set()
    return Counter(pids_owning(pids, inodes).values())


# --- PostgreSQL ----------------------------------------------------------------------------------


def pg_admin(database_url: str, dbname: str = "postgres"):
    """An autocommit connection to the real server (never through a proxy)."""
    return pg_admin_connection(database_url, dbname, connect_timeout=5)


def pg_backends(database_url: str, database: str) -> Counter:
    """Backends connected to ``database``, counted by application_name."""
    with pg_admin(database_url) as conn:
        rows = conn.execute(
            "SELECT application_name, count(*) FROM pg_stat_activity WHERE datname = %s GROUP BY 1", [database]
        ).fetchall()
    return Counter(dict(rows))


def pg_terminate(database_url: str, database: str, application_name: str = "agentsflow") -> int:
    """End every backend of ``database`` with that application_name; returns how many."""
    with pg_admin(database_url) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND application_name = %s AND pid <> pg_backend_pid()",
            [database, application_name],
        ).fetchall()
    return len(rows)
