import urllib.error
import urllib.request

import orjson
import pytest

from agentsflow.testing import run_server

pytestmark = pytest.mark.django_db


def test_health_is_ok_without_io(client, django_assert_num_queries):
    with django_assert_num_queries(0):
        response = client.get("/health")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


def test_ready_reports_each_dependency_with_latency(client):
    body = client.get("/ready").json()
    assert body["status"] == "ok" and body["failing"] == []
    for name in ("database", "cache"):
        assert body["checks"][name]["ok"] is True
        assert body["checks"][name]["latency_ms"] >= 0


def test_ready_is_503_naming_the_cache_when_redis_is_down(client, settings):
    settings.CACHES = {
        **settings.CACHES,
        "default": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": "redis://127.0.0.1:1/0",
            "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 0.2, "SOCKET_TIMEOUT": 0.2},
        },
    }
    response = client.get("/ready")
    assert response.status_code == 503
    body = response.json()
    assert body["failing"] == ["cache"] and body["checks"]["database"]["ok"] is True
    assert "ConnectionError" in body["checks"]["cache"]["error"] or "Connection" in body["checks"]["cache"]["error"]


@pytest.mark.server
def test_ready_is_503_naming_the_database_when_postgres_is_down():
    """A real server whose DATABASE_URL points at a closed port answers /ready quickly with 503."""
    env = {
        "DATABASE_URL": "postgres://postgres@127.0.0.1:1/agentsflow",
        "DB_POOL_TIMEOUT": "1",
        "DB_CONNECT_TIMEOUT": "1",
    }
    with run_server(env) as server:
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(server.url + "/ready", timeout=10)
        assert caught.value.code == 503
        body = orjson.loads(caught.value.read())
        assert "database" in body["failing"]
        assert body["checks"]["database"]["ok"] is False
