"""The two-tier cache's hit ratio while ``manage.py loadtest`` runs its default
mix against the platform: ``agentsflow_cache_requests_total`` read from both
servers' /metrics before and after, per key family."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import orjson
from prometheus_client.parser import text_string_to_metric_families

PROJECT_ROOT = Path(__file__).resolve().parent.parent
HIT_OUTCOMES = ("hit_local", "hit_shared")


def cache_counts(metrics_urls: list[str]) -> dict[tuple[str, str], float]:
    counts: dict[tuple[str, str], float] = {}
    for url in metrics_urls:
        text = httpx.get(url, timeout=10).raise_for_status().text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "agentsflow_cache_requests_total":
                    key = (sample.labels["family"], sample.labels["outcome"])
                    counts[key] = counts.get(key, 0.0) + sample.value
    return counts


def ratio(before: dict, after: dict) -> dict:
    delta = {key: after.get(key, 0.0) - before.get(key, 0.0) for key in after}
    families = sorted({family for family, _ in delta if family != "shared_tier"})
    per_family = {}
    total_hits = total = 0.0
    for family in families:
        hits = sum(delta.get((family, outcome), 0.0) for outcome in HIT_OUTCOMES)
        misses = delta.get((family, "miss"), 0.0)
        if hits + misses:
            per_family[family] = {
                "hit_local": int(delta.get((family, "hit_local"), 0)),
                "hit_shared": int(delta.get((family, "hit_shared"), 0)),
                "miss": int(misses),
                "ratio": round(hits / (hits + misses), 4),
            }
        total_hits += hits
        total += hits + misses
    return {
        "ratio": round(total_hits / total, 4) if total else None,
        "lookups": int(total),
        "families": per_family,
        "shared_tier_errors": int(delta.get(("shared_tier", "error"), 0)),
    }


def during_loadtest(
    base_url: str, metrics_urls: list[str], key: str, env: dict, *, seconds: float, concurrency: int = 16
) -> dict:
    """Run ``manage.py loadtest`` (default mix, chat on the bench's zero-latency model)."""
    before = cache_counts(metrics_urls)
    command = [
        sys.executable,
        "manage.py",
        "loadtest",
        "--base-url",
        base_url,
        "--key",
        key,
        "--concurrency",
        str(concurrency),
        "--duration",
        str(seconds),
        "--model",
        "fast",
        "--json",
    ]
    finished = subprocess.run(
        command, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=seconds + 120, check=False
    )
    if finished.returncode != 0:
        raise RuntimeError(f"manage.py loadtest failed:\n{finished.stdout[-2000:]}\n{finished.stderr[-2000:]}")
    after = cache_counts(metrics_urls)
    report = orjson.loads(finished.stdout)
    total = report["total"]
    statuses = {str(k): v for k, v in total["statuses"].items()}
    return {
        "cache": ratio(before, after),
        "loadtest": {
            "base_url": base_url,
            "concurrency": concurrency,
            "seconds": report["duration_s"],
            "requests": total["requests"],
            "rps": total["rps"],
            "p50_ms": total["p50_ms"],
            "p99_ms": total["p99_ms"],
            "statuses": statuses,
            "errors_429": statuses.get("429", 0),
            "errors_other": sum(n for s, n in statuses.items() if not s.startswith("2") and s != "429"),
            "endpoints": {
                name: {k: row[k] for k in ("requests", "rps", "p50_ms", "p99_ms", "statuses")}
                for name, row in report["endpoints"].items()
            },
        },
    }
