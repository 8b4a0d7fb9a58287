"""Live performance figures for the staff dashboard.

A *snapshot* is the platform's cumulative Prometheus counters and histograms summed
over every worker process (prometheus_client's multiprocess files when
PROMETHEUS_MULTIPROC_DIR is set, else this process, which is then the whole
platform). Rates and percentiles come from the difference between two snapshots,
as Prometheus's ``rate()`` and ``histogram_quantile()`` would compute them.
Snapshots are stored as ``MetricSample`` rows every DASHBOARD_SAMPLE_SECONDS, so
every process (and the charts over the last hour and day) sees the same history.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable
from datetime import timedelta

from django.conf import settings
from django.core.cache import cache
from django.utils import timezone
from prometheus_client import REGISTRY, CollectorRegistry, multiprocess

from core import metrics
from core.models import MetricSample

# The guide's target table ("Target Performance Metrics").
TARGETS = {
    "api_response_ms": 100.0,  # p95
    "db_query_ms": 20.0,  # mean per query
    "requests_per_second": 200.0,
    "error_rate": 0.001,  # 5xx share of requests
    "cache_hit_ratio": 0.70,
    "memory_bytes": 1024**3,  # all worker processes together
}


# --- Snapshots ---------------------------------------------------------------------------


def _collect():
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not directory:
        return REGISTRY.collect()
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=directory)
    return registry.collect()


def _new_histogram(bounds) -> dict:
    return {"buckets": [0.0] * (len(bounds) + 1), "sum": 0.0, "count": 0.0}


def _add_bucket(histogram: dict, bounds, sample) -> None:
    le = sample.labels["le"]
    index = len(bounds) if le == "+Inf" else bounds.index(float(le))
    histogram["buckets"][index] += sample.value


def empty_snapshot(at: float) -> dict:
    """A snapshot with nothing counted yet, taken at ``at`` (a Unix time)."""
    return {
        "at": at,
        "requests": {},  # by status class
        "latency": _new_histogram(metrics.LATENCY_BUCKETS),
        "db_time": _new_histogram(metrics.LATENCY_BUCKETS),
        "queries": 0.0,
        "slow_queries": 0.0,
        "cache": {},  # by key family: {"hit": …, "miss": …}
        "websockets": 0.0,
        "ttft": {},  # by model
        "tps": {},  # by model
        "rate_limited": {},  # by tier
        "memory": {},  # by pid
    }


def take_snapshot() -> dict:
    """Every figure the dashboard needs, cumulative since the workers started."""
    snap = empty_snapshot(time.time())
    for family in _collect():
        for sample in family.samples:
            _absorb(snap, family.name, sample)
    for histogram in (snap["latency"], snap["db_time"], *snap["ttft"].values(), *snap["tps"].values()):
        _decumulate(histogram)
    return snap


def _decumulate(histogram: dict) -> None:
    """Prometheus buckets count everything ≤ their bound; keep per-bucket counts."""
    cumulative = histogram["buckets"]
    histogram["buckets"] = [count - (cumulative[i - 1] if i else 0.0) for i, count in enumerate(cumulative)]


# Histogram families: snapshot key, bucket bounds, and the label that keeps one
# histogram per value (None: one histogram for the whole platform).
_HISTOGRAMS = {
    "agentsflow_request_duration_seconds": ("latency", metrics.LATENCY_BUCKETS, None),
    "agentsflow_request_db_seconds": ("db_time", metrics.LATENCY_BUCKETS, None),
    "agentsflow_ttft_seconds": ("ttft", metrics.TTFT_BUCKETS, "model"),
    "agentsflow_tokens_per_second": ("tps", metrics.TPS_BUCKETS, "model"),
}
# Counter families summed into one figure: snapshot key.
_COUNTERS = {
    "agentsflow_db_queries": "queries",
    "agentsflow_slow_queries": "slow_queries",
}


def _absorb(snap: dict, family: str, sample) -> None:
    name, labels, value = sample.name, sample.labels, sample.value
    if family in _HISTOGRAMS:
        _absorb_histogram(snap, family, sample)
        if family == "agentsflow_request_duration_seconds" and name.endswith("_count"):
            requests = snap["requests"]
            requests[labels["status_class"]] = requests.get(labels["status_class"], 0.0) + value
    elif family in _COUNTERS and name.endswith("_total"):
        snap[_COUNTERS[family]] += value
    elif family == "agentsflow_cache_requests" and name.endswith("_total"):
        outcome = labels["outcome"]
        if outcome in ("hit_local", "hit_shared", "miss"):
            counts = snap["cache"].setdefault(labels["family"], {"hit": 0.0, "miss": 0.0})
            counts["miss" if outcome == "miss" else "hit"] += value
    elif family == "agentsflow_websocket_connections":
        snap["websockets"] += value
    elif family == "agentsflow_ratelimit_rejections" and name.endswith("_total"):
        snap["rate_limited"][labels["tier"]] = snap["rate_limited"].get(labels["tier"], 0.0) + value
    elif family == "agentsflow_process_resident_memory_bytes" and value > 0:
        snap["memory"][labels["pid"]] = value


def _absorb_histogram(snap: dict, family: str, sample) -> None:
    """Add one ``_bucket``, ``_sum`` or ``_count`` sample to its histogram."""
    key, bounds, split_by = _HISTOGRAMS[family]
    histogram = snap[key] if split_by is None else snap[key].setdefault(sample.labels[split_by], _new_histogram(bounds))
    if sample.name.endswith("_bucket"):
        _add_bucket(histogram, bounds, sample)
    elif sample.name.endswith("_sum"):
        histogram["sum"] += sample.value
    elif sample.name.endswith("_count"):
        histogram["count"] += sample.value


# --- Figures between two snapshots ----------------------------------------------------------


def quantile(q: float, bounds, buckets: list[float]) -> float | None:
    """``histogram_quantile``: linear interpolation inside the bucket holding rank q.
    ``buckets`` are per-bucket counts (not cumulative), the last one is +Inf."""
    total = sum(buckets)
    if total <= 0:
        return None
    rank, seen = q * total, 0.0
    for index, count in enumerate(buckets):
        if count and seen + count >= rank:
            if index == len(bounds):  # +Inf: the largest finite bound is all we know
                return float(bounds[-1])
            lower = bounds[index - 1] if index else 0.0
            return lower + (bounds[index] - lower) * (rank - seen) / count
        seen += count
    return float(bounds[-1])


def _delta(new: float, old: float) -> float:
    # A counter that went down was reset (a process restarted): count from zero.
    return new - old if new >= old else new


def _histogram_delta(new: dict, old: dict | None) -> dict:
    if not old or new["count"] < old["count"]:
        return new
    return {
        "buckets": [_delta(a, b) for a, b in zip(new["buckets"], old["buckets"], strict=True)],
        "sum": new["sum"] - old["sum"],
        "count": new["count"] - old["count"],
    }


def _ratio(part: float, whole: float) -> float | None:
    return part / whole if whole > 0 else None


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


def figures(new: dict, old: dict) -> dict:
    """The dashboard's figures over the interval between ``old`` and ``new``."""
    seconds = max(new["at"] - old["at"], 1e-6)
    latency = _histogram_delta(new["latency"], old["latency"])
    db_time = _histogram_delta(new["db_time"], old["db_time"])
    requests = {cls: _delta(count, old["requests"].get(cls, 0.0)) for cls, count in new["requests"].items()}
    total = sum(requests.values())
    queries = _delta(new["queries"], old["queries"])
    cache_families = {}
    hits = lookups = 0.0
    for family, counts in new["cache"].items():
        before = old["cache"].get(family, {"hit": 0.0, "miss": 0.0})
        hit, miss = _delta(counts["hit"], before["hit"]), _delta(counts["miss"], before["miss"])
        hits, lookups = hits + hit, lookups + hit + miss
        cache_families[family] = {"hit_ratio": _ratio(hit, hit + miss), "lookups": hit + miss}
    return {
        "window_seconds": round(seconds, 1),
        "requests": total,
        "requests_per_second": round(total / seconds, 2),
        "latency_ms": {
            q: _ms(quantile(value, metrics.LATENCY_BUCKETS, latency["buckets"]))
            for q, value in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99))
        },
        "error_rate": _ratio(requests.get("5xx", 0.0), total),
        "status_classes": requests,
        "cache_hit_ratio": _ratio(hits, lookups),
        "cache_families": cache_families,
        "db": {
            "queries": queries,
            "query_ms_mean": _ms(_ratio(db_time["sum"], queries)),
            "request_db_ms_p95": _ms(quantile(0.95, metrics.LATENCY_BUCKETS, db_time["buckets"])),
            "slow_queries": _delta(new["slow_queries"], old["slow_queries"]),
        },
        "websockets": new["websockets"],
        "models": _model_figures(new, old),
        "rate_limited": {
            tier: _delta(count, old["rate_limited"].get(tier, 0.0)) for tier, count in new["rate_limited"].items()
        },
        "memory": {"workers": new["memory"], "total_bytes": sum(new["memory"].values())},
    }


