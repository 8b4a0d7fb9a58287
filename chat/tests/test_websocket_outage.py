"""WebSocket handshakes that need the database while it is unreachable, on a real
uvicorn process whose DATABASE_URL names a port where nothing listens: an API key
that is not cached yet, and a session cookie, both have to be looked up. The
client must be told to try again later (close 1013), not get an HTTP 500."""

from __future__ import annotations

import asyncio
import re
from urllib.parse import urlsplit, urlunsplit

import pytest
import websockets

from agentsflow.testing import free_port, fresh_database_env, manage, prepare_platform, run_server

pytestmark = [pytest.mark.server, pytest.mark.postgres]

REFUSED = "websocket refused, database unavailable"


def _on_port(database_url: str, port: int) -> str:
    parts = urlsplit(database_url)
    userinfo = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    return urlunsplit(parts._replace(netloc=f"{userinfo}127.0.0.1:{port}"))


def _session_cookie(env: dict[str, str], email: str) -> str:
    """A signed-in browser session, stored while the database was up."""
    code = (
        "from django.test import Client; from core.models import User; client = Client(); "
        f"client.force_login(User.objects.get(email={email!r})); print(client.cookies['sessionid'].value)"
    )
    return manage("shell", "-c", code, env=env).strip().splitlines()[-1]


@pytest.fixture(scope="module")
def down(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ws-outage")
    env = {**fresh_database_env("ws_outage", tmp), "AGENTSFLOW_VAR_DIR": str(tmp), "ACCESS_LOG": "false"}
    platform = prepare_platform(env)
    session = _session_cookie(env, platform.email)
    unreachable = {**env, "DATABASE_URL": _on_port(env["DATABASE_URL"], free_port()), "DB_POOL_TIMEOUT": "1"}
    with run_server(unreachable, log_path=tmp / "server.log") as server:
        server.key, server.session = platform.key, session
        yield server


async def _handshake(url: str, headers: dict[str, str]) -> str:
    """What the client sees: "close <code>", "HTTP <status>" when the handshake is
    refused, or the first event when the socket stays open."""
    try:
        async with websockets.connect(url, additional_headers=headers, open_timeout=15) as ws:
            return await asyncio.wait_for(ws.recv(), 15)
    except websockets.InvalidStatus as refused:
        return f"HTTP {refused.response.status_code}"
    except websockets.ConnectionClosed as closed:
        return f"close {closed.rcvd.code if closed.rcvd else 1006}"


async def test_handshakes_needing_the_database_are_told_to_try_again_later(down):
    url = down.url.replace("http", "ws", 1) + "/ws/chat/"
    by_key = await _handshake(url, {"Authorization": f"Bearer {down.key}"})
    by_session = await _handshake(url, {"Cookie": f"sessionid={down.session}", "Origin": down.url})
    assert (by_key, by_session) == ("close 1013", "close 1013"), down.log()[-3000:]
    log = down.log()
    assert log.count(REFUSED) == 2, log[-3000:]
    # The line says what failed, so an operator can tell a refused connection from a full pool.
    assert len(re.findall(re.escape(REFUSED) + r": OperationalError: \S", log)) == 2, log[-3000:]
    assert "Traceback" not in log, log[-3000:]
