"""Does the analytics API stay as fast at 1,000,000 messages as at 10,000?

For each size, a PostgreSQL database of its own is created next to DATABASE_URL's,
migrated and seeded with COPY (users, API keys, conversations and messages spread
over the last 60 days), then rolled up with ``manage.py rollup`` (timed). One
server process per database (granian WSGI, one worker, production settings) then
answers the same requests, interleaved: each round sends every request to every
server, alternating which size goes first. Twice: with the analytics cache off
(every answer read from the rollups) and on (the default 30 s).

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/agentsflow \\
        python -m bench.analytics_scale --sizes 10000,1000000 --requests 300

Prints the median and p95 latency (client side, milliseconds, over loopback) per
endpoint and size, and the ratio of the largest size to the smallest.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import psycopg

from agentsflow.testing import fresh_database_env, loopback_production_env, manage, run_server
from core import keys

USERS = 50
KEYS_PER_USER = 2
MODELS = ("smollm2", "gpt-4o-mini", "mistral-small")
DAYS = 60
MESSAGES_PER_CONVERSATION = 4  # user, assistant, user, assistant
STAFF_EMAIL = "bench-staff@example.com"

ENDPOINTS = {
    "summary (everyone, 30 days)": "/api/analytics/summary",
    "summary (one user, 30 days)": "/api/analytics/summary?user={user}",
    "timeseries tokens (day, 30 days)": "/api/analytics/timeseries?metric=tokens&granularity=day",
    "timeseries latency p95 (hour, 7 days)": "/api/analytics/timeseries?metric=latency_p95_ms&granularity=hour"
    "&from={week_ago}",
    "breakdown by model (30 days)": "/api/analytics/breakdown?by=model",
}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))]


# --- Seeding -------------------------------------------------------------------------------------


def _copy(conn: psycopg.Connection, sql: str, lines) -> None:
    with conn.cursor() as cursor, cursor.copy(sql) as copy:
        buffer = io.StringIO()
        for count, line in enumerate(lines, 1):
            buffer.write(line)
            if count % 20_000 == 0:
                copy.write(buffer.getvalue())
                buffer = io.StringIO()
        copy.write(buffer.getvalue())


def _ts(moment: datetime) -> str:
    return moment.isoformat()


def seed(database_url: str, size: int, *, now: datetime, rng: random.Random) -> None:
    """Users, keys, then ``size`` messages in conversations of four, by COPY."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        start = time.perf_counter()
        stamp = _ts(now - timedelta(days=DAYS + 1))
        _copy(
            conn,
            "COPY users (password, is_superuser, email, display_name, tier, is_staff, is_active, created_at,"
            " updated_at) FROM STDIN",
            (f"!\tf\tseed{n}@example.com\tSeed {n}\tregular\tf\tt\t{stamp}\t{stamp}\n" for n in range(USERS)),
        )
        user_ids = [row[0] for row in conn.execute("SELECT id FROM users WHERE email LIKE 'seed%' ORDER BY id")]
        key_rows = []
        for user_id in user_ids:
            for n in range(KEYS_PER_USER):
                new = keys.generate()
                key_rows.append(f'key{n}\t{new.prefix}\t{new.secret_hash}\t["chat"]\t{stamp}\t{user_id}\n')
        _copy(conn, "COPY api_keys (name, prefix, secret_hash, scopes, created_at, user_id) FROM STDIN", key_rows)
        key_ids = {
            user_id: [row[0] for row in conn.execute("SELECT id FROM api_keys WHERE user_id = %s", [user_id])]
            for user_id in user_ids
        }

        conversations = size // MESSAGES_PER_CONVERSATION
        first_id = conn.execute("SELECT COALESCE(MAX(id), 0) + 1 FROM conversations").fetchone()[0]
        span = DAYS * 86400 - 3600
        plans = []
        for n in range(conversations):
            user_id = rng.choice(user_ids)
            key_id = rng.choice(key_ids[user_id]) if rng.random() < 0.6 else None
            plans.append(
                (first_id + n, user_id, rng.choice(MODELS), key_id, now - timedelta(seconds=rng.randrange(span)))
            )
        _copy(
            conn,
            "COPY conversations (id, title, model_name, created_at, updated_at, user_id) FROM STDIN",
            (f"{cid}\tBench {cid}\t{model}\t{_ts(at)}\t{_ts(at)}\t{uid}\n" for cid, uid, model, _, at in plans),
        )
        conn.execute(
            "SELECT setval(pg_get_serial_sequence('conversations', 'id'), (SELECT MAX(id) FROM conversations))"
        )

        def message_lines():
            written = 0
            for cid, _, model, key_id, at in plans:
                key = r"\N" if key_id is None else key_id
                for turn in range(MESSAGES_PER_CONVERSATION // 2):
                    asked = at + timedelta(seconds=30 * turn)
                    yield (
                        f"user\tHow do I benchmark {model}?\tcomplete\t{model}\t0\t0\t\\N\t\\N\t\t"
                        f"{_ts(asked)}\t{_ts(asked)}\t{key}\t{cid}\n"
                    )
                    roll = rng.random()
                    status = "error" if roll < 0.03 else "cancelled" if roll < 0.06 else "complete"
                    latency = int(rng.lognormvariate(7, 0.6))
                    ttft = int(rng.lognormvariate(5, 0.5))
                    answered = asked + timedelta(seconds=1)
                    yield (
                        f"assistant\tBy measuring it, twice.\t{status}\t{model}\t{rng.randrange(20, 2000)}\t"
                        f"{rng.randrange(5, 500)}\t{latency}\t{ttft}\t\t{_ts(answered)}\t{_ts(answered)}\t"
                        f"{key}\t{cid}\n"
                    )
                    written += 2
                    if written % 100_000 == 0:
                        log(f"    {written:,} / {size:,} messages ({time.perf_counter() - start:.0f} s)")

        _copy(
            conn,
            "COPY messages (role, content, status, model_name, prompt_tokens, completion_tokens, latency_ms, ttft_ms,"
            " error, created_at, updated_at, api_key_id, conversation_id) FROM STDIN",
            message_lines(),
        )
        conn.execute("ANALYZE")
        count = conn.execute("SELECT COUNT(*) FROM messages").fetchone()[0]
        log(f"    seeded {count:,} messages in {conversations:,} conversations ({time.perf_counter() - start:.1f} s)")


def prepare(size: int, tmp: Path, env_base: dict[str, str], rng: random.Random, now: datetime) -> dict:
    log(f"size {size:,}: database, migrations, seed")
    env = {**env_base, **fresh_database_env(f"scale_{size}", tmp)}
    manage("migrate", "--no-input", env=env, timeout=600)
    manage("createuser", STAFF_EMAIL, "--password", "bench-password-123", "--staff", env=env)
    staff_key = manage(
        "issuekey", STAFF_EMAIL, "--scopes", "analytics:read", "--rate-limit", "1000000", env=env
    ).strip()
    seed(env["DATABASE_URL"], size, now=now, rng=rng)

    started = time.perf_counter()
    manage("rollup", env=env, timeout=3600)
    fill_seconds = time.perf_counter() - started
    started = time.perf_counter()
    manage("rollup", env=env, timeout=600)
    rerun_seconds = time.perf_counter() - started
    with psycopg.connect(env["DATABASE_URL"]) as conn:
        hourly = conn.execute("SELECT COUNT(*) FROM analytics_usage_hourly").fetchone()[0]
        daily = conn.execute("SELECT COUNT(*) FROM analytics_usage_daily").fetchone()[0]
        user_id = conn.execute("SELECT MIN(id) FROM users WHERE email LIKE 'seed%'").fetchone()[0]
    log(
        f"    rollup: first fill {fill_seconds:.1f} s, next run {rerun_seconds:.1f} s;"
        f" {hourly:,} hourly, {daily:,} daily rows"
    )
    return {
        "size": size,
        "env": env,
        "key": staff_key,
        "user_id": user_id,
        "fill_seconds": fill_seconds,
        "rerun_seconds": rerun_seconds,
        "rollup_rows": hourly + daily,
    }


# --- Timing -------------------------------------------------------------------------------------


def measure(prepared: list[dict], requests: int, cache_seconds: int, tmp: Path) -> dict:
    """Median and p95 per (endpoint, size), requests interleaved across the servers."""
    week_ago = (datetime.now(UTC) - timedelta(days=7)).strftime("%Y-%m-%dT%H:%M:%SZ")
    timings: dict[tuple[str, int], list[float]] = {(name, p["size"]): [] for name in ENDPOINTS for p in prepared}
    with ExitStack() as stack:
        clients = []
        for p in prepared:
            env = {**p["env"], "ANALYTICS_CACHE_SECONDS": str(cache_seconds)}
            server = stack.enter_context(
                run_server(
                    env, kind="granian-wsgi", workers=1, log_path=tmp / f"server-{p['size']}-{cache_seconds}.log"
                )
            )
            client = stack.enter_context(
                httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {p['key']}"}, timeout=30)
            )
            paths = {name: path.format(user=p["user_id"], week_ago=week_ago) for name, path in ENDPOINTS.items()}
            for path in paths.values():  # warm up: connections, imports, first queries
                for _ in range(3):
                    response = client.get(path)
                    response.raise_for_status()
            clients.append((p["size"], client, paths))
        for round_number in range(requests):
            order = clients if round_number % 2 == 0 else clients[::-1]
            for name in ENDPOINTS:
                for size, client, paths in order:
                    started = time.perf_counter()
                    response = client.get(paths[name])
                    elapsed = (time.perf_counter() - started) * 1000
                    if response.status_code != 200:
                        raise RuntimeError(f"{paths[name]} answered {response.status_code}: {response.text[:300]}")
                    timings[(name, size)].append(elapsed)
            if (round_number + 1) % 50 == 0:
                log(f"    cache {cache_seconds} s: {round_number + 1} / {requests} rounds")
    return {
        key: {"median": statistics.median(values), "p95": _percentile(values, 0.95)} for key, values in timings.items()
    }


def report(prepared: list[dict], results: dict[int, dict], requests: int) -> dict:
    sizes = [p["size"] for p in prepared]
    small, large = sizes[0], sizes[-1]
    print(f"\nAnalytics API latency, milliseconds (client side, loopback), {requests} requests per cell,")
    print(
        f"interleaved; load average at the end {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores (shared machine).\n"
    )
    for p in prepared:
        print(
            f"  {p['size']:>10,} messages: first rollup {p['fill_seconds']:.1f} s, next run {p['rerun_seconds']:.1f} s,"
            f" {p['rollup_rows']:,} rollup rows"
        )
    summary = {"sizes": sizes, "requests": requests, "rollups": {}, "latency": {}}
    for p in prepared:
        summary["rollups"][p["size"]] = {k: p[k] for k in ("fill_seconds", "rerun_seconds", "rollup_rows")}
    for cache_seconds, timing in results.items():
        label = "cache off (every answer read from the rollups)" if cache_seconds == 0 else f"cache {cache_seconds} s"
        print(f"\n{label}")
        header = "  endpoint".ljust(42) + "".join(f"{f'{s:,} p50':>14}{f'{s:,} p95':>14}" for s in sizes)
        print(header + f"{'p50 ratio':>11}{'p95 ratio':>11}")
        for name in ENDPOINTS:
            cells = "".join(f"{timing[(name, s)]['median']:>14.2f}{timing[(name, s)]['p95']:>14.2f}" for s in sizes)
            ratio50 = timing[(name, large)]["median"] / timing[(name, small)]["median"]
            ratio95 = timing[(name, large)]["p95"] / timing[(name, small)]["p95"]
            print(f"  {name:<40}{cells}{ratio50:>11.2f}{ratio95:>11.2f}")
            summary["latency"][f"{label}: {name}"] = {str(s): timing[(name, s)] for s in sizes} | {
                "ratio_p50": ratio50,
                "ratio_p95": ratio95,
            }
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,1000000", help="Comma-separated message counts.")
    parser.add_argument("--requests", type=int, default=300, help="Requests per endpoint, size and cache setting.")
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--json", help="Also write the figures to this file.")
    args = parser.parse_args()
    if not os.environ.get("DATABASE_URL", "").startswith(("postgres://", "postgresql://")):
        parser.error("set DATABASE_URL to a PostgreSQL server (the databases are created next to it)")
    sizes = sorted(int(size) for size in args.sizes.split(","))
    rng = random.Random(args.seed)
    now = datetime.now(UTC)
    tmp = Path(tempfile.mkdtemp(prefix="analytics-scale-"))
    env_base = {
        "AGENTSFLOW_VAR_DIR": str(tmp),
        **loopback_production_env("analytics-scale-" + "k" * 60),
        "ACCESS_LOG": "false",
        "LOG_LEVEL": "warning",
        "REDIS_URL": "",  # each server caches in its own memory: no shared keys between the two databases
    }
    prepared = [prepare(size, tmp, env_base, rng, now) for size in sizes]
    results = {}
    for cache_seconds in (0, 30):
        log(f"timing with the analytics cache {'off' if cache_seconds == 0 else f'at {cache_seconds} s'}")
        results[cache_seconds] = measure(prepared, args.requests, cache_seconds, tmp)
    summary = report(prepared, results, args.requests)
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
