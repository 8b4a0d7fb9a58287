"""The platform's own Prometheus metrics (django-prometheus covers requests,
database and cache). Correct with several worker processes when
PROMETHEUS_MULTIPROC_DIR is set (prometheus_client's multiprocess mode): every
process writes its own files and /metrics sums them.
"""

from __future__ import annotations

import os
import resource
import time

from prometheus_client import Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.75, 1, 2.5, 5, 10, 30)
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1, 2, 5, 10, 30)
TPS_BUCKETS = (1, 2, 5, 10, 20, 35, 50, 75, 100, 150, 200, 300, 500, 1000)

REQUEST_LATENCY = Histogram(
    "agentsflow_request_duration_seconds",
    "Time to answer an HTTP request (to the first byte of a stream).",
    ["method", "status_class"],
    buckets=LATENCY_BUCKETS,
)
REQUEST_DB_TIME = Histogram(
    "agentsflow_request_db_seconds",
    "Database time per HTTP request.",
    buckets=LATENCY_BUCKETS,
)
DB_QUERIES = Counter("agentsflow_db_queries_total", "Database queries made while answering HTTP requests.")
SLOW_QUERIES = Counter("agentsflow_slow_queries_total", "Queries slower than SLOW_QUERY_MS.")
TTFT = Histogram("agentsflow_ttft_seconds", "Model time to first token.", ["model"], buckets=TTFT_BUCKETS)
TOKENS_PER_SECOND = Histogram(
    "agentsflow_tokens_per_second", "Completion tokens per second of a reply.", ["model"], buckets=TPS_BUCKETS
)
TOKENS = Counter("agentsflow_tokens_total", "Tokens in and out.", ["model", "tier", "direction"])
REPLIES = Counter("agentsflow_replies_total", "Model replies by final status.", ["model", "status"])
WEBSOCKETS = Gauge("agentsflow_websocket_connections", "Open WebSocket connections.", multiprocess_mode="livesum")
STREAM_CANCELS = Counter("agentsflow_stream_cancels_total", "Replies stopped by a cancel request.")
STREAM_RESUMES = Counter("agentsflow_stream_resumes_total", "Streams resumed after a reconnect (SSE or WebSocket).")
RATE_LIMITED = Counter("agentsflow_ratelimit_rejections_total", "Requests refused by rate limits or quotas.", ["tier"])
RATE_LIMIT_FALLBACK = Counter(
    "agentsflow_ratelimit_fallback_total", "Rate-limit checks served by the per-process fallback (Redis down)."
)
CACHE = Counter("agentsflow_cache_requests_total", "Two-tier cache lookups.", ["family", "outcome"])
REDIS_ERRORS = Counter("agentsflow_redis_errors_total", "Redis operations that failed (breaker tripped).")
PROCESS_MEMORY = Gauge(
    "agentsflow_process_resident_memory_bytes",
    "Resident memory of each worker process.",
    ["pid"],
    multiprocess_mode="liveall",
)

_memory_sampled_at = 0.0


def sample_process_memory(every: float = 5.0) -> None:
    """Refresh this process's memory gauge (cheap; at most every few seconds)."""
    global _memory_sampled_at
    now = time.monotonic()
    if now - _memory_sampled_at < every:
        return
    _memory_sampled_at = now
    PROCESS_MEMORY.labels(pid=str(os.getpid())).set(_resident_bytes())


def _resident_bytes() -> int:
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def install_listeners() -> None:
    """Connect the cache, Redis and rate-limit fallbacks to their counters."""
    from core import ratelimit, redis
    from core.cache import two_tier

    two_tier.stats.listeners.append(lambda family, outcome: CACHE.labels(family, outcome).inc())
    redis.breaker.listeners.append(lambda operation: REDIS_ERRORS.inc())
    ratelimit._fallback_listeners.append(lambda tier: RATE_LIMIT_FALLBACK.inc())