def _model_figures(new: dict, old: dict) -> dict:
    """Per model TTFT and tokens/s over the interval, or since start when the model
    had no reply in the interval (a quiet model still shows what it did)."""
    result = {}
    for model, ttft_new in new["ttft"].items():
        ttft = _histogram_delta(ttft_new, old["ttft"].get(model))
        tps = _histogram_delta(new["tps"].get(model, _new_histogram(metrics.TPS_BUCKETS)), old["tps"].get(model))
        if ttft["count"] <= 0:
            ttft, tps = ttft_new, new["tps"].get(model, tps)
        result[model] = {
            "replies": ttft["count"],
            "ttft_ms_p50": _ms(quantile(0.5, metrics.TTFT_BUCKETS, ttft["buckets"])),
            "ttft_ms_p95": _ms(quantile(0.95, metrics.TTFT_BUCKETS, ttft["buckets"])),
            "tokens_per_second_p50": quantile(0.5, metrics.TPS_BUCKETS, tps["buckets"]),
        }
    return result


def _status(value: float | None, meets_target: Callable[[float], bool]) -> str:
    """idle without a value (no traffic to measure), else ok or warn."""
    if value is None:
        return "idle"
    return "ok" if meets_target(value) else "warn"


def _rps_status(rps: float, latency_p95: float | None) -> str:
    if rps >= TARGETS["requests_per_second"]:
        return "ok"
    if latency_p95 is not None and latency_p95 > TARGETS["api_response_ms"]:
        return "warn"  # slow while below the target rate: no headroom
    return "idle"  # below the target rate only because traffic is low


