"""Abuse 3, 5, 6 and 9 against a real server process in production settings:
forged X-Forwarded-For, API keys (plaintext nowhere, invalid keys answered alike),
resource bounds, check --deploy and security headers on every response."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import subprocess
import sys

import httpx
import pytest

from agentsflow.testing import BASE_DIR, Platform, manage, prepare_platform
from resilience import abuse_tools as tools

pytestmark = pytest.mark.server

upstream = tools.upstream
fake_platform = tools.fake_platform
WORKERS = 2 if os.environ.get("REDIS_URL") else 1  # several workers need Redis to share limits


@pytest.fixture(scope="module")
def prepared(upstream, tmp_path_factory):
    """One migrated database with a user and an all-scopes key; each test serves it
    with the settings it needs."""
    tmp = tmp_path_factory.mktemp("abuse-http")
    models = tools.fake_models(upstream, {"name": "echo", "upstream_model": "echo"})
    platform = prepare_platform(tools.production_env(tmp, "abuse_http", **models, CHAT_DEFAULT_MODEL="echo"))
    manage("collectstatic", "--no-input", env=platform.env)  # production pages use the manifest
    return platform


def access_log_ips(log: str) -> set[str]:
    """Client addresses in the access log, for the requests the test made (not /health)."""
    ips = set()
    for line in log.splitlines():
        if line.startswith("{") and '"agentsflow.access"' in line:
            entry = json.loads(line)
            if entry.get("path") != "/health":
                ips.add(entry.get("client_ip"))
    return ips


# --- 3. forged X-Forwarded-For ----------------------------------------------------------------

FORGED = [
    "10.0.0.1",
    "203.0.113.9",
    "127.0.0.1",
    "::1",
    "10.0.0.1, 10.0.0.2",
    "203.0.113.9, 127.0.0.1",
    "unknown",
    "not an address",
    "",
    ",, ,",
    "1.2.3.4:5678",
    "[2001:db8::1]:443",
    ", ".join(f"198.51.100.{n}" for n in range(100)),
    "10.0.0.1\t,203.0.113.1",
    "0.0.0.0",
    "255.255.255.255",
]


def spoof_headers(value: str) -> dict[str, str]:
    return {"X-Forwarded-For": value, "X-Real-IP": value or "10.9.9.9", "Forwarded": f"for={value or '10.9.9.9'}"}


def test_abuse3_forged_forwarded_for_cannot_change_the_client_ip(prepared, tmp_path, record_property):
    """No trusted proxy: every forged X-Forwarded-For (and X-Real-IP, Forwarded) lands in
    the one bucket of the real address, for the API limits, the sign-in and key-creation
    zones, the /metrics allow-list and the access log."""
    settings = {
        "RATE_LIMIT_ANONYMOUS": "10",
        "RATE_LIMIT_REGULAR": "100000",
        "AUTH_RATE_LIMITS": "3/m",
        "METRICS_ALLOWED_NETWORKS": "10.0.0.0/8,203.0.113.0/24",
    }
    with tools.serve(prepared, settings, workers=WORKERS, log_path=tmp_path / "server.log") as live:
        api = [httpx.get(f"{live.url}/api/models", headers=spoof_headers(v)) for v in FORGED]
        allowed = [r.status_code for r in api].count(200)
        # A sliding window may round one hit away at a minute boundary: 10 or 11 pass.
        assert allowed in (10, 11) and all(r.status_code == 429 for r in api[allowed:]), [r.status_code for r in api]

        page = httpx.get(f"{live.url}/accounts/login/")
        token = page.cookies["csrftoken"]
        sign_in = [
            httpx.post(
                f"{live.url}/accounts/login/",
                data={"username": live.email, "password": "wrong", "csrfmiddlewaretoken": token},
                headers={"Cookie": f"csrftoken={token}", **spoof_headers(FORGED[n % len(FORGED)])},
            ).status_code
            for n in range(9)
        ]
        # 9 attempts fall in at most two one-minute windows, so one holds 5 > 3.
        assert 429 in sign_in and sign_in.count(200) <= 6, sign_in

        keys = [
            httpx.post(
                f"{live.url}/api/keys",
                json={"name": f"k{n}"},
                headers={"Authorization": f"Bearer {live.key}", **spoof_headers(FORGED[n % len(FORGED)])},
            ).status_code
            for n in range(9)
        ]
        assert 429 in keys and keys.count(201) <= 6, keys

        metrics = [httpx.get(f"{live.url}/metrics", headers=spoof_headers(v)).status_code for v in FORGED]
        assert set(metrics) == {403}, metrics
        ips = access_log_ips(live.server.log())
    assert ips == {"127.0.0.1"}, ips
    record_property(
        "figure",
        f"{len(FORGED)} forged values: API {allowed} of {len(api)} allowed (limit 10), sign-in "
        f"{sign_in.count(429)}/9 and key creation {keys.count(429)}/9 throttled (3/m), /metrics 403 ×{len(metrics)}, "
        f"access log IPs {sorted(ips)}",
    )


def test_abuse3_behind_a_trusted_proxy_only_its_own_entry_counts(prepared, tmp_path, record_property):
    """With the loopback proxy trusted, the client is the address the proxy appended
    (the right-most untrusted one): whatever a client puts before it changes nothing."""
    settings = {"RATE_LIMIT_ANONYMOUS": "10", "TRUSTED_PROXIES": "127.0.0.1/32"}
    with tools.serve(prepared, settings, workers=WORKERS, log_path=tmp_path / "server.log") as live:
        first = [
            httpx.get(f"{live.url}/api/models", headers={"X-Forwarded-For": f"{v}, 203.0.113.7"}).status_code
            for v in FORGED
        ]
        other = httpx.get(f"{live.url}/api/models", headers={"X-Forwarded-For": "10.0.0.1, 203.0.113.8"})
        ips = access_log_ips(live.server.log())
    allowed = first.count(200)
    assert allowed in (10, 11) and set(first[allowed:]) == {429}, first
    assert other.status_code == 200 and other.headers["RateLimit-Remaining"] == "9"
    assert ips == {"203.0.113.7", "203.0.113.8"}, ips
    record_property("figure", f"{len(FORGED)} forged prefixes before the proxy's entry: {allowed} allowed, one bucket")


# --- helpers for a live server ------------------------------------------------------------------


def sign_in(live) -> str:
    """A real sign-in through the form; the session cookie's value."""
    page = httpx.get(f"{live.url}/accounts/login/")
    token = page.cookies["csrftoken"]
    response = httpx.post(
        f"{live.url}/accounts/login/",
        data={"username": live.email, "password": live.password, "csrfmiddlewaretoken": token},
        headers={"Cookie": f"csrftoken={token}"},
    )
    assert response.status_code == 302, response.text[:300]
    return response.cookies["sessionid"]


