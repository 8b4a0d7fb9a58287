"""What checking an API key costs, in process: core.authentication.authenticate_key
timed on its own (the request path with no key skips it entirely, so its time is
the overhead), against the same PostgreSQL and Redis the servers use.

Three cases: the key in this process's memory tier (the steady state: a hot key
is refreshed from Redis once a second per process), in Redis only (memory tier
emptied before each call: one GET and an unpickle), and in neither (a database
query, then both tiers filled). ``under_load`` mixes the three in the proportions
the servers saw during the loadtest (their ``apikey`` cache counters) and gives
that mixture's median: the overhead a request pays at p50.
"""

from __future__ import annotations

import statistics
import time


def _median_us(samples: list[float]) -> float:
    return round(statistics.median(samples) * 1e6, 1)


def measure(keys: list[str], *, calls: int = 2000) -> dict:
    """Needs django.setup() with the servers' settings (same DATABASE_URL and REDIS_URL)."""
    from core import keys as key_format
    from core.authentication import authenticate_key
    from core.cache import two_tier

    def timed(key: str, before=None) -> float:
        if before:
            before(key)
        started = time.perf_counter()
        result = authenticate_key(key)
        elapsed = time.perf_counter() - started
        if result is None:
            raise RuntimeError("a seeded key did not authenticate")
        return elapsed

    def forget_local(key: str) -> None:
        two_tier.local.delete(f"apikey:{key_format.prefix_of(key)}")

    def forget_everywhere(key: str) -> None:
        two_tier.delete("apikey", key_format.prefix_of(key))

    for key in keys:  # warm both tiers and last_used_at
        authenticate_key(key)
    memory = [timed(keys[0]) for _ in range(calls)]
    shared = [timed(keys[i % len(keys)], forget_local) for i in range(calls)]
    cold = [timed(keys[i % len(keys)], forget_everywhere) for i in range(max(50, calls // 10))]
    return {
        "memory_tier_p50_us": _median_us(memory),
        "redis_tier_p50_us": _median_us(shared),
        "database_p50_us": _median_us(cold),
        "calls": calls,
        "samples_us": {
            "hit_local": sorted(round(x * 1e6, 1) for x in memory),
            "hit_shared": sorted(round(x * 1e6, 1) for x in shared),
            "miss": sorted(round(x * 1e6, 1) for x in cold),
        },
    }


def under_load(measured: dict, family_counts: dict | None) -> float | None:
    """The p50 (µs) of a lookup drawn like the servers' own: each tier's samples
    weighted by its share of the ``apikey`` lookups the servers counted."""
    if not family_counts:
        return None
    weights = {tier: family_counts.get(tier, 0) for tier in ("hit_local", "hit_shared", "miss")}
    total = sum(weights.values())
    if not total:
        return None
    # Each tier's samples stand for its share of the lookups: walk the merged, weighted distribution.
    points = sorted(
        (value, weights[tier] / total / len(samples))
        for tier, samples in measured["samples_us"].items()
        if samples and weights[tier]
        for value in samples
    )
    cumulative = 0.0
    for value, weight in points:
        cumulative += weight
        if cumulative >= 0.5:
            return value
    return points[-1][0] if points else None