def target_table(current: dict) -> list[dict]:
    """The guide's target table with live values: ok, warn, or idle (no traffic)."""
    latency_p95 = current["latency_ms"]["p95"]
    db_query_ms = current["db"]["query_ms_mean"]
    rps = current["requests_per_second"]
    error_rate = current["error_rate"]
    cache_hit_ratio = current["cache_hit_ratio"]
    memory = current["memory"]["total_bytes"] or None
    rows = [
        (
            "API response time (p95)",
            latency_p95,
            "ms",
            f"< {TARGETS['api_response_ms']:.0f} ms",
            _status(latency_p95, lambda v: v < TARGETS["api_response_ms"]),
        ),
        (
            "Database query time (mean)",
            db_query_ms,
            "ms",
            f"< {TARGETS['db_query_ms']:.0f} ms",
            _status(db_query_ms, lambda v: v < TARGETS["db_query_ms"]),
        ),
        ("Requests per second", rps, "req/s", f"{TARGETS['requests_per_second']:.0f}+", _rps_status(rps, latency_p95)),
        (
            "Error rate (5xx)",
            error_rate,
            "ratio",
            f"< {TARGETS['error_rate']:.1%}",
            _status(error_rate, lambda v: v < TARGETS["error_rate"]),
        ),
        (
            "Cache hit ratio",
            cache_hit_ratio,
            "ratio",
            f"> {TARGETS['cache_hit_ratio']:.0%}",
            _status(cache_hit_ratio, lambda v: v > TARGETS["cache_hit_ratio"]),
        ),
        ("Memory (all workers)", memory, "bytes", "< 1 GB", _status(memory, lambda v: v < TARGETS["memory_bytes"])),
    ]
    return [
        {"metric": name, "value": value, "unit": unit, "target": target, "status": status}
        for name, value, unit, target, status in rows
    ]