def shell(env: dict[str, str], code: str):
    """Run Python in ``manage.py shell`` on the served database; its last printed line, as JSON."""
    return json.loads(manage("shell", "-c", code, env=env).strip().splitlines()[-1])


BAD_KEYS_CODE = """
import json
from datetime import timedelta
from django.utils import timezone
from core.models import User
from core.services import api_key_issue, api_key_revoke
owner = User.objects.get(email="live@example.com")
scopes = ["chat", "conversations:read", "analytics:read", "admin"]
revoked, revoked_text = api_key_issue(user=owner, name="revoked", scopes=scopes)
api_key_revoke(key=revoked)
_, expired = api_key_issue(user=owner, name="expired", scopes=scopes, expires_at=timezone.now() - timedelta(seconds=1))
import uuid
inactive = User.objects.create_user(email=f"inactive-{uuid.uuid4().hex}@example.com", password="x" * 12, is_active=False)
_, inactive_text = api_key_issue(user=inactive, name="inactive", scopes=scopes)
print(json.dumps({"revoked": revoked_text, "expired": expired, "inactive owner": inactive_text}))
"""


def invalid_keys(live) -> dict[str, str]:
    """One key of every kind that must not work, all answered alike."""
    from core import keys

    valid = live.key
    body = valid[: keys.PREFIX_LENGTH] + "A" * keys.SECRET_LENGTH
    return {
        "truncated": valid[:-3],
        "bad checksum": valid[:-1] + ("A" if valid[-1] != "A" else "B"),
        "wrong secret": body + keys._checksum(body),
        "unknown prefix": keys.generate().plaintext,
        **shell(live.env, BAD_KEYS_CODE),
        "garbage": "garbage-!#$%&'*+-.^_`|~",
        "overlong": valid + "x" * 4000,
        "empty bearer": "",
    }


