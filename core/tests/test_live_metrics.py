"""The dashboard's figures: snapshots of the cumulative metrics, rates and
percentiles between two snapshots, and the samples that make the history."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta

import pytest
from django.utils import timezone

from agentsflow.testing import BASE_DIR
from core import live_metrics, metrics
from core.models import MetricSample

BOUNDS = (0.1, 0.2, 0.5)


def test_quantile_interpolates_inside_the_bucket():
    # 10 observations ≤ 0.1, 10 in (0.1, 0.2]: the median is the top of the first bucket.
    assert live_metrics.quantile(0.5, BOUNDS, [10, 10, 0, 0]) == pytest.approx(0.1)
    assert live_metrics.quantile(0.75, BOUNDS, [10, 10, 0, 0]) == pytest.approx(0.15)
    assert live_metrics.quantile(0.99, BOUNDS, [0, 0, 0, 5]) == 0.5  # +Inf: the largest bound
    assert live_metrics.quantile(0.5, BOUNDS, [0, 0, 0, 0]) is None


def _snapshot(at: float, *, ok: float, errors: float, hits: float, misses: float, latency=None) -> dict:
    snap = live_metrics.empty_snapshot(at)
    snap["requests"] = {"2xx": ok, "5xx": errors}
    snap["latency"] = {"buckets": latency or [0.0] * 16, "sum": 0.0, "count": ok + errors}
    snap["cache"] = {"models": {"hit": hits, "miss": misses}}
    return snap


def test_figures_are_rates_over_the_interval():
    old = _snapshot(1000.0, ok=100, errors=0, hits=10, misses=10)
    new = _snapshot(1010.0, ok=299, errors=1, hits=100, misses=20)
    fig = live_metrics.figures(new, old)
    assert fig["requests"] == 200
    assert fig["requests_per_second"] == 20
    assert fig["error_rate"] == pytest.approx(1 / 200)
    assert fig["cache_hit_ratio"] == pytest.approx(90 / 100)
    assert fig["cache_families"]["models"]["lookups"] == 100


def test_a_restarted_worker_counts_from_zero_not_negative():
    old = _snapshot(1000.0, ok=500, errors=0, hits=50, misses=0)
    new = _snapshot(1010.0, ok=30, errors=0, hits=5, misses=5)
    fig = live_metrics.figures(new, old)
    assert fig["requests"] == 30
    assert fig["cache_hit_ratio"] == pytest.approx(0.5)


def test_target_table_says_idle_without_traffic_and_warns_when_slow():
    quiet = live_metrics.figures(
        _snapshot(10.0, ok=0, errors=0, hits=0, misses=0), _snapshot(0.0, ok=0, errors=0, hits=0, misses=0)
    )
    statuses = {row["metric"]: row["status"] for row in live_metrics.target_table(quiet)}
    assert statuses["API response time (p95)"] == "idle"
    assert statuses["Requests per second"] == "idle"

    slow_buckets = [0.0] * 16
    slow_buckets[metrics.LATENCY_BUCKETS.index(0.5)] = 50  # every request took 250–500 ms
    slow = live_metrics.figures(
        _snapshot(10.0, ok=50, errors=0, hits=1, misses=9, latency=slow_buckets),
        _snapshot(0.0, ok=0, errors=0, hits=0, misses=0),
    )
    statuses = {row["metric"]: row["status"] for row in live_metrics.target_table(slow)}
    assert statuses["API response time (p95)"] == "warn"
    assert statuses["Requests per second"] == "warn"  # slow at 5 req/s: no headroom
    assert statuses["Cache hit ratio"] == "warn"
    assert statuses["Error rate (5xx)"] == "ok"


@pytest.mark.django_db
def test_snapshot_follows_real_requests(client, make_user, make_key):
    user = make_user()
    _, key = make_key(user)
    before = live_metrics.take_snapshot()
    for _ in range(5):
        client.get("/api/models", HTTP_AUTHORIZATION=f"Bearer {key}")
    after = live_metrics.take_snapshot()
    fig = live_metrics.figures(after, before)
    assert fig["status_classes"]["2xx"] == 5
    assert fig["latency_ms"]["p50"] is not None
    assert fig["cache_families"]["models"]["lookups"] >= 5
    assert fig["cache_families"]["models"]["hit_ratio"] >= 0.8  # the first lookup computes
    assert fig["db"]["queries"] >= 1


@pytest.mark.django_db
def test_samples_are_stored_once_per_interval(settings):
    settings.DASHBOARD_SAMPLE_SECONDS = 60
    assert live_metrics.record_sample_if_due() is not None
    assert live_metrics.record_sample_if_due() is None  # one is younger than the interval
    assert MetricSample.objects.count() == 1


@pytest.mark.django_db
def test_old_samples_are_pruned(settings):
    settings.DASHBOARD_HISTORY_DAYS = 2
    old = MetricSample.objects.create(data={}, at=timezone.now() - timedelta(days=3))
    live_metrics.record_sample_if_due()
    assert not MetricSample.objects.filter(pk=old.pk).exists()


@pytest.mark.django_db
def test_history_points_are_figures_between_consecutive_samples():
    now = timezone.now()
    for i, ok in enumerate((0, 100, 300)):
        at = now - timedelta(seconds=20 - 10 * i)
        MetricSample.objects.create(at=at, data=_snapshot(at.timestamp(), ok=ok, errors=0, hits=0, misses=0))
    points = live_metrics.history("hour")
    assert [p["requests_per_second"] for p in points] == [10, 20]


def test_snapshot_sums_every_worker_process(tmp_path):
    """Two processes that counted requests and then exited: their multiprocess files
    add up (prometheus_client keeps counters of dead processes)."""
    code = (
        "from core import metrics\n"
        "for _ in range(7): metrics.REQUEST_LATENCY.labels('GET', '2xx').observe(0.01)\n"
        "metrics.CACHE.labels('models', 'hit_local').inc(3)\n"
        "metrics.PROCESS_MEMORY.labels(pid='1').set(1)\n"
    )
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "DJANGO_SETTINGS_MODULE": "agentsflow.settings"}
    for _ in range(2):
        subprocess.run(
            [sys.executable, "-c", "import django; django.setup()\n" + code], env=env, cwd=BASE_DIR, check=True
        )
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(tmp_path)
    try:
        snap = live_metrics.take_snapshot()
    finally:
        del os.environ["PROMETHEUS_MULTIPROC_DIR"]
    assert snap["requests"]["2xx"] == 14
    assert snap["cache"]["models"]["hit"] == 6


@pytest.mark.django_db
def test_fast_requests_have_fast_percentiles(client):
    """Prometheus buckets are cumulative; the percentiles must not read them as counts."""
    before = live_metrics.take_snapshot()
    for _ in range(20):
        client.get("/health")
    fig = live_metrics.figures(live_metrics.take_snapshot(), before)
    assert fig["requests"] == 20
    assert fig["latency_ms"]["p99"] < 1000
