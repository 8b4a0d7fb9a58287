"""Prometheus metrics: who may read them, that they move, and that several worker
processes add up (prometheus_client multiprocess mode)."""

from __future__ import annotations

import re

import httpx
import pytest
from prometheus_client import REGISTRY

from agentsflow.testing import fresh_database_env, prepare_platform, run_server

pytestmark = pytest.mark.django_db


def value(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_metrics_answer_loopback(client):
    response = client.get("/metrics")
    assert response.status_code == 200
    assert b"# TYPE agentsflow_request_duration_seconds histogram" in response.content


def test_metrics_refuse_other_networks_without_the_token(client, settings):
    settings.METRICS_TOKEN = "s3cret-token"
    outside = {"REMOTE_ADDR": "203.0.113.5"}
    refused = client.get("/metrics", **outside)
    assert refused.status_code == 403 and refused.json()["code"] == "permission_denied"
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong", **outside).status_code == 403
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer s3cret-token", **outside).status_code == 200


def test_forwarded_for_from_a_trusted_proxy_is_the_client_that_counts(client, settings):
    from core.net import _trusted_networks

    settings.TRUSTED_PROXIES = ["127.0.0.1/32"]
    _trusted_networks.cache_clear()
    try:
        assert client.get("/metrics", HTTP_X_FORWARDED_FOR="203.0.113.9").status_code == 403
    finally:
        settings.TRUSTED_PROXIES = []
        _trusted_networks.cache_clear()


def test_request_and_cache_metrics_move(client):
    requests_before = value("agentsflow_request_duration_seconds_count", method="GET", status_class="2xx")
    client.get("/api/models")
    misses = value("agentsflow_cache_requests_total", family="models", outcome="miss")
    client.get("/api/models")
    assert value("agentsflow_cache_requests_total", family="models", outcome="hit_local") >= 1
    assert value("agentsflow_cache_requests_total", family="models", outcome="miss") == misses
    assert value("agentsflow_request_duration_seconds_count", method="GET", status_class="2xx") == requests_before + 2


def test_rate_limit_rejections_are_counted_by_tier(client, settings):
    settings.RATE_LIMITS = {"premium": 5, "regular": 5, "anonymous": 1}
    before = value("agentsflow_ratelimit_rejections_total", tier="anonymous")
    client.get("/api/models")
    assert client.get("/api/models").status_code == 429
    assert value("agentsflow_ratelimit_rejections_total", tier="anonymous") == before + 1


def _sample(text: str, name: str, labels: str = "") -> float:
    pattern = re.escape(name) + (r"\{" + labels + r"[^}]*\}" if labels else r"(?:\{[^}]*\})?") + r" ([0-9.e+]+)"
    return sum(float(match) for match in re.findall(pattern, text))


@pytest.mark.server
def test_two_worker_processes_add_up(tmp_path):
    multiproc = tmp_path / "prometheus"
    multiproc.mkdir()
    env = {
        **fresh_database_env("metrics", tmp_path),
        "AGENTSFLOW_VAR_DIR": str(tmp_path),
        "ACCESS_LOG": "false",
        "PROMETHEUS_MULTIPROC_DIR": str(multiproc),
    }
    prepare_platform(env)
    with run_server(env, workers=2) as server, httpx.Client(base_url=server.url) as http:
        for _ in range(200):  # keep-alive is off so requests spread over both workers
            http.get("/health", headers={"Connection": "close"})
        text = http.get("/metrics").text
        pids = set(re.findall(r'agentsflow_process_resident_memory_bytes\{pid="(\d+)"', text))
    assert _sample(text, "agentsflow_request_duration_seconds_count", 'method="GET",status_class="2xx"') >= 200
    assert len(pids) == 2, pids  # both workers reported, and /metrics summed them