# --- 4. WebSocket handshakes: Origin ------------------------------------------------------------

ORIGINS = {
    "none": None,
    "ours": "http://127.0.0.1:8000",
    "ours by name": "https://localhost",
    "foreign": "https://evil.example",
    "null": "null",
    "ours as a subdomain": "http://127.0.0.1.evil.example",
    "ours in the path": "http://evil.example/127.0.0.1",
    "look-alike": "http://localhost.evil.example",
}
# (credentials, origin) → expected: "ready", "4401" (accepted, then closed) or "refused" (HTTP 403).
EXPECTED = {
    ("session", "ours"): "ready",
    ("session", "ours by name"): "ready",
    ("key", "none"): "ready",  # programs send no Origin
    ("key", "ours"): "ready",
    ("key", "ours by name"): "ready",
    ("nothing", "ours"): "4401",
    ("nothing", "ours by name"): "4401",
}


async def handshake(live, credentials: dict[str, str], origin: str | None) -> str:
    import websockets

    headers = dict(credentials)
    if origin is not None:
        headers["Origin"] = origin
    try:
        async with websockets.connect(live.ws_url, additional_headers=headers, open_timeout=10) as ws:
            try:
                first = json.loads(await asyncio.wait_for(ws.recv(), 10))
            except websockets.ConnectionClosed as closed:
                return str(closed.rcvd.code)
            return first["type"]
    except websockets.InvalidStatus as refused:
        return "refused" if refused.response.status_code == 403 else f"HTTP {refused.response.status_code}"


async def test_abuse4_websocket_handshakes_need_our_origin(prepared, tmp_path, record_property):
    """Every pairing of credentials (session cookie, API key, none) and Origin (none,
    ours, foreign, null, look-alikes): a cookie needs one of our origins, a key may come
    without one, and a foreign or null Origin is refused whatever the credentials."""
    with tools.serve(prepared, workers=WORKERS, log_path=tmp_path / "server.log") as live:
        session = await asyncio.to_thread(sign_in, live)
        credentials = {
            "session": {"Cookie": f"sessionid={session}"},
            "key": {"Authorization": f"Bearer {live.key}"},
            "nothing": {},
        }
        results = {
            (who, name): await handshake(live, headers, origin)
            for who, headers in credentials.items()
            for name, origin in ORIGINS.items()
        }
    wrong = {case: got for case, got in results.items() if got != EXPECTED.get(case, "refused")}
    assert not wrong, wrong
    refused = list(results.values()).count("refused")
    record_property(
        "figure",
        f"{len(results)} handshakes: {refused} refused (foreign, null, look-alike or missing Origin with a cookie), rest as expected",
    )


# --- 5. API keys --------------------------------------------------------------------------------


PROBES = [
    ("GET", "/api/me", None),
    ("GET", "/api/conversations", None),
    ("POST", "/api/chat", {"content": "probe", "model": "echo"}),
    ("GET", "/api/messages/1/stream", None),
    ("GET", "/v1/models", None),
    ("POST", "/v1/chat/completions", {"model": "echo", "messages": [{"role": "user", "content": "probe"}]}),
]


def answer(response: httpx.Response) -> tuple:
    return response.status_code, response.content, response.headers.get("WWW-Authenticate")


