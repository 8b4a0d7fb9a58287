"""The platform as deployed: nginx in front of granian WSGI and uvicorn ASGI, each
started by its production script (agentsflow.testing.run_stack), production
settings, PostgreSQL and Redis, a fake model upstream on loopback.

Clients connect from addresses of their own in 127.0.0.0/8 (only 127.0.0.1, nginx,
is a trusted proxy), so "which client is this" is a real question here."""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import time

import httpx
import orjson
import pytest
import websockets

from agentsflow.serving import served_by_asgi
from agentsflow.testing import NGINX_MISSING, fresh_database_env, prepare_platform, run_stack
from bench.fake_upstream import run_fake_upstream

REQUIRED = os.environ.get("AGENTSFLOW_REQUIRE_SERVICES") == "1"
pytestmark = [
    pytest.mark.server,
    pytest.mark.postgres,
    pytest.mark.redis,
    pytest.mark.skipif(NGINX_MISSING and not REQUIRED, reason="needs nginx (Debian's nginx package; CI installs it)"),
]

ANONYMOUS_LIMIT = 3
MODELS = [
    {"name": "echo", "provider": "fake", "upstream_model": "echo", "context_window": 4096, "max_output_tokens": 256},
    # 40 tokens at 20 a second: two seconds of streaming.
    {"name": "slow", "provider": "fake", "upstream_model": "tokens-40+tps-20", "context_window": 4096},
]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("stack")
    with run_fake_upstream() as upstream:
        env = {
            **fresh_database_env("stack", tmp),
            "EXTRA_PROVIDERS": "fake",
            "FAKE_BASE_URL": upstream,
            "AGENTSFLOW_MODELS": json.dumps(MODELS),
            "RATE_LIMIT_ANONYMOUS": str(ANONYMOUS_LIMIT),
        }
        platform = prepare_platform(env)
        # nginx's API zone generous (these tests send bursts from few addresses); its
        # auth zone strict, so that test needs no timing.
        nginx = {"api_rate": "100r/s", "api_burst": 200, "auth_rate": "1r/m", "auth_burst": 2}
        with run_stack(env, tmp_dir=tmp / "run", wsgi_workers=2, nginx=nginx) as running:
            running.key = platform.key
            yield running


def client_address() -> str:
    """A loopback address no other test (or earlier run) has used."""
    return f"127.{random.randint(1, 254)}.{random.randint(0, 255)}.{random.randint(1, 254)}"


def client(address: str | None = None, **kwargs) -> httpx.Client:
    transport = httpx.HTTPTransport(local_address=address or client_address())
    return httpx.Client(transport=transport, timeout=30, **kwargs)


def authorized(stack) -> dict:
    return {"Authorization": f"Bearer {stack.key}"}


def access_log_lines(stack, pattern: str, count: int = 1) -> list[str]:
    """nginx's access log is buffered (flushed every second): wait for the lines."""
    deadline = time.monotonic() + 10
    while True:
        lines = [line for line in stack.log("nginx_access").splitlines() if re.search(pattern, line)]
        if len(lines) >= count or time.monotonic() > deadline:
            return lines
        time.sleep(0.2)


def test_health_and_an_api_key_request_through_nginx(stack):
    with client() as http:
        assert http.get(f"{stack.url}/health").json() == {"status": "ok"}
        response = http.get(f"{stack.url}/api/me", headers=authorized(stack))
        assert response.status_code == 200, response.text
        assert response.json()["email"] == "live@example.com"
        assert response.headers["RateLimit-Limit"]
        ready = http.get(f"{stack.url}/ready").json()
        assert ready["status"] == "ok", ready


def test_nginx_routes_each_path_to_the_server_the_list_names(stack):
    """The access log's upstream address shows which server answered."""
    paths = [
        "/api/me",
        "/api/keys",
        "/api/conversations",
        "/api/chat",
        "/v1/models",
        "/api/conversations/1/messages",
        "/api/messages/1/stream",
    ]
    marker = f"route-check-{random.randint(0, 10**9)}"
    with client(headers={**authorized(stack), "User-Agent": marker}) as http:
        for path in paths:
            http.get(stack.url + path)
    lines = access_log_lines(stack, marker, len(paths))
    upstream = {}
    for line in lines:
        path = re.search(r'"GET (\S+) HTTP', line).group(1)
        upstream[path] = "asgi" if stack.asgi_url.rsplit(":", 1)[1] in line.split('"')[2] else "wsgi"
    assert upstream == {path: "asgi" if served_by_asgi(path) else "wsgi" for path in paths}


def test_sse_stream_through_nginx_is_not_buffered(stack):
    """The first event arrives while the reply is still being generated: nginx
    passes each event on at once (proxy_buffering off on the ASGI location, and the
    platform's X-Accel-Buffering: no)."""
    body = {"content": "go", "model": "slow", "stream": True}
    with client(headers=authorized(stack)) as http, http.stream("POST", f"{stack.url}/api/chat", json=body) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        events, checked = [], False
        for line in r.iter_lines():
            if not line.startswith("data: "):
                continue
            events.append(orjson.loads(line[6:]))
            if events[-1]["type"] == "delta" and not checked:
                message = http.get(f"{stack.url}/api/messages/{events[-1]['message_id']}").json()
                assert message["status"] == "streaming", "the first events came only after the reply ended"
                checked = True
            if events[-1]["type"] in ("done", "error"):
                break
    assert checked and events[-1]["type"] == "done"
    assert len([e for e in events if e["type"] == "delta"]) >= 10


