"""Fault injection against a real server process (uvicorn, two workers, production
settings): Redis stopped or stalled, PostgreSQL stopped or its backends ended, a
pool too small for the load, a statement past its timeout, a model that fails
mid-stream, a worker killed mid-stream.

Each server talks to PostgreSQL through a ``FaultProxy`` and to a ``PrivateRedis``
of its own, so faults never touch the shared services. Each test records its
figure (``record_property("figure", ...)``), which ``python -m resilience.run``
prints as a table; the assertions are the issue's pass figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import orjson
import pytest
import websockets

from agentsflow.env import database_from_url
from agentsflow.testing import (
    Server,
    fresh_database_env,
    loopback_production_env,
    manage,
    prepare_platform,
    run_server,
)
from bench.fake_upstream import run_fake_upstream
from resilience.tools import (
    FaultProxy,
    Load,
    PrivateRedis,
    connections_per_pid,
    pg_admin,
    pg_backends,
    pg_terminate,
    pid_serving,
    redis_server_binary,
    send,
    wait_until,
    worker_pids,
)

pytestmark = [pytest.mark.server, pytest.mark.postgres, pytest.mark.slow]

if redis_server_binary() is None and os.environ.get("AGENTSFLOW_REQUIRE_SERVICES") != "1":
    pytestmark.append(pytest.mark.skip(reason="needs redis-server (apt-get install redis-server)"))

WORKERS = 2
LIMITED = 20  # requests per minute of the key that shows the rate limits
MODELS = [
    {"name": "echo", "provider": "fake", "upstream_model": "echo", "context_window": 4096, "max_output_tokens": 256},
    {
        "name": "slow",  # about 20 s of streaming
        "provider": "fake",
        "upstream_model": "tokens-600+tps-30",
        "context_window": 4096,
        "max_output_tokens": 1024,
    },
    {
        "name": "broken",  # three chunks, then the connection drops
        "provider": "fake",
        "upstream_model": "fail-mid+tps-20",
        "context_window": 4096,
        "max_output_tokens": 256,
    },
]


# --- the platform under test --------------------------------------------------------------


@dataclass
class Stack:
    server: Server
    redis: PrivateRedis
    proxy: FaultProxy
    key: str  # a key whose rate limit the load never reaches
    email: str
    database: str
    database_url: str  # the real server, not through the proxy
    conversation_id: int = 0
    extra_keys: list[str] = field(default_factory=list)

    def headers(self, key: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.key}"}

    def client(self, key: str | None = None, **kwargs) -> httpx.Client:
        # verify=False: plain HTTP on loopback, and it spares loading the CA bundle per client.
        return httpx.Client(base_url=self.server.url, headers=self.headers(key), timeout=15, verify=False, **kwargs)

    def new_key(self, *, rate_limit: int = 1_000_000) -> str:
        """A key nobody has used yet (so no process has it cached)."""
        env = {"DATABASE_URL": self.database_url}
        return manage("issuekey", self.email, "--scopes", "chat,conversations:read,admin", "--rate-limit",
                      str(rate_limit), env=env).strip()  # fmt: skip

    def pids(self) -> list[int]:
        return worker_pids(self.server.process.pid)

    @property
    def ws_url(self) -> str:
        return self.server.url.replace("http", "ws", 1) + "/ws/chat/"

    def load_targets(self) -> list[tuple]:
        """The REST mix of every load: reads through cache and database, and a send."""
        cid = self.conversation_id
        return [
            ("GET", "/api/me"),
            ("GET", "/api/conversations"),
            ("GET", f"/api/conversations/{cid}"),
            ("GET", f"/api/conversations/{cid}/messages?page_size=5"),
            ("GET", "/api/models"),
            ("GET", "/api/quota"),
            ("POST", "/api/chat", {"json": {"content": "ping under load", "model": "echo"}}),
        ]


def _via(database_url: str, port: int) -> str:
    parts = urlsplit(database_url)
    host = parts.hostname or "127.0.0.1"
    userinfo = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    return urlunsplit(parts._replace(netloc=f"{userinfo}{host}:{port}"))


@contextlib.contextmanager
def platform(name: str, tmp: Path, upstream: str, **settings: str) -> Iterator[Stack]:
    """A migrated database of its own, a private Redis, a proxy in front of
    PostgreSQL and a uvicorn server with two workers in production settings."""
    env = {
        **fresh_database_env(f"faults_{name}", tmp),
        "AGENTSFLOW_VAR_DIR": str(tmp),
        "EXTRA_PROVIDERS": "fake",
        "FAKE_BASE_URL": upstream,
        "AGENTSFLOW_MODELS": json.dumps(MODELS),
        "PROVIDER_RETRIES": "0",
        "ACCESS_LOG": "false",
        **loopback_production_env("faults-test-" + "k" * 60),
        "LOG_LEVEL": "warning",
        # Small pools: the PostgreSQL on this machine is shared (max_connections 100).
        "DB_POOL_MIN_SIZE": "1",
        "DB_POOL_MAX_SIZE": "8",
    }
    database_url = env["DATABASE_URL"]
    platform_ = prepare_platform(env)
    env["STATIC_ROOT"] = str(tmp / "static")  # production serves hashed names from the manifest
    manage("collectstatic", "--no-input", env=env)
    real = database_from_url(database_url)
    with PrivateRedis(tmp / f"redis-{name}.log") as redis, FaultProxy(int(real["PORT"] or 5432)) as proxy:
        server_env = {
            **env,
            **settings,
            "DATABASE_URL": _via(database_url, proxy.port),
            "REDIS_URL": redis.url(0),
        }
        with run_server(server_env, workers=WORKERS, log_path=tmp / f"server-{name}.log") as server:
            stack = Stack(server, redis, proxy, "", platform_.email, real["NAME"], database_url)
            stack.key = stack.new_key()
            wait_until(lambda: len(stack.pids()) == WORKERS, 10)
            with stack.client() as client:
                first = client.post("/api/chat", json={"content": "hello", "model": "echo"})
                assert first.status_code == 201, first.text
                stack.conversation_id = first.json()["conversation_id"]
            yield stack


def stack_fixture(name: str, **settings: str):
    """A module-scoped fixture for the tests that share one ``platform(name, ...)``
    with these settings (bind it to a module name: ``pg_stack = stack_fixture("pg")``)."""

    @pytest.fixture(scope="module")
    def stack(upstream, tmp_path_factory) -> Iterator[Stack]:
        with platform(name, tmp_path_factory.mktemp(name), upstream, **settings) as running:
            yield running

    return stack


@pytest.fixture(autouse=True)
def _show_figure(request):
    """Print the recorded figure after each test, so a failure shows it too."""
    yield
    for name, value in request.node.user_properties:
        print(f"{name}: {value}")


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    with run_fake_upstream(separate_process=True) as base_url:
        yield base_url


# --- helpers -----------------------------------------------------------------------------------


async def ws_open(stack: Stack, key: str | None = None):
    ws = await websockets.connect(stack.ws_url, additional_headers=stack.headers(key), open_timeout=5)
    ready = orjson.loads(await asyncio.wait_for(ws.recv(), 5))
    assert ready["type"] == "ready", ready
    return ws


async def ws_until(ws, predicate, timeout: float = 30) -> list[dict]:
    """Events until one matches ``predicate`` (included)."""
    events = []
    deadline = time.monotonic() + timeout
    while True:
        event = orjson.loads(await asyncio.wait_for(ws.recv(), max(0.1, deadline - time.monotonic())))
        events.append(event)
        if predicate(event):
            return events


async def ws_close_code(ws, timeout: float) -> tuple[int | None, float, list[dict]]:
    """Read until the server closes the socket: (close code, seconds it took, events read).
    The code is 1006 when the connection ended without a close frame, None when the
    socket was still open after ``timeout``."""
    started, events = time.monotonic(), []
    try:
        while True:
            events.append(orjson.loads(await asyncio.wait_for(ws.recv(), timeout - (time.monotonic() - started))))
    except websockets.ConnectionClosed as closed:
        return (closed.rcvd.code if closed.rcvd else 1006), time.monotonic() - started, events
    except TimeoutError:
        return None, time.monotonic() - started, events


def is_final(message_id: int):
    return lambda e: e.get("message_id") == message_id and e["type"] in ("done", "error") and "seq" in e


def burst(stack: Stack, key: str, count: int, concurrency: int = 6) -> list[httpx.Response]:
    """``count`` requests, each on a new connection (so the workers share them), a few at a time."""
    fresh = httpx.Limits(max_keepalive_connections=0)
    with stack.client(key, limits=fresh) as client, ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(lambda _: client.get("/api/me"), range(count)))


def wait_for_minute_room(seconds: float) -> None:
    """Rate-limit windows are wall-clock minutes: start a count that needs ``seconds``
    early enough in one that it does not straddle two."""
    into = time.time() % 60
    if into > 60 - seconds:
        time.sleep(60 - into + 0.2)


def shared_limits_back(stack: Stack, key: str, *, streak: int = 10, timeout: float = 20) -> float | None:
    """When the rate limits were shared between processes again: requests one at a
    time, each on a new connection (so either worker), until ``streak`` in a row were
    each counted in Redis. Returns the monotonic time the streak began (None on timeout)."""
    redis = stack.redis.client()
    pattern = f"rl:key:{key[:12]}:*"  # core.ratelimit's key for the key's public prefix

    def counted() -> int | None:
        try:
            return sum(int(redis.get(name) or 0) for name in redis.scan_iter(pattern))
        except Exception:
            return None

    deadline, began, run = time.monotonic() + timeout, None, 0
    while time.monotonic() < deadline:
        before, sent_at = counted(), time.monotonic()
        status = burst(stack, key, 1)[0].status_code
        after = counted()
        if status == 200 and before is not None and after == before + 1:
            began, run = began or sent_at, run + 1
            if run == streak:
                return began
        else:
            began, run = None, 0
    return None


def error_shape_ok(samples) -> bool:
    return all(s.is_json and f'"status":{s.status}' in s.body for s in samples)


# --- 1, 2: Redis ---------------------------------------------------------------------------------


@contextlib.contextmanager
def restarting(redis: PrivateRedis) -> Iterator[None]:
    """Whatever happens in the block, Redis runs again after it."""
    try:
        yield
    finally:
        if not redis.ping():
            redis.stop()
            redis.start()


redis_stack = stack_fixture("redis")


async def test_f1_redis_stopped_under_load(redis_stack: Stack, record_property):
    """F1: Redis stops for about 8 s under load, then comes back on the same port."""
    stack = redis_stack
    record_property("scenario", "F1 Redis stopped under load")
    limited_during, limited_after = stack.new_key(rate_limit=LIMITED), stack.new_key(rate_limit=LIMITED)
    recovery_key = stack.new_key(rate_limit=100_000)

    # A reply streaming to a socket when Redis stops.
    ws = await ws_open(stack)
    await ws.send(json.dumps({"type": "send", "content": "keep going", "model": "slow"}))
    accepted = orjson.loads(await ws.recv())
    reply_id = accepted["message_id"]
    seen = await ws_until(ws, lambda e: e["type"] == "delta" and e["seq"] >= 5)

    load = Load(stack.server.url, stack.load_targets(), headers=stack.headers(), concurrency=4, max_seconds=60)
    with load, restarting(stack.redis):
        await asyncio.sleep(2)
        down_at = load.mark()
        await asyncio.to_thread(stack.redis.stop)

        close_code, close_seconds, more = await ws_close_code(ws, timeout=10)
        seen += more
        last_seq = max(e["seq"] for e in seen if e.get("message_id") == reply_id)

        new_socket = "open"
        try:
            probe = await websockets.connect(stack.ws_url, additional_headers=stack.headers(), open_timeout=5)
            new_socket, _, _ = await ws_close_code(probe, timeout=5)
        except websockets.InvalidStatus as refused:
            new_socket = f"HTTP {refused.response.status_code}"

        await asyncio.to_thread(wait_for_minute_room, 10)
        during = await asyncio.to_thread(burst, stack, limited_during, 3 * LIMITED)

        # The operators' sweeper runs meanwhile: it must not take the live reply for an orphan.
        await asyncio.sleep(max(0.0, 6 - (load.mark() - down_at)))
        swept = await asyncio.to_thread(
            manage, "sweep_replies", env={"DATABASE_URL": stack.database_url, "REDIS_URL": stack.redis.url()}
        )
        up_at = load.mark()
        await asyncio.to_thread(stack.redis.start)
        returned_at = time.monotonic()
        shared_at = await asyncio.to_thread(shared_limits_back, stack, recovery_key)
        recovered_in = None if shared_at is None else shared_at - returned_at

        # The client reconnects and resumes the reply where it left off.
        ws2 = await ws_open(stack)
        await ws2.send(json.dumps({"type": "resume", "message_id": reply_id, "last_seq": last_seq}))
        resumed = await ws_until(ws2, is_final(reply_id), timeout=40)
        await ws2.send(json.dumps({"type": "send", "content": "after the outage", "model": "echo"}))
        echo_id = orjson.loads(await ws2.recv())["message_id"]
        echoed = (await ws_until(ws2, is_final(echo_id), timeout=10))[-1]
        await ws2.close()
        await asyncio.sleep(2)

    await asyncio.to_thread(wait_for_minute_room, 10)
    after = await asyncio.to_thread(burst, stack, limited_after, 3 * LIMITED)
    with stack.client() as client:
        stored = client.get(f"/api/messages/{reply_id}").json()

    result = load.result
    outage = result.between(down_at, up_at)
    ok_during = sum(r.status_code == 200 for r in during)
    ok_after = sum(r.status_code == 200 for r in after)
    final = resumed[-1]
    record_property(
        "figure",
        f"outage {outage.count} req: p95 {outage.p95_ms:.0f} ms, {len(result.server_errors)} 5xx of {result.count}; "
        f"limit {LIMITED}/min → {ok_during} allowed down (per process), {ok_after} up; "
        f"socket closed {close_code} in {close_seconds:.1f} s, new socket {new_socket}, resumed; "
        f"recovered {recovered_in if recovered_in is None else round(recovered_in, 1)} s after Redis returned",
    )

    assert not result.server_errors, result.server_errors[:5]
    assert outage.count > 20 and outage.p95_ms < 1000, outage.describe()
    # Limits as documented: with Redis down each process counts on its own.
    assert LIMITED <= ok_during <= WORKERS * LIMITED, Counter(r.status_code for r in during)
    rejected = [r for r in during if r.status_code == 429]
    assert rejected and all(r.json()["code"] == "rate_limited" and r.headers["Retry-After"] for r in rejected)
    assert ok_after == LIMITED, "the shared count is back once Redis is"
    # Sockets: told at once, with a code that says "try again", and able to resume.
    assert close_code in (1011, 1012, 1013) and close_seconds < 5, (close_code, close_seconds)
    assert new_socket in (1011, 1012, 1013), new_socket
    assert recovered_in is not None and recovered_in < 5, recovered_in
    assert swept.strip() == "marked 0 interrupted replies", swept
    assert final["type"] == "done" and final["status"] == "complete", final
    assert final["content"] == stored["content"] and stored["status"] == "complete"
    assert echoed["type"] == "done" and echoed["content"] == "after the outage"
    # Logged, not flooded: a line per failing component, no tracebacks (there were
    # ~960 "channel layer send failed" lines, one per batch, and one traceback a second).
    log = stack.server.log()
    assert "Traceback" not in log, log[-3000:]
    assert log.count("channel layer send failed") <= WORKERS, log.count("channel layer send failed")


def test_f2_redis_slow(redis_stack: Stack, record_property):
    """F2: Redis answers nobody for 3 s (DEBUG SLEEP 3), then every client waits 3 s (CLIENT PAUSE)."""
    stack = redis_stack
    record_property("scenario", "F2 Redis slow (DEBUG SLEEP 3, CLIENT PAUSE 3 s)")
    assert wait_until(stack.redis.ping, 10) is not None
    assert wait_until(lambda: db_answers(stack), 10) is not None
    load = Load(stack.server.url, stack.load_targets(), headers=stack.headers(), concurrency=4, max_seconds=30)
    with load:
        time.sleep(1.5)
        slept_at = load.mark()
        sleeper = stack.redis.debug_sleep(3)
        sleeper.join(10)
        woke_at = load.mark()
        time.sleep(1.5)
        paused_at = load.mark()
        stack.redis.client_pause(3000)
        time.sleep(3)
        resumed_at = load.mark()
        time.sleep(1.5)
    result = load.result
    slept, paused = result.between(slept_at, woke_at), result.between(paused_at, resumed_at)
    record_property(
        "figure",
        f"DEBUG SLEEP 3: p95 {slept.p95_ms:.0f} ms ({slept.count} req); "
        f"CLIENT PAUSE 3 s: p95 {paused.p95_ms:.0f} ms ({paused.count} req); "
        f"{len(result.server_errors)} 5xx of {result.count}",
    )
    assert not result.server_errors, result.server_errors[:5]
    assert slept.count > 10 and slept.p95_ms < 1000, slept.describe()
    assert paused.count > 10 and paused.p95_ms < 1000, paused.describe()


# --- 3, 5, 6: PostgreSQL down, statement timeout, provider failing -------------------------------


pg_stack = stack_fixture("pg", DB_STATEMENT_TIMEOUT_MS="2000")


DB_TARGETS = ("/api/conversations/{cid}", "/api/conversations/{cid}/messages?page_size=5")


def db_targets(stack: Stack) -> list[tuple]:
    return [("GET", path.format(cid=stack.conversation_id)) for path in DB_TARGETS] + [("GET", "/api/me")]


def db_answers(stack: Stack) -> bool:
    with stack.client() as client:
        return all(client.get(path).status_code == 200 for _, path in db_targets(stack))


OUTAGE = 40


def test_f3_postgres_stopped(pg_stack: Stack, record_property):
    """F3a: PostgreSQL stops (open connections reset, new ones refused) for 40 s under
    load: long enough for the pool's reconnect delay to have grown past 10 s."""
    stack = pg_stack
    record_property("scenario", "F3 PostgreSQL stopped")
    fresh_key = stack.new_key()  # not cached anywhere: authenticating it needs the database
    load = Load(stack.server.url, db_targets(stack), headers=stack.headers(), concurrency=4, max_seconds=OUTAGE + 30)
    with load, contextlib.ExitStack() as undo:
        time.sleep(1.5)
        down_at = load.mark()
        stack.proxy.stop_server()
        undo.callback(stack.proxy.passthrough)  # whatever fails below
        time.sleep(1)
        with stack.client(fresh_key) as client:
            unknown_key = send(client, "GET", "/api/me")
            ready = send(client, "GET", "/ready")
            page = send(client, "GET", "/accounts/login/")
        time.sleep(max(0.0, OUTAGE - (load.mark() - down_at)))
        up_at = load.mark()
        stack.proxy.passthrough()
        healed_in = wait_until(lambda: db_answers(stack), 20, 0.1)
        healed_at = load.mark()
        time.sleep(2)
    result = load.result
    outage = result.between(down_at, up_at)
    failed = [s for s in result.samples if s.status != 200]
    after = result.between(healed_at)
    record_property(
        "figure",
        f"{OUTAGE} s outage: {outage.count} req, {outage.statuses[503]}×503 JSON, slowest {outage.max_ms / 1000:.1f} s, "
        f"no 500; unknown key {unknown_key.status}, /ready {ready.status}; "
        f"healed {healed_in if healed_in is None else round(healed_in, 1)} s after it returned",
    )
    assert {s.status for s in failed} <= {503}, Counter(s.status for s in failed)
    assert error_shape_ok(failed), failed[:3]
    assert outage.statuses[503] > 0 and outage.max_ms < 6000, outage.describe()
    assert unknown_key.status == 503 and unknown_key.is_json, unknown_key
    assert ready.status == 503 and ready.is_json, ready
    assert page.status in (200, 503), page  # the sign-in page needs no database; never a 500
    assert healed_in is not None and healed_in < 10
    assert after.count > 10 and after.statuses == Counter({200: after.count}), after.describe()