async def test_abuse5_invalid_keys_of_every_kind_are_answered_alike(prepared, tmp_path, record_property):
    """Truncated, bad checksum, wrong secret, unknown, revoked, expired, inactive owner,
    garbage, overlong and empty keys, as a bearer token and as X-API-Key, on each kind of
    endpoint (DRF, async, SSE, OpenAI-compatible, WebSocket): one answer per endpoint."""
    import websockets

    with tools.serve(
        prepared, {"RATE_LIMIT_ANONYMOUS": "100000"}, workers=WORKERS, log_path=tmp_path / "s.log"
    ) as live:
        bad = await asyncio.to_thread(invalid_keys, live)
        answers: dict[str, set] = {}
        async with httpx.AsyncClient(base_url=live.url, timeout=30) as client:
            for method, path, body in PROBES:
                for key in bad.values():
                    variants = [{"Authorization": f"Bearer {key}".strip()}]
                    if key:  # an empty X-API-Key is no key at all
                        variants.append({"X-API-Key": key})
                    for headers in variants:
                        response = await client.request(method, path, json=body, headers=headers)
                        answers.setdefault(f"{method} {path}", set()).add(answer(response))
        closes = set()
        for key in bad.values():
            async with websockets.connect(
                live.ws_url, additional_headers={"Authorization": f"Bearer {key}".strip()}
            ) as ws:
                with pytest.raises(websockets.ConnectionClosed) as closed:
                    await asyncio.wait_for(ws.recv(), 10)
                closes.add(closed.value.rcvd.code)
    varied = {endpoint: got for endpoint, got in answers.items() if len(got) != 1}
    assert not varied, varied
    assert all(next(iter(got))[0] == 401 for got in answers.values())
    assert closes == {4401}
    record_property(
        "figure",
        f"{len(bad)} kinds of invalid key × 2 headers × {len(PROBES)} endpoints: one 401 body per endpoint; WebSocket 4401 for all",
    )


def database_text(env: dict[str, str]) -> str:
    """Every row of every table of the served database, as text."""
    if "DATABASE_URL" in env:
        import psycopg

        with psycopg.connect(env["DATABASE_URL"].replace("postgres://", "postgresql://")) as conn:
            tables = [r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
            return "\n".join(str(row) for table in tables for row in conn.execute(f'SELECT t::text FROM "{table}" t'))
    import sqlite3

    with contextlib.closing(sqlite3.connect(env["SQLITE_PATH"])) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return "\n".join(str(row) for table in tables for row in conn.execute(f'SELECT * FROM "{table}"'))


def redis_text(url: str | None) -> bytes:
    """Every key and value in the Redis database the server used."""
    if not url:
        return b""
    import redis

    client = redis.Redis.from_url(url)
    found = []
    for name in client.scan_iter(count=1000):
        found.append(name)
        kind = client.type(name)
        if kind == b"string":
            found.append(client.get(name) or b"")
        elif kind == b"list":
            found += client.lrange(name, 0, -1)
        elif kind == b"hash":
            found += [b"%s=%s" % pair for pair in client.hgetall(name).items()]
        elif kind in (b"set", b"zset"):
            found += list(client.smembers(name)) if kind == b"set" else client.zrange(name, 0, -1)
    client.close()
    return b"\n".join(found)


def secrets_of(plaintexts) -> list[str]:
    """What must never be stored or logged: each key, and its secret part alone."""
    from core import keys

    needles = []
    for text in plaintexts:
        if len(text) >= keys.KEY_LENGTH:
            needles += [text, text[keys.PREFIX_LENGTH : keys.PREFIX_LENGTH + keys.SECRET_LENGTH]]
    return needles


async def test_abuse5_no_plaintext_key_in_the_database_redis_or_logs(prepared, tmp_path, record_property):
    """Keys issued (by command and API), used (bearer, X-API-Key, REST, SSE, OpenAI API,
    WebSocket), revoked and used again, and near-miss keys tried, on a server logging at
    debug level: no key and no key's secret part appears in any table's text, in Redis,
    or in any log line."""
    import websockets

    extra = {"LOG_LEVEL": "debug", "RATE_LIMIT_REGULAR": "100000"}
    with tools.serve(prepared, extra, workers=WORKERS, log_path=tmp_path / "server.log") as live:
        bad = await asyncio.to_thread(invalid_keys, live)
        issued = [live.key]
        async with httpx.AsyncClient(base_url=live.url, timeout=30) as client:
            admin = {"Authorization": f"Bearer {live.key}"}
            for n in range(2):
                created = await client.post(
                    "/api/keys", json={"name": f"issued {n}", "scopes": ["chat", "admin"]}, headers=admin
                )
                assert created.status_code == 201
                issued.append(created.json()["key"])
            uses = [
                ("GET", "/api/me", None),
                ("POST", "/api/chat", {"content": "hello", "model": "echo"}),
                ("POST", "/api/chat", {"content": "stream", "model": "echo", "stream": True}),
                ("POST", "/v1/chat/completions", {"model": "echo", "messages": [{"role": "user", "content": "hi"}]}),
                ("GET", "/v1/models", None),
                ("GET", "/api/keys", None),
            ]
            for key in issued[1:]:
                for method, path, body in uses:
                    for headers in ({"Authorization": f"Bearer {key}"}, {"X-API-Key": key}):
                        assert (await client.request(method, path, json=body, headers=headers)).status_code < 300
            async with websockets.connect(
                live.ws_url, additional_headers={"Authorization": f"Bearer {issued[1]}"}
            ) as ws:
                await ws.recv()
                await ws.send(json.dumps({"type": "send", "content": "over the socket", "model": "echo"}))
                while json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] != "done":
                    pass
            key_id = (await client.get("/api/keys", headers=admin)).json()[0]["id"]
            assert (await client.delete(f"/api/keys/{key_id}", headers=admin)).status_code == 204
            for key in [*issued, *bad.values()]:
                await client.get("/api/me", headers={"Authorization": f"Bearer {key}".strip()})
        log = live.server.log()
    needles = secrets_of([*issued, *bad.values()])
    stored = database_text(live.env)
    cached = redis_text(os.environ.get("REDIS_URL"))
    assert "afk_" in stored, "the scan must see the keys' public prefixes"
    found = [n[:12] + "…" for n in needles if n in stored or n.encode() in cached or n in log]
    assert not found, found
    lines = len(log.splitlines())
    record_property(
        "figure",
        f"{len(needles)} secrets (keys and secret parts) searched in {len(stored) // 1024} KB of table text, "
        f"{len(cached) // 1024} KB of Redis and {lines} debug log lines: 0 found",
    )


