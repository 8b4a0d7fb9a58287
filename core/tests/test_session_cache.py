"""The sessions' cache behind the Redis breaker (core.session_cache): a stalled
Redis costs one socket timeout, then the session store goes straight to the
database until the breaker closes."""

from __future__ import annotations

import socket
import threading

import pytest

from core import redis
from core.session_cache import BreakerRedisCache

OPTIONS = {"SOCKET_CONNECT_TIMEOUT": 0.2, "SOCKET_TIMEOUT": 0.2}


class StalledRedis:
    """A TCP server that accepts connections and never answers, as a stalled Redis."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"redis://127.0.0.1:{self.server.getsockname()[1]}/0"
        self.accepted: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.server.accept()
            except OSError:
                return
            self.accepted.append(connection)

    def close(self) -> None:
        self.server.close()
        for connection in self.accepted:
            connection.close()


@pytest.fixture
def stalled():
    server = StalledRedis()
    yield server
    server.close()


def test_a_stalled_redis_is_asked_once_then_skipped_while_the_breaker_is_open(stalled):
    cache = BreakerRedisCache(stalled.url, {"OPTIONS": OPTIONS})
    assert cache.get("session", "missing") == "missing"  # after the socket timeout
    assert redis.breaker.open
    asked = len(stalled.accepted)
    assert asked >= 1
    assert cache.get("session", "missing") == "missing"
    assert cache.set("session", "data") is False and cache.add("session", "data") is False
    assert cache.has_key("session") is False and cache.delete("session") is False
    assert len(stalled.accepted) == asked  # nothing sent while the breaker is open


@pytest.mark.redis
def test_a_healthy_redis_caches_sessions(settings):
    cache = BreakerRedisCache(settings.REDIS_URL, {"OPTIONS": OPTIONS, "KEY_PREFIX": "session-cache-test"})
    assert cache.set("session", {"user": 1}, 60) is True
    assert cache.get("session") == {"user": 1} and cache.has_key("session")
    assert cache.delete("session") is True and cache.get("session", "gone") == "gone"
    assert not redis.breaker.open


def test_a_signed_in_user_is_served_from_the_database_while_redis_stalls(client, user, settings, stalled):
    settings.CACHES = {
        **settings.CACHES,
        "sessions": {"BACKEND": "core.session_cache.BreakerRedisCache", "LOCATION": stalled.url, "OPTIONS": OPTIONS},
    }
    client.force_login(user)  # stored in the database; the cache write trips the breaker
    asked = len(stalled.accepted)
    for _ in range(3):
        response = client.get("/api/me")
        assert response.status_code == 200 and response.json()["email"] == user.email
    assert len(stalled.accepted) == asked