def test_f3_postgres_backends_terminated(pg_stack: Stack, record_property):
    """F3b: every backend of the platform's database is terminated under load."""
    stack = pg_stack
    record_property("scenario", "F3 PostgreSQL backends terminated")
    assert wait_until(lambda: db_answers(stack), 10) is not None
    load = Load(stack.server.url, db_targets(stack), headers=stack.headers(), concurrency=4, max_seconds=20)
    with load:
        time.sleep(1.5)
        terminated = pg_terminate(stack.database_url, stack.database)
        done_at = load.mark()
        time.sleep(4)
    result = load.result
    failed = [s for s in result.samples if s.status != 200]
    # A request already running a query when its backend died may fail (503); one sent
    # afterwards must get a healthy connection from the pool.
    after = result.between(done_at + 0.05)
    record_property(
        "figure",
        f"{terminated} backends terminated: {len(failed)} requests in flight failed "
        f"({', '.join(f'{n}×{code}' for code, n in Counter(s.status for s in failed).items()) or 'none'}, "
        f"slowest {max((s.latency for s in failed), default=0):.1f} s); {after.count} sent after: "
        f"{after.statuses[200]}×200, slowest {after.max_ms / 1000:.1f} s",
    )
    assert terminated > 0
    assert {s.status for s in failed} <= {503} and error_shape_ok(failed), failed[:3]
    assert all(s.latency < 6 for s in failed), failed
    assert after.count > 10 and after.statuses == Counter({200: after.count}), after.where(
        lambda s: s.status != 200
    ).samples[:3]