def test_abuse5_no_plaintext_key_in_any_log_record(caplog, fake_platform, record_property):
    """In process, every logger at DEBUG: issuing keys (service, API, command), using them,
    using invalid ones and revoking leaves no key in any log record, formatted as the
    platform formats them (JSON with every extra field)."""
    from io import StringIO

    from django.core.management import call_command
    from rest_framework.test import APIClient

    from core.logging import JSONFormatter
    from core.models import User
    from core.services import api_key_issue

    caplog.set_level(logging.DEBUG)
    owner = User.objects.create_user(email="logs@example.com", password="pw-logs-123")
    _, first = api_key_issue(user=owner, name="service", scopes=["chat", "conversations:read", "admin"])
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {first}")
    second = client.post("/api/keys", {"name": "api"}, format="json").json()["key"]
    out = StringIO()
    call_command("issuekey", "logs@example.com", "--scopes", "chat", stdout=out)
    third = out.getvalue().strip()
    for key in (first, second, third):
        for headers in ({"HTTP_AUTHORIZATION": f"Bearer {key}"}, {"HTTP_X_API_KEY": key}):
            APIClient().get("/api/me", **headers)
            APIClient().get("/api/conversations", **headers)
    near_misses = [first[:-1] + ("A" if first[-1] != "A" else "B"), first[:-3], second + "x"]
    for key in near_misses:
        assert APIClient().get("/api/me", HTTP_AUTHORIZATION=f"Bearer {key}").status_code == 401
    key_id = client.get("/api/keys").json()[0]["id"]
    client.delete(f"/api/keys/{key_id}")
    formatter = JSONFormatter()
    text = "\n".join(formatter.format(record) for record in caplog.records)
    needles = secrets_of([first, second, third, *near_misses])
    assert caplog.records, "nothing was logged: the scan would prove nothing"
    assert not [n[:12] for n in needles if n in text]
    record_property("figure", f"{len(needles)} secrets in {len(caplog.records)} log records at DEBUG: 0 found")


# --- 6. resource bounds -------------------------------------------------------------------------

SEED_CODE = """
import json
from chat.models import Conversation, Message
from core.models import User
owner = User.objects.get(email="live@example.com")
Conversation.objects.bulk_create([Conversation(user=owner, title=f"c{n}", model_name="echo") for n in range(150)])
big = Conversation.objects.create(user=owner, title="big", model_name="echo")
Message.objects.bulk_create([Message(conversation=big, role="user", content=f"m{n}") for n in range(599)])
reply = Message.objects.create(conversation=big, role="assistant", content="r", model_name="echo")
print(json.dumps({"conversation_id": big.pk, "message_id": reply.pk, "key_id": 1, "name": "echo"}))
"""
MB = 1024 * 1024