def test_openai_streaming_through_nginx(stack):
    with client(headers=authorized(stack)) as http:
        body = {"model": "echo", "messages": [{"role": "user", "content": "one two three"}], "stream": True}
        with http.stream("POST", f"{stack.url}/v1/chat/completions", json=body) as response:
            assert response.status_code == 200
            chunks = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert chunks[-1] == "[DONE]"
    text = "".join(orjson.loads(c)["choices"][0]["delta"].get("content") or "" for c in chunks[:-1])
    assert text == "one two three"


async def test_websocket_through_nginx(stack):
    url = stack.url.replace("http://", "ws://") + "/ws/chat/"
    async with websockets.connect(url, additional_headers=authorized(stack)) as ws:
        assert json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "ready"
        await ws.send(json.dumps({"type": "send", "content": "through nginx", "model": "echo"}))
        reply_id = json.loads(await asyncio.wait_for(ws.recv(), 10))["message_id"]
        while True:
            event = json.loads(await asyncio.wait_for(ws.recv(), 10))
            if event.get("message_id") == reply_id and event["type"] in ("done", "error") and "seq" in event:
                break
    assert event["type"] == "done" and event["content"] == "through nginx"


async def test_websocket_compression_offer_is_declined(stack):
    """A client offering permessage-deflate, as browsers do, gets an uncompressed
    socket: the server keeps no zlib state per socket (ops/run-asgi.sh)."""
    url = stack.url.replace("http://", "ws://") + "/ws/chat/"
    async with websockets.connect(url, additional_headers=authorized(stack), compression="deflate") as ws:
        assert "permessage-deflate" in ws.request.headers["Sec-WebSocket-Extensions"]
        assert "Sec-WebSocket-Extensions" not in ws.response.headers
        assert json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "ready"


@pytest.mark.parametrize("path", ["/api/me", "/v1/models"], ids=["wsgi", "asgi"])
def test_forged_forwarding_headers_cannot_change_the_client_address(stack, path):
    """Anonymous callers are limited per client address. Each request forges another
    X-Forwarded-For / X-Real-IP; the platform still counts them all against the
    address nginx saw, and another real address still has its own budget."""
    address = client_address()
    statuses = []
    with client(address) as http:
        for _ in range(ANONYMOUS_LIMIT + 3):
            forged = f"203.0.113.{random.randint(1, 254)}"
            response = http.get(stack.url + path, headers={"X-Forwarded-For": forged, "X-Real-IP": forged})
            statuses.append(response.status_code)
    assert statuses == [401] * ANONYMOUS_LIMIT + [429] * 3
    assert response.headers["Retry-After"]
    with client() as other:
        assert other.get(stack.url + path).status_code == 401  # not 429: a budget of its own
    # The access log line of each server names the real address, never the forged one.
    server_log = stack.log("asgi" if served_by_asgi(path) else "wsgi")
    logged = {json.loads(line)["client_ip"] for line in server_log.splitlines() if f'"{path}"' in line and "{" in line}
    assert address in logged and not any(ip.startswith("203.0.113.") for ip in logged)


def test_key_creation_is_limited_by_the_nginx_auth_zone(stack):
    """auth zone at 1 request a minute with a burst of 2: the fourth POST is refused
    by nginx itself, with the platform's JSON error shape and Retry-After."""
    with client(headers=authorized(stack)) as http:
        statuses = []
        for n in range(4):
            response = http.post(f"{stack.url}/api/keys", json={"name": f"zone-{n}", "scopes": ["chat"]})
            statuses.append(response.status_code)
        assert statuses[:3] == [201, 201, 201] and statuses[3] == 429, statuses
        assert response.json()["code"] == "rate_limited" and response.headers["Retry-After"] == "1"
        assert http.get(f"{stack.url}/api/keys").status_code == 200  # GET is not in the auth zone


def test_hashed_static_files_are_immutable(stack):
    with client() as http:
        page = http.get(f"{stack.url}/accounts/login/")
        assert page.status_code == 200
        hashed = re.search(r'href="(/static/css/app\.[0-9a-f]{12}\.css)"', page.text).group(1)
        response = http.get(stack.url + hashed, headers={"Accept-Encoding": "gzip"})
        assert response.status_code == 200 and "body" in response.text
        assert response.headers["Cache-Control"] == "public, max-age=31536000, immutable"
        assert response.headers.get("Content-Encoding") == "gzip" or len(response.content) < 1024
        plain = http.get(f"{stack.url}/static/css/app.css")
        assert plain.status_code == 200 and "immutable" not in plain.headers["Cache-Control"]
        assert http.get(f"{stack.url}/static/css/nope.0123456789ab.css").status_code == 404


def test_errors_nginx_produces_keep_the_json_shape(stack):
    with client() as http:
        # nginx refuses a body over the platform's MAX_BODY_BYTES itself, declared or
        # chunked, on either server's paths, in the platform's JSON shape.
        for path, body in (
            ("/api/keys", b"x" * (2 * 1024 * 1024)),
            ("/api/chat", b"x" * (1024 * 1024 + 1)),
            ("/api/keys", iter([b"x" * 65536] * 20)),  # chunked: no Content-Length
        ):
            response = http.post(stack.url + path, content=body, headers={"Content-Type": "application/json"})
            assert response.status_code == 413, (path, response.status_code, response.text)
            assert response.json() == {
                "status": 413,
                "code": "payload_too_large",
                "message": "The request body is too large.",
            }
        assert http.get(f"{stack.url}/metrics").status_code == 404  # scraped per server, not through nginx