def lock_conversations(stack: Stack, seconds: float) -> threading.Thread:
    """Hold an exclusive lock on the conversations table for ``seconds`` (from the
    real server, not through the proxy): every query on it waits."""
    locked, failed = threading.Event(), []

    def hold() -> None:
        try:
            with pg_admin(stack.database_url, stack.database) as conn, conn.transaction():
                conn.execute("LOCK TABLE conversations IN ACCESS EXCLUSIVE MODE")
                locked.set()
                time.sleep(seconds)
        except Exception as exc:
            failed.append(exc)
            raise

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    assert locked.wait(5), failed
    return thread


def test_f5_statement_timeout(pg_stack: Stack, record_property):
    """F5: a query waits on a lock past DB_STATEMENT_TIMEOUT_MS (2 s here)."""
    stack = pg_stack
    record_property("scenario", "F5 Statement timeout")
    assert wait_until(lambda: db_answers(stack), 10) is not None
    holder = lock_conversations(stack, 4)
    with stack.client() as client:
        slow = send(client, "GET", f"/api/conversations/{stack.conversation_id}")
        holder.join()
        again = send(client, "GET", f"/api/conversations/{stack.conversation_id}")
    record_property(
        "figure",
        f"{slow.status} {json.loads(slow.body).get('code')} after {slow.latency:.1f} s; next request {again.status}",
    )
    assert slow.status in (503, 504) and slow.is_json, slow
    assert 1.9 < slow.latency < 3.5, slow.latency
    assert again.status == 200