def json_operations(schema: dict) -> list[tools.Operation]:
    """Operations that take a JSON body (optional ones included)."""
    return [
        op for op in tools.operations(schema) if "application/json" in op.spec.get("requestBody", {}).get("content", {})
    ]


def hostile_bodies() -> dict[str, bytes]:
    """Bodies that must be refused with a 400."""
    return {
        "nested arrays 100k deep": b"[" * 100_000 + b"]" * 100_000,
        "nested objects 50k deep": b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
        "nested 1,025 deep": b'{"content":' + b"[" * 1025 + b"]" * 1025 + b"}",
        "invalid UTF-8": b'{"content": "\xff\xfe\xfd", "title": "\xc3\x28"}',
        "overlong UTF-8": b'{"content": "\xc0\xaf"}',
        "UTF-16 surrogate bytes": b'{"content": "\xed\xa0\x80"}',
        "lone surrogate escape": b'{"content": "\\ud800"}',
        "raw NUL": b'{"content": "a\x00b"}',
        "escaped NUL": b'{"content": "a\\u0000b", "name": "n", "title": "t"}',
        "NUL in a key": b'{"con\\u0000tent": "x"}',
        "truncated": b'{"content": "x',
        "NaN": b'{"content": NaN}',
    }


def odd_bodies(schema: dict, operation: tools.Operation) -> dict[str, bytes]:
    """Bodies that may be valid or not, but never a 5xx: a value nested 1,000 deep (just
    under the parser's limit) in each property, huge numbers, the wrong JSON type."""
    deep = "[" * 1000 + "]" * 1000
    bodies = {
        "empty": b"",  # DRF reads an empty body as {}, whose fields may all be optional
        "null": b"null",
        "array": b"[1, 2]",
        "string": b'"content"',
        "huge number": b'{"content": "x", "max_tokens": 1e400, "temperature": 1e400}',
        "huge integer": b'{"content": "x", "max_tokens": 100000000000000000000000000000}',
    }
    for name in sorted(tools.body_properties(schema, operation) | {"content", "model", "messages"}):
        bodies[f"{name} nested 1,000 deep"] = f'{{"{name}": {deep}, "content": "x"}}'.encode()
    return bodies


def is_json(response: httpx.Response) -> bool:
    return response.headers.get("content-type", "").startswith("application/json")


