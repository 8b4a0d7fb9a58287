"""The platform's benchmark: ``make bench`` (or ``python -m bench.run``).

    DATABASE_URL=postgres://…/af_bench REDIS_URL=redis://…/4 python -m bench.run [--quick] [--reseed]

Runs the platform as deployed (bench.platform: production settings, granian
WSGI + uvicorn ASGI behind nginx, PostgreSQL, Redis), seeds realistic data
(bench.seed; reused between runs), starts the zero-latency fake model
(bench.fake_upstream) and measures in one run, with load generators in their own
processes (wrk, bench.ws_client, ``manage.py loadtest``):

1. the ceiling: a bare Django JSON view on the same server and settings;
2. ``GET /api/models`` with an API key (cached);
3. the 50 most recent conversations of a user with an API key;
4. chat send, non-streaming, against the zero-latency model;
5. the analytics summary (skipped, saying so, where analytics has no summary);
6. WebSockets: sockets held at once with the platform's memory, and streamed
   events per second with their latency;

plus the API-key check's cost, the cache hit ratio under the loadtest mix and
the error count. Figures that miss their goal are profiled with py-spy. Prints
the table and writes bench/results/latest.json and latest.md.

The rate limits and token quotas are raised for the run (RATE_LIMIT_*,
TOKEN_QUOTA_*): the figures are the platform's capacity, not a key's allowance.
The limiter still runs on every request. The Redis database given is flushed at
the start (use one of its own); the PostgreSQL database is the seed's.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shutil
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import orjson

from agentsflow.testing import loopback_production_env
from bench import http_figures, procs, report, ws
from bench import profile as profiler
from bench.seed import FULL, QUICK, TINY, SeedSize, heavy_users

RESULTS = Path(__file__).resolve().parent / "results"
RAISED_LIMIT = "1000000000"


@dataclass(frozen=True)
class Plan:
    """How big and how long: the full run, --quick, or --tiny (the smoke test)."""

    name: str
    seed: SeedSize
    database_suffix: str
    keys: int  # heavy users whose keys the load uses
    rounds: int
    seconds: float
    warmup: float
    connections: int
    held: int  # WebSockets held at once
    stream: ws.StreamPlan
    loadtest_seconds: float
    auth_calls: int
    profile_seconds: float


PLANS = {
    "full": Plan("full", FULL, "", 100, 3, 8, 2, 64, 10_000, ws.StreamPlan(200, 50, 750), 15, 2000, 8),
    "quick": Plan("quick", QUICK, "_quick", 20, 1, 4, 1, 64, 1_000, ws.StreamPlan(50, 20, 100), 5, 500, 0),
    "tiny": Plan("tiny", TINY, "_tiny", 2, 1, 2, 1, 16, 50, ws.StreamPlan(8, 20, 30), 2, 100, 0),
}


def _database_url(base: str, suffix: str) -> str:
    if not suffix:
        return base
    head, _, name = base.rpartition("/")
    name, _, query = name.partition("?")
    return f"{head}/{name}{suffix}" + (f"?{query}" if query else "")


def platform_env(
    database_url: str, redis_url: str, upstream: str, stream: ws.StreamPlan, var_dir: Path
) -> dict[str, str]:
    models = [
        {
            "name": "fast",
            "provider": "fake",
            "upstream_model": "tokens-16",
            "description": "Benchmark model: zero latency, 16 tokens.",
            "context_window": 8192,
            "max_output_tokens": 64,
        },
        {
            "name": "stream",
            "provider": "fake",
            "upstream_model": stream.upstream_model,
            "description": "Benchmark model: time-stamped tokens at a fixed rate.",
            "context_window": 8192,
            "max_output_tokens": stream.tokens + 16,
        },
    ]
    return {
        **loopback_production_env("bench-" + secrets.token_urlsafe(48)),
        "DEBUG": "false",
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "AGENTSFLOW_VAR_DIR": str(var_dir),
        "EXTRA_PROVIDERS": "fake",
        "FAKE_BASE_URL": upstream,
        "AGENTSFLOW_MODELS": orjson.dumps(models).decode(),
        "CHAT_DEFAULT_MODEL": "fast",
        **{f"RATE_LIMIT_{tier}": RAISED_LIMIT for tier in ("PREMIUM", "REGULAR", "ANONYMOUS")},
        **{f"TOKEN_QUOTA_{tier}": RAISED_LIMIT + "000" for tier in ("PREMIUM", "REGULAR")},
    }


def setup_django(env: dict[str, str]) -> None:
    os.environ.update(env)
    os.environ["DJANGO_SETTINGS_MODULE"] = "agentsflow.settings"
    import django

    django.setup()


def prepare_state(redis_url: str) -> None:
    """Every run starts with the bench's Redis database empty (stale cached keys of
    an earlier seed must not answer) and the bench models as configured now."""
    import redis

    from chat.registry import sync_from_settings

    redis.Redis.from_url(redis_url).flushdb()
    sync_from_settings(update=True)


def _analytics_probe(base_url: str, key: str) -> tuple[str | None, str]:
    path = "/api/analytics/summary"
    try:
        response = httpx.get(base_url + path, headers={"Authorization": f"Bearer {key}"}, timeout=30)
    except httpx.HTTPError as exc:
        return None, f"{path} unreachable ({type(exc).__name__})"
    if response.status_code == 200:
        return path, ""
    return None, f"{path} answered {response.status_code}: analytics is not on this branch yet"


def _log(message: str) -> None:
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


def _judge(results: dict) -> None:
    cache = results.get("cache")
    stream = results.get("stream")
    if stream:
        p99 = stream["latency_ms"]["p99"]
        stream["passed"] = bool(
            stream["events_per_second"]
            and stream["events_per_second"] >= 10_000
            and p99 is not None
            and p99 <= 100
            and stream["deltas_received"] == stream["deltas_expected"]
        )
    held = results.get("held")
    if held:
        held["passed"] = held["held"] >= 10_000 and held["memory_held"]["rss_mb"] < 1024 and held["failed"] == 0
    auth = results.get("auth")
    if auth:
        from bench.auth_cost import under_load

        families = (cache or {}).get("cache", {}).get("families", {})
        auth["under_load_p50_us"] = under_load(auth, families.get("apikey"))
        judged = auth["under_load_p50_us"] if auth["under_load_p50_us"] is not None else auth["redis_tier_p50_us"]
        auth["passed"] = judged <= 1000
        auth.pop("samples_us", None)
    if cache:
        ratio = cache["cache"]["ratio"]
        cache["passed"] = ratio is not None and ratio >= 0.90
    other = sum(f.get("errors_other", 0) for f in results.get("http", []))
    requests = sum(f.get("requests", 0) for f in results.get("http", []))
    if cache:
        other += cache["loadtest"]["errors_other"]
        requests += cache["loadtest"]["requests"]
    results["errors"] = {"other": other, "requests": requests, "passed": other == 0}


def _profile_misses(results, figures, platform, files, work_dir, plan, keys_file) -> dict:
    """py-spy on every worker of the server that answers a figure that missed its goal."""
    profiles = {}
    if not plan.profile_seconds or not profiler.available():
        return profiles
    from bench import wrk

    out_dir = RESULTS / "profiles"
    out_dir.mkdir(parents=True, exist_ok=True)
    for figure in figures:
        summary = figure.summary()
        if summary.get("passed") is not False:
            continue
        _log(f"profile: {figure.id} ({plan.profile_seconds:.0f} s of load, py-spy on the {figure.server} server)")
        output = out_dir / f"{figure.id}.txt"
        spy = profiler.start(platform.roots[figure.server], plan.profile_seconds, output)
        time.sleep(0.5)
        wrk.run(platform.base_for(figure.path), files[figure.id], seconds=plan.profile_seconds, connections=64)
        error = profiler.finish(spy)
        profiles[figure.id] = {"error": error} if error else {**profiler.summarise(output), "server": figure.server}
    stream = results.get("stream")
    if stream and stream.get("passed") is False:
        _log(f"profile: streamed events ({plan.profile_seconds:.0f} s of steady streaming, py-spy on the asgi server)")
        output = out_dir / "stream.txt"
        spies = []

        # Sample once the streams are flowing (the measured run's median wait for a
        # first delta), not while the sends are still being stored.
        delay = min(30.0, (stream["send_to_first_delta_ms"]["p50"] or 0) / 1000)

        def begin() -> None:
            def later() -> None:
                time.sleep(delay)
                spies.append(profiler.start(platform.roots["asgi"], plan.profile_seconds, output))

            threading.Thread(target=later, daemon=True).start()

        # The figure is measured already: this second run only feeds the profiler.
        with contextlib.suppress(Exception):
            ws.streamed_events(platform, keys_file, work_dir, plan.stream, on_go=begin)
        error = profiler.finish(spies[0]) if spies else "the streams ended before sampling began"
        profiles["stream"] = {"error": error} if error else {**profiler.summarise(output), "server": "asgi"}
    return profiles


def run(args) -> dict:
    plan = PLANS["tiny" if args.tiny else "quick" if args.quick else "full"]
    base_url = args.database_url or os.environ.get("DATABASE_URL", "")
    redis_url = args.redis_url or os.environ.get("REDIS_URL", "")
    if not base_url.startswith(("postgres://", "postgresql://")) or not redis_url.startswith("redis://"):
        sys.exit("bench: set DATABASE_URL (PostgreSQL) and REDIS_URL (a Redis database of its own: it is flushed)")
    if shutil.which("wrk") is None:
        sys.exit("bench: wrk is not installed (apt-get install wrk)")
    database_url = _database_url(base_url, plan.database_suffix)
    out_dir = Path(args.out) if args.out else RESULTS
    started = time.monotonic()

    from bench.fake_upstream import run_fake_upstream
    from bench.machine import describe, load_average
    from bench.platform import run_platform
    from bench.seed import ensure_seeded

    with contextlib.ExitStack() as cleanup:
        work_dir = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="agentsflow-bench-run-")))
        upstream = cleanup.enter_context(run_fake_upstream(separate_process=True))
        env = platform_env(database_url, redis_url, upstream, plan.stream, work_dir / "var")
        setup_django(env)
        seed = ensure_seeded(database_url, plan.seed, env=env, reseed=args.reseed)
        prepare_state(redis_url)
        users = heavy_users(database_url, plan.seed, plan.keys)
        keys_file = work_dir / "keys.txt"
        keys_file.write_text("\n".join(u.key for u in users) + "\n")
        machine = describe(database_url, redis_url)

        _log("platform: starting")
        platform = cleanup.enter_context(run_platform(env))
        _log(f"platform: {platform.topology}")
        results: dict = {
            "machine": machine,
            "setup": {
                "command": "make bench" + (" --quick" if args.quick else "") + (" (tiny)" if args.tiny else ""),
                "plan": plan.name,
                "topology": platform.topology,
                "seed": str(plan.seed) + (" (reused)" if seed.reused else f" (seeded in {seed.seconds:.0f} s)"),
                "wrk": f"2 threads, {plan.connections} connections",
                "rounds": plan.rounds,
                "seconds": plan.seconds,
                "keys": len(users),
                "limits": "Rate limits and token quotas raised for the run (RATE_LIMIT_*, TOKEN_QUOTA_*); "
                "the limiter still counts every request in Redis.",
            },
        }

        analytics_path, analytics_skip = _analytics_probe(platform.base_for("/api/analytics/summary"), users[0].key)
        figures = http_figures.define(users, analytics_path=analytics_path, analytics_skip=analytics_skip)
        _log(f"http: {plan.rounds} round(s) × {plan.seconds:.0f} s per figure, wrk -c{plan.connections}")
        http_figures.run_rounds(
            figures,
            platform.base_for,
            work_dir,
            rounds=plan.rounds,
            seconds=plan.seconds,
            warmup=plan.warmup,
            connections=plan.connections,
            cpu_seconds=lambda: procs.cpu_seconds(platform.pids()),
        )
        results["http"] = [f.summary() for f in figures]

        _log("auth: API-key check in process")
        from bench import auth_cost

        results["auth"] = auth_cost.measure([u.key for u in users], calls=plan.auth_calls)

        _log(f"cache: manage.py loadtest for {plan.loadtest_seconds:.0f} s")
        from bench import cache_ratio

        front = platform.url or platform.asgi_url  # without nginx, uvicorn serves every path
        results["cache"] = cache_ratio.during_loadtest(
            front,
            [platform.wsgi_url + "/metrics", platform.asgi_url + "/metrics"],
            users[0].key,
            {**os.environ},
            seconds=plan.loadtest_seconds,
        )

        _log(
            f"websockets: {plan.stream.sockets} streams × {plan.stream.tokens_per_second} tokens/s "
            f"({plan.stream.tokens} tokens each)"
        )
        results["stream"] = ws.streamed_events(platform, keys_file, work_dir, plan.stream, others=ws.services())
        _log(f"websockets: holding {plan.held:,}")
        results["held"] = ws.held_connections(platform, keys_file, work_dir, count=plan.held)

        _judge(results)
        if not args.no_profile:
            files = {f.id: work_dir / f"{f.id}.tsv" for f in figures}
            results["profiles"] = _profile_misses(results, figures, platform, files, work_dir, plan, keys_file)
        machine["load_average_after"] = load_average()
        platform.keep_logs(out_dir / "logs")
        results["seconds"] = round(time.monotonic() - started, 1)
    json_path, md_path = report.write(results, out_dir)
    print(report.text_table(report.rows(results)))
    _log(f"\nwrote {json_path} and {md_path} ({results['seconds']:.0f} s)")
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help=f"smaller seed ({QUICK}), shorter runs")
    size.add_argument("--tiny", action="store_true", help=f"the smoke test's size ({TINY}), a few seconds a figure")
    parser.add_argument("--reseed", action="store_true", help="drop the benchmark database and seed it again")
    parser.add_argument("--no-profile", action="store_true", help="do not profile the figures that miss their goal")
    parser.add_argument(
        "--database-url", help="default: DATABASE_URL (--quick and --tiny add _quick/_tiny to its name)"
    )
    parser.add_argument("--redis-url", help="default: REDIS_URL (flushed at the start)")
    parser.add_argument("--out", help=f"where latest.json and latest.md go (default {RESULTS})")
    args = parser.parse_args(argv)
    # A plain SIGTERM would skip the clean-up: servers, nginx and the fake model would outlive the run.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    run(args)


if __name__ == "__main__":
    main()