def sse_events(response: httpx.Response) -> list[dict]:
    return [orjson.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: ")]


async def test_f6_provider_fails_mid_stream(pg_stack: Stack, record_property):
    """F6: the model's connection drops after three chunks (SSE and WebSocket)."""
    stack = pg_stack
    record_property("scenario", "F6 Provider fails mid-stream")
    pids = stack.pids()

    def over_sse() -> tuple[list[dict], dict]:
        with stack.client() as client:
            with client.stream("POST", "/api/chat", json={"content": "x", "model": "broken", "stream": True}) as r:
                assert r.status_code == 200, r.read()
                events = sse_events(r)
            stored = client.get(f"/api/messages/{events[0]['message_id']}").json()
        return events, stored

    events, stored = await asyncio.to_thread(over_sse)
    ws = await ws_open(stack)
    await ws.send(json.dumps({"type": "send", "content": "x", "model": "broken"}))
    ws_reply = orjson.loads(await ws.recv())["message_id"]
    ws_events = await ws_until(ws, is_final(ws_reply), timeout=15)
    await ws.send(json.dumps({"type": "send", "content": "still here", "model": "echo"}))
    echo_id = orjson.loads(await ws.recv())["message_id"]
    echoed = (await ws_until(ws, is_final(echo_id), timeout=10))[-1]
    await ws.close()
    with stack.client() as client:
        ws_stored = client.get(f"/api/messages/{ws_reply}").json()
        after = client.post("/api/chat", json={"content": "and REST too", "model": "echo"})

    partial = "".join(e["text"] for e in events if e["type"] == "delta")
    final = events[-1]
    record_property(
        "figure",
        f"SSE: {sum(e['type'] == 'delta' for e in events)} deltas then '{final['type']}' ({final.get('code')}), "
        f"stored {stored['status']} with {len(stored['content'])} chars; WebSocket: '{ws_events[-1]['type']}', "
        f"stored {ws_stored['status']}; next replies ok",
    )
    assert final["type"] == "error" and final["status"] == "error", final
    assert partial and stored["status"] == "error" and stored["content"] == partial == final["content"]
    assert ws_events[-1]["type"] == "error" and ws_stored["status"] == "error" and ws_stored["content"]
    assert echoed["type"] == "done" and echoed["content"] == "still here"
    assert after.status_code == 201 and after.json()["message"]["content"] == "and REST too"
    assert stack.pids() == pids, "no worker died"


# --- 4: pool exhaustion ------------------------------------------------------------------------------

POOL = 3


pool_stack = stack_fixture("pool", DB_POOL_MIN_SIZE="1", DB_POOL_MAX_SIZE=str(POOL), DB_POOL_TIMEOUT="1")


def test_f4_pool_exhausted(pool_stack: Stack, record_property):
    """F4: 16 concurrent requests that each wait 2.5 s on the database, against
    pools of 3 connections per worker."""
    stack = pool_stack
    record_property("scenario", "F4 More slow requests than the pool holds")
    concurrent = 16
    pids = stack.pids()
    peak_per_pid: Counter = Counter()
    peak_backends = 0
    sampling = threading.Event()

    def sample() -> None:
        nonlocal peak_backends
        while not sampling.is_set():
            for pid, n in connections_per_pid(pids, stack.proxy.open_client_ports()).items():
                peak_per_pid[pid] = max(peak_per_pid[pid], n)
            peak_backends = max(peak_backends, pg_backends(stack.database_url, stack.database)["agentsflow"])
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    holder = lock_conversations(stack, 2.5)
    load = Load(
        stack.server.url,
        [("GET", f"/api/conversations/{stack.conversation_id}")],
        headers=stack.headers(),
        concurrency=concurrent,
        max_requests=concurrent,
        max_seconds=30,
    )
    with load:
        holder.join()
    sampling.set()
    sampler.join()
    result = load.result
    rejected = result.where(lambda s: s.status == 503)
    served = result.where(lambda s: s.status == 200)
    record_property(
        "figure",
        f"{concurrent} concurrent, pool {POOL}×{WORKERS}: {served.count} served, {rejected.count}×503 "
        f"(p95 {rejected.p95_ms:.0f} ms); peak connections per worker {max(peak_per_pid.values(), default=0)}, "
        f"backends {peak_backends}",
    )
    assert result.count == concurrent and served.count + rejected.count == concurrent, result.describe()
    assert rejected.count >= concurrent - POOL * WORKERS and error_shape_ok(rejected.samples)
    assert rejected.max_ms < 2500, rejected.describe()  # DB_POOL_TIMEOUT is 1 s; the lock is held 2.5 s
    assert peak_per_pid and max(peak_per_pid.values()) <= POOL, peak_per_pid
    assert peak_backends <= POOL * WORKERS
    with stack.client() as client:
        assert client.get(f"/api/conversations/{stack.conversation_id}").status_code == 200


# --- 7: a worker killed mid-stream -----------------------------------------------------------------------


kill_stack = stack_fixture("kill")


async def test_f7_worker_killed_mid_stream(kill_stack: Stack, record_property):
    """F7: SIGKILL the worker streaming a reply (over SSE, then over a WebSocket)."""
    stack = kill_stack
    record_property("scenario", "F7 Worker killed mid-stream")

    def stream_then_kill() -> tuple[dict, int, str]:
        client = stack.client()
        events: list[dict] = []
        with client.stream("POST", "/api/chat", json={"content": "remember me", "model": "slow", "stream": True}) as r:
            client_port = r.extensions["network_stream"].get_extra_info("client_addr")[1]
            lines = r.iter_lines()
            for line in lines:
                if line.startswith("data: "):
                    events.append(orjson.loads(line[6:]))
                    if len(events) >= 10:
                        break
            victim = pid_serving(stack.pids(), stack.server.port, client_port)
            assert victim is not None
            os.kill(victim, signal.SIGKILL)
            with contextlib.suppress(httpx.HTTPError):
                for _ in lines:
                    pass
        client.close()
        return events[0], victim, "".join(e.get("text", "") for e in events if e["type"] == "delta")

    start, _victim, partial = await asyncio.to_thread(stream_then_kill)
    killed_at = time.monotonic()
    reply_id, conversation_id = start["message_id"], start["conversation_id"]

    with stack.client() as client:
        messages = client.get(f"/api/conversations/{conversation_id}/messages").json()["results"]
        assert [m["role"] for m in messages] == ["user", "assistant"]
        assert messages[0]["content"] == "remember me"

        def settled() -> bool:
            return client.get(f"/api/messages/{reply_id}").json()["status"] != "streaming"

        settled_in = await asyncio.to_thread(wait_until, settled, 30, 0.5)
        stored = client.get(f"/api/messages/{reply_id}").json()
        listed = client.get(f"/api/conversations/{conversation_id}/messages").json()["results"][-1]

    # The same over a WebSocket: a client resuming an orphaned reply is told it ended.
    ws = await ws_open(stack)
    await ws.send(json.dumps({"type": "send", "content": "and me", "model": "slow"}))
    ws_reply = orjson.loads(await ws.recv())["message_id"]
    await ws_until(ws, lambda e: e["type"] == "delta" and e["seq"] >= 5)
    client_port = ws.local_address[1]
    ws_victim = pid_serving(stack.pids(), stack.server.port, client_port)
    assert ws_victim is not None
    os.kill(ws_victim, signal.SIGKILL)
    code, _, _ = await ws_close_code(ws, 5)
    ws_killed_at = time.monotonic()
    await asyncio.to_thread(wait_until, lambda: len(stack.pids()) == WORKERS, 15)
    ws2 = await ws_open(stack)
    await ws2.send(json.dumps({"type": "resume", "message_id": ws_reply, "last_seq": 5}))
    ws_final = (await ws_until(ws2, is_final(ws_reply), timeout=30))[-1]
    ws_settled_in = time.monotonic() - ws_killed_at
    await ws2.close()

    record_property(
        "figure",
        f"user message kept; SSE reply marked {stored['status']} {settled_in if settled_in is None else round(settled_in, 1)} s "
        f"after the kill with {len(stored['content'])} chars; WebSocket resume got '{ws_final['type']}' "
        f"after {ws_settled_in:.1f} s; workers back to {len(stack.pids())}",
    )
    assert settled_in is not None and time.monotonic() - killed_at < 40
    assert stored["status"] == "error" and stored["content"].startswith(partial) and partial, (stored, partial)
    assert listed["id"] == reply_id and listed["status"] == "error"
    assert code == 1006, code  # the connection dropped with its process
    assert ws_final["type"] == "error" and ws_final["status"] == "error", ws_final
    assert len(stack.pids()) == WORKERS, "the server replaced the killed workers"