# --- Stored samples --------------------------------------------------------------------------


def record_sample_if_due(snapshot: dict | None = None) -> MetricSample | None:
    """Store a snapshot unless one is younger than DASHBOARD_SAMPLE_SECONDS. A short
    cache lock keeps concurrent pollers (any process) from storing twice."""
    every = settings.DASHBOARD_SAMPLE_SECONDS
    latest = MetricSample.objects.order_by("-at").values_list("at", flat=True).first()
    if latest and (timezone.now() - latest).total_seconds() < every:
        return None
    if not cache.add("dashboard:sample-lock", 1, timeout=max(1, every - 1)):
        return None
    sample = MetricSample.objects.create(data=snapshot or take_snapshot())
    _prune_old_samples()
    return sample


def _prune_old_samples() -> None:
    if cache.add("dashboard:prune-lock", 1, timeout=3600):
        cutoff = timezone.now() - timedelta(days=settings.DASHBOARD_HISTORY_DAYS)
        MetricSample.objects.filter(at__lt=cutoff).delete()


def live(window_seconds: float = 10.0) -> dict:
    """Current figures: now against the newest stored sample at least ``window_seconds``
    old (or the oldest there is). The first call on a fresh install has nothing to
    compare with and says so."""
    now = take_snapshot()
    record_sample_if_due(now)
    cutoff = timezone.now() - timedelta(seconds=window_seconds)
    base = (
        MetricSample.objects.filter(at__lte=cutoff).order_by("-at").first()
        or MetricSample.objects.filter(at__lte=timezone.now() - timedelta(seconds=1)).order_by("at").first()
    )
    if base is None:
        current = figures(now, empty_snapshot(now["at"] - 1e-6))
        current["window_seconds"] = None
    else:
        current = figures(now, base.data)
    return {
        "at": timezone.now().isoformat(),
        "since_start": {
            "requests": sum(now["requests"].values()),
            "errors": now["requests"].get("5xx", 0.0),
            "slow_queries": now["slow_queries"],
        },
        "current": current,
        "targets": target_table(current),
        "multiprocess": bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR")),
    }


HISTORY_RANGES = {"hour": (timedelta(hours=1), 0), "day": (timedelta(days=1), 300)}


def history(span: str) -> list[dict]:
    """Chart points over the last hour (every sample) or day (one per 5 minutes):
    each point is the figures between two consecutive kept samples."""
    length, spacing = HISTORY_RANGES[span]
    rows = MetricSample.objects.filter(at__gte=timezone.now() - length).order_by("at").values_list("at", "data")
    kept: list[tuple] = []
    for at, data in rows.iterator(chunk_size=500):
        if not kept or (at - kept[-1][0]).total_seconds() >= spacing:
            kept.append((at, data))
    points = []
    for (_, old), (at, new) in itertools.pairwise(kept):
        fig = figures(new, old)
        points.append(
            {
                "at": at.isoformat(),
                "requests_per_second": fig["requests_per_second"],
                "latency_ms": fig["latency_ms"],
                "error_rate": fig["error_rate"],
                "cache_hit_ratio": fig["cache_hit_ratio"],
                "db_query_ms_mean": fig["db"]["query_ms_mean"],
                "websockets": fig["websockets"],
                "memory_bytes": fig["memory"]["total_bytes"],
            }
        )
    return points