def test_abuse6_resource_bounds(prepared, tmp_path, record_property):
    """page_size=10**6 is clamped on every paged list; a 3 MB body (declared or chunked)
    is a JSON 413 on every JSON endpoint; deep nesting, invalid UTF-8, surrogates and NUL
    bytes are JSON 400s, and nothing hostile in a body, query or path is ever a 5xx."""
    extra = {"RATE_LIMIT_REGULAR": "100000", "RATE_LIMIT_ANONYMOUS": "100000", "AUTH_RATE_LIMITS": "100000/s"}
    with tools.serve(prepared, extra, workers=WORKERS, log_path=tmp_path / "server.log") as live:
        own = shell(live.env, SEED_CODE)
        schema = httpx.get(f"{live.url}/api/schema/", headers={"Accept": "application/vnd.oai.openapi+json"}).json()
        client = httpx.Client(base_url=live.url, headers={"Authorization": f"Bearer {live.key}"}, timeout=60)
        problems, clamped = [], {}

        for op in tools.operations(schema):
            if op.method != "GET" or "page_size" not in {p["name"] for p in op.params_in("query")}:
                continue
            url = op.url(**{p["name"]: own[p["name"]] for p in op.params_in("path")})
            response = client.get(url, params={"page_size": 10**6})
            size = len(response.json().get("results", [])) if response.status_code == 200 else None
            clamped[str(op)] = size
            if size is None or not 0 < size < 600:  # 151 conversations, 600 messages exist
                problems.append(f"{op} page_size=10**6: {response.status_code} {size}")
            for odd in (10**30, -1, 0, "abc", "1e6", "", "\x00", "９"):
                response = client.get(url, params={"page_size": odd})
                if response.status_code not in (200, 400) or not is_json(response):
                    problems.append(f"{op} page_size={odd!r}: {response.status_code}")

        slowest = 0.0
        for op in json_operations(schema):
            url = op.url(**{p["name"]: own[p["name"]] for p in op.params_in("path")})
            big = b'{"content": "' + b"x" * (3 * MB) + b'"}'
            for how, content in (
                ("declared", big),
                ("chunked", iter([big[i : i + 65536] for i in range(0, len(big), 65536)])),
            ):
                response = client.request(op.method, url, content=content, headers={"Content-Type": "application/json"})
                slowest = max(slowest, response.elapsed.total_seconds())
                if response.status_code != 413 or not is_json(response):
                    problems.append(f"{op} 3 MB {how}: {response.status_code} {response.content[:100]!r}")
            for name, body in hostile_bodies().items():
                response = client.request(op.method, url, content=body, headers={"Content-Type": "application/json"})
                if response.status_code != 400 or not is_json(response):
                    problems.append(f"{op} {name}: {response.status_code} {response.content[:100]!r}")
            for name, body in odd_bodies(schema, op).items():
                response = client.request(op.method, url, content=body, headers={"Content-Type": "application/json"})
                if response.status_code >= 500 or not is_json(response):
                    problems.append(f"{op} {name}: {response.status_code} {response.content[:100]!r}")

        queries = 0
        for op in tools.operations(schema):
            if op.method != "GET":
                continue
            path_values = {p["name"]: own[p["name"]] for p in op.params_in("path")}
            hostile = ("\x00", "a\x00b", "\ufffe", "%ff", "\u202e", "x" * 10_000, "' OR 1=1 --", "9" * 25, "-1")
            for param in op.params_in("query") + op.params_in("header"):
                for value in hostile:
                    if param["in"] == "header" and not value.isprintable():
                        continue  # not sendable as a header
                    where = {"params": {param["name"]: value}} if param["in"] == "query" else {}
                    headers = {param["name"]: value} if param["in"] == "header" else {}
                    queries += 1
                    try:  # read to the end: a stream may break after its headers
                        response = client.get(op.url(**path_values), headers=headers, **where)
                    except httpx.HTTPError as exc:
                        problems.append(f"{op} {param['name']}={value[:10]!r}: {exc!r}")
                        continue
                    if response.status_code >= 500:
                        problems.append(f"{op} {param['name']}={value[:10]!r}: {response.status_code}")
        for path in ("/v1/models/%00", "/api/models/%00", "/v1/models/%ff%fe", "/api/conversations/%00/messages"):
            response = client.get(path)
            queries += 1
            if response.status_code >= 500 or not is_json(response):
                problems.append(f"{path}: {response.status_code}")
        client.close()
    assert not problems, "\n".join(problems)
    record_property(
        "figure",
        f"page_size=10**6 → {', '.join(f'{k.split()[1]}: {v}' for k, v in clamped.items())}; "
        f"3 MB → JSON 413 on {len(json_operations(schema))} endpoints (slowest {slowest * 1000:.0f} ms); "
        f"{len(hostile_bodies())} hostile bodies → 400 each; {queries} hostile queries/paths, no 5xx",
    )


# --- 9. deployment checks and security headers ------------------------------------------------------


def test_abuse9_check_deploy_is_clean_in_production(prepared, record_property):
    """``manage.py check --deploy --fail-level WARNING`` with the production settings as
    deployed (TLS redirect on, the suite's database and Redis)."""
    env = {k: v for k, v in {**os.environ, **prepared.env}.items() if k != "SECURE_SSL_REDIRECT"}
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=BASE_DIR,
        env={**env, "DJANGO_SETTINGS_MODULE": "agentsflow.settings"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues (0 silenced)" in result.stdout, result.stdout
    record_property("figure", "check --deploy --fail-level WARNING: no issues (0 silenced)")


SECURITY_HEADERS = {
    "Content-Security-Policy": lambda v: "default-src 'self'" in v and "frame-ancestors 'none'" in v,
    "X-Content-Type-Options": lambda v: v == "nosniff",
    "X-Frame-Options": lambda v: v == "DENY",
    "Referrer-Policy": lambda v: v == "strict-origin-when-cross-origin",
    "Permissions-Policy": lambda v: "camera=()" in v and "microphone=()" in v,
}
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def missing_headers(response: httpx.Response) -> list[str]:
    return [name for name, ok in SECURITY_HEADERS.items() if not ok(response.headers.get(name, ""))]


def route_url(route: str) -> str:
    """A concrete URL for a route template: ids nobody has, the model "echo"."""
    return re.sub(r"\{(\w+)\}", lambda m: "echo" if m[1] == "name" else "999999", route)


def test_abuse9_security_headers_on_every_response(prepared, upstream, tmp_path, record_property):
    """Every route × every method (by key and anonymously), plus 400, 404, 405, 413 and
    429 answers of HTML pages and the API, and 5xx answers from a server whose database
    is missing its tables: CSP, nosniff, X-Frame-Options DENY, Referrer-Policy and
    Permissions-Policy on each; HSTS behind TLS; and no 5xx from the healthy server."""
    responses: list[tuple[str, httpx.Response]] = []
    extra = {"RATE_LIMIT_ANONYMOUS": "5", "RATE_LIMIT_REGULAR": "100000", "AUTH_RATE_LIMITS": "2/m"}
    with tools.serve(prepared, extra, workers=WORKERS, log_path=tmp_path / "server.log") as live:
        key = {"Authorization": f"Bearer {live.key}"}
        with httpx.Client(base_url=live.url, timeout=30) as client:
            for route in sorted(tools.all_routes()):
                for method in METHODS:
                    for headers in (key, {}):
                        body = b"{}" if method in ("POST", "PUT", "PATCH") else None
                        response = client.request(
                            method,
                            route_url(route),
                            content=body,
                            headers={**headers, "Content-Type": "application/json"},
                        )
                        responses.append((f"{method} {route}", response))
            big = b'{"content": "' + b"x" * (3 * MB) + b'"}'
            for path in ("/api/chat", "/accounts/login/", "/v1/chat/completions"):
                responses.append((f"3 MB to {path}", client.post(path, content=big, headers=key)))
            for n in range(4):
                responses.append(
                    (f"sign-in {n}", client.post("/accounts/login/", data={"username": "x", "password": "y"}))
                )
            for n in range(8):
                responses.append((f"anonymous API {n}", client.get("/api/models")))
            responses.append(("page not found", client.get("/no-such-page")))
            responses.append(("foreign Host", client.get("/accounts/login/", headers={"Host": "evil.example"})))
            behind_tls = client.get("/accounts/login/", headers={"X-Forwarded-Proto": "https"})
    assert "max-age=31536000" in behind_tls.headers.get("Strict-Transport-Security", "")
    server_errors = [f"{name}: {r.status_code}" for name, r in responses if r.status_code >= 500]

    broken = tools.production_env(tmp_path, "abuse_unmigrated", **tools.fake_models(upstream))
    from core import keys

    with tools.serve(Platform(env=broken, key="", email="", password=""), workers=1) as dead:
        probe = {"Authorization": f"Bearer {keys.generate().plaintext}"}
        with httpx.Client(base_url=dead.url, timeout=30) as client:
            failing = [
                ("API without tables", client.get("/api/me", headers=probe)),
                ("OpenAI API without tables", client.get("/v1/models", headers=probe)),
                ("page without tables", client.get("/", headers={"Cookie": "sessionid=" + "a1b2c3d4" * 4})),
            ]
    assert all(r.status_code >= 500 for _, r in failing), [(n, r.status_code) for n, r in failing]
    responses += failing

    lacking = {f"{name} ({r.status_code})": missing_headers(r) for name, r in responses if missing_headers(r)}
    assert not lacking, lacking
    assert not server_errors, server_errors
    statuses = sorted({r.status_code for _, r in responses})
    for needed in (200, 400, 401, 403, 404, 405, 413, 429):
        assert needed in statuses, f"no {needed} answer was checked"
    record_property(
        "figure", f"{len(responses)} responses (statuses {', '.join(map(str, statuses))}): all 5 headers on every one"
    )
