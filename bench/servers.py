"""Which server set-up serves the platform fastest: wrk against each candidate, in
interleaved rounds, with production settings, PostgreSQL and Redis.

    DATABASE_URL=postgres://... REDIS_URL=redis://... python -m bench.servers --rounds 5 --duration 10

Candidates (all started once, side by side; each round measures every one of them,
in a rotated order, so a noisy machine shifts them all alike):
  split          nginx -> granian WSGI (ordinary API) + uvicorn ASGI (streams), the
                 production stack (agentsflow.testing.run_stack, ops/run-*.sh)
  uvicorn        uvicorn ASGI alone (ops/run-asgi.sh, 2 workers), no proxy
  uvicorn-nginx  nginx -> uvicorn ASGI for everything (the single-server deployment)
  granian-asgi   granian ASGI alone, 2 workers
  granian-wsgi   granian WSGI alone (ops/run-wsgi.sh): the split's API half without nginx
A candidate may add ``:poolN`` (database pool of at most N connections per process),
``:threadsN`` (WSGI blocking threads per worker) and ``:workersN`` (WSGI worker
processes), e.g. ``split:threads4`` or ``split:workers4``.

Endpoints: /health (no I/O), /api/me (API key, cached authentication), /api/keys
(API key + a 10-row database list). nginx's per-address limits are off and the
key has a high rate limit: this measures servers, not the shields. Access logs are
off everywhere (the same for every candidate).

Prints a table per endpoint (median req/s over rounds, median p50/p99, errors,
ratio to the best, peak PostgreSQL connections) and writes
bench/results/servers.json and servers.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from agentsflow.testing import (
    BASE_DIR,
    Server,
    free_port,
    fresh_database_env,
    manage,
    prepare_platform,
    production_env,
    run_server,
    run_stack,
    start_process,
    stop,
    wait_until_up,
)
from bench import procs
from bench.machine import cpu_model, memory_kb

RESULTS = BASE_DIR / "bench" / "results"
LUA = BASE_DIR / "bench" / "wrk" / "report.lua"
ENDPOINTS = {"health": "/health", "me": "/api/me", "keys": "/api/keys"}
CANDIDATES = ("split", "uvicorn", "uvicorn-nginx", "granian-asgi", "granian-wsgi")
NO_SHIELDS = {"api_rate": None, "auth_rate": None, "conn_limit": None, "access_log": None}


@dataclass
class Run:
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    peak_connections: int
    cpu_ms_per_request: float  # CPU time of all the candidate's processes, per request served


@dataclass
class Candidate:
    url: str
    process_groups: set[int]  # every process of the candidate (servers run in sessions of their own)


@dataclass
class Results:
    runs: dict[tuple[str, str], list[Run]] = field(default_factory=dict)

    def add(self, candidate: str, endpoint: str, run: Run) -> None:
        self.runs.setdefault((candidate, endpoint), []).append(run)


# --- candidates -------------------------------------------------------------------


@contextlib.contextmanager
def _script(script: str, env: dict[str, str], port_var: str, log_path: Path) -> Iterator[Candidate]:
    """One of ops/run-*.sh on its own, on a free port."""
    port = free_port()
    full_env = {**os.environ, **env, port_var: str(port), "VENV": str(Path(sys.executable).parent.parent)}
    process = start_process([str(BASE_DIR / "ops" / script)], env=full_env, log_path=log_path, append=True)
    try:
        wait_until_up(Server(f"http://127.0.0.1:{port}", port, process, log_path), "/health", 60)
        yield Candidate(f"http://127.0.0.1:{port}", {process.pid})
    finally:
        stop(process)


def _named(env: dict[str, str], candidate: str) -> dict[str, str]:
    """Each candidate's PostgreSQL connections carry its name (pg_stat_activity)."""
    return {**env, "DATABASE_URL": f"{env['DATABASE_URL']}?application_name={_app_name(candidate)}"}


def _app_name(candidate: str) -> str:
    return "bench-" + re.sub(r"[^a-z0-9-]", "-", candidate)


def _variant(candidate: str) -> tuple[str, dict[str, str]]:
    """``granian-wsgi:pool4:threads2``: a candidate with its pool capped at 4 connections
    per process and (WSGI) 2 blocking threads per worker; returns (name, env)."""
    name, *options = candidate.split(":")
    env = {}
    for option in options:
        match = re.fullmatch(r"(pool|threads|workers)(\d+)", option)
        if not match or int(match.group(2)) < 1:
            raise SystemExit(f"bad option {option!r} in {candidate!r}: use poolN, threadsN or workersN, N >= 1")
        if match.group(1) == "threads":
            env["WSGI_THREADS"] = match.group(2)
        elif match.group(1) == "workers":
            env["WSGI_WORKERS"] = match.group(2)
        else:
            for prefix in ("", "WSGI_", "ASGI_"):
                env.update({f"{prefix}DB_POOL_MIN_SIZE": "1", f"{prefix}DB_POOL_MAX_SIZE": match.group(2)})
    return name, env


@contextlib.contextmanager
def start_candidates(names: list[str], env: dict[str, str], tmp: Path) -> Iterator[dict[str, Candidate]]:
    """Start every candidate; yields {name: Candidate}."""
    urls = {}
    with contextlib.ExitStack() as running:
        for candidate in names:
            name, options = _variant(candidate)
            cenv = {**_named(env, candidate), **options}
            directory = tmp / _app_name(candidate)
            print(f"starting {candidate}", file=sys.stderr, flush=True)
            if name == "split":
                stack = running.enter_context(run_stack(cenv, tmp_dir=directory, nginx=NO_SHIELDS, collectstatic=False))
                urls[candidate] = Candidate(stack.url, {p.pid for p in stack.processes.values()})
            elif name == "uvicorn-nginx":
                stack = running.enter_context(
                    run_stack(cenv, tmp_dir=directory, nginx=NO_SHIELDS, asgi_only=True, collectstatic=False)
                )
                urls[candidate] = Candidate(stack.url, {p.pid for p in stack.processes.values()})
            elif name == "uvicorn":
                script = _script("run-asgi.sh", cenv, "ASGI_PORT", directory.with_suffix(".log"))
                urls[candidate] = running.enter_context(script)
            elif name == "granian-wsgi":
                script = _script("run-wsgi.sh", cenv, "WSGI_PORT", directory.with_suffix(".log"))
                urls[candidate] = running.enter_context(script)
            elif name == "granian-asgi":
                # The ASGI server's pool sizes (ops/run-asgi.sh), granian's own flags.
                genv = {"DB_POOL_MIN_SIZE": "1", "DB_POOL_MAX_SIZE": "8", **cenv}
                server = run_server(genv, kind="granian-asgi", workers=2, log_path=directory.with_suffix(".log"))
                server = running.enter_context(server)
                urls[candidate] = Candidate(server.url, {server.process.pid})
            else:
                known = ", ".join(CANDIDATES)
                raise SystemExit(
                    f"unknown candidate {candidate!r}; known: {known} (each may add :poolN, :threadsN, :workersN)"
                )
        yield urls


# --- measuring ----------------------------------------------------------------------


class ConnectionSampler:
    """Peak PostgreSQL connections of one candidate while wrk runs (pg_stat_activity)."""

    def __init__(self, database_url: str, application_name: str) -> None:
        import psycopg

        self._conn = psycopg.connect(database_url.split("?")[0], autocommit=True)
        self._name = application_name
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.25):
            row = self._conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (self._name,)
            ).fetchone()
            self.peak = max(self.peak, row[0])

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._conn.close()


def wrk(url: str, key: str, *, duration: float, connections: int, threads: int) -> dict:
    command = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(duration))}s",
        "--timeout",
        "10s",
        "-s",
        str(LUA),
        url,
    ]
    result = subprocess.run(
        command, capture_output=True, text=True, env={**os.environ, "AF_KEY": key}, timeout=duration + 60
    )
    match = re.search(r"^WRK_JSON (.*)$", result.stdout, re.M)
    if result.returncode != 0 or not match:
        raise RuntimeError(f"wrk failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return json.loads(match.group(1))


def cpu_seconds(process_groups: set[int]) -> float:
    """User + system CPU time of every live process in these process groups (/proc)."""
    return procs.cpu_seconds(procs.in_process_groups(process_groups))


def measure(candidate: Candidate, path: str, key: str, database_url: str, name: str, args) -> Run:
    """One wrk run. Besides throughput, the CPU the candidate's own processes spent per
    request: the figure least disturbed by other load on a shared machine."""
    cpu_before = cpu_seconds(candidate.process_groups)
    with ConnectionSampler(database_url, _app_name(name)) as sampler:
        report = wrk(
            candidate.url + path, key, duration=args.duration, connections=args.connections, threads=args.threads
        )
    cpu = cpu_seconds(candidate.process_groups) - cpu_before
    errors = sum(report["errors"].values())
    return Run(
        rps=report["requests"] / (report["duration_us"] / 1e6),
        p50_ms=report["latency_us"]["p50"] / 1000,
        p99_ms=report["latency_us"]["p99"] / 1000,
        errors=errors,
        peak_connections=sampler.peak,
        cpu_ms_per_request=cpu * 1000 / max(1, report["requests"]),
    )


# --- report ---------------------------------------------------------------------------


def summarize(results: Results, candidates: list[str], endpoints: list[str]) -> dict:
    summary = {}
    for endpoint in endpoints:
        rows = {}
        for candidate in candidates:
            runs = results.runs.get((candidate, endpoint), [])
            if not runs:
                continue
            rows[candidate] = {
                "rps_median": round(statistics.median(r.rps for r in runs), 1),
                "rps_runs": [round(r.rps, 1) for r in runs],
                "p50_ms": round(statistics.median(r.p50_ms for r in runs), 2),
                "p99_ms": round(statistics.median(r.p99_ms for r in runs), 2),
                "errors": sum(r.errors for r in runs),
                "peak_pg_connections": max(r.peak_connections for r in runs),
                "cpu_ms_per_request": round(statistics.median(r.cpu_ms_per_request for r in runs), 3),
            }
        best = max(row["rps_median"] for row in rows.values())
        for row in rows.values():
            row["ratio_to_best"] = round(row["rps_median"] / best, 3)
        summary[endpoint] = rows
    return summary


def markdown(summary: dict, meta: dict) -> str:
    lines = [
        "# Server benchmark (bench/servers.py)",
        "",
        f"`{meta['command']}` on {meta['date']}: {meta['machine']}. "
        f"wrk {meta['wrk']} on the same cores as the servers; {meta['rounds']} interleaved rounds of "
        f"{meta['duration']} s per candidate and endpoint; medians over rounds. Load average before/after: "
        f"{meta['load_before']} / {meta['load_after']} (a shared machine: compare rows, not absolute figures).",
        "",
    ]
    for endpoint, rows in summary.items():
        lines += [
            f"## {ENDPOINTS[endpoint]}",
            "",
            "| candidate | req/s (median) | p50 ms | p99 ms | errors | ratio to best | CPU ms/request | PG conns |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for name, row in sorted(rows.items(), key=lambda item: -item[1]["rps_median"]):
            lines.append(
                f"| {name} | {row['rps_median']:,.0f} | {row['p50_ms']} | {row['p99_ms']} | {row['errors']} "
                f"| {row['ratio_to_best']:.2f} | {row['cpu_ms_per_request']:.2f} | {row['peak_pg_connections']} |"
            )
        lines.append("")
    return "\n".join(lines)


def _machine() -> str:
    kb, cpu = memory_kb(), cpu_model()
    memory = f", {kb / 1024 / 1024:.0f} GiB" if kb else ""
    return f"{cpu + ', ' if cpu else ''}{os.cpu_count()} cores{memory}, {platform.system()} {platform.release()}"


def _load() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


# --- main -----------------------------------------------------------------------------


def prepare(tmp: Path) -> tuple[dict[str, str], str]:
    """A fresh database with a user, ten keys (for /api/keys) and a key without a
    practical rate limit; settings as in production."""
    env = {**fresh_database_env("bench_servers", tmp), **production_env(tmp), "ACCESS_LOG": "false"}
    platform_ = prepare_platform(env)
    for n in range(9):
        manage("issuekey", platform_.email, "--name", f"bench-{n}", "--scopes", "chat", env=env)
    key = manage(
        "issuekey", platform_.email, "--name", "bench", "--scopes", "chat,admin", "--rate-limit", "100000000", env=env
    ).strip()
    manage("collectstatic", "--no-input", env=env)
    return env, key


def _exit_on_signal(signum, frame):
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=10, help="seconds per wrk run")
    parser.add_argument("--warmup", type=float, default=2, help="seconds of wrk per candidate and endpoint first")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--candidates", default=",".join(CANDIDATES))
    parser.add_argument("--endpoints", default=",".join(ENDPOINTS))
    parser.add_argument("--output", default=str(RESULTS / "servers"), help="writes OUTPUT.json and OUTPUT.md")
    args = parser.parse_args(argv)
    # SIGTERM (and SIGINT, which a background job ignores) stop the servers on the way out.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _exit_on_signal)
    candidates = [c for c in args.candidates.split(",") if c]
    endpoints = [e for e in args.endpoints.split(",") if e]
    if not (os.environ.get("DATABASE_URL") and os.environ.get("REDIS_URL")):
        raise SystemExit("bench.servers needs DATABASE_URL (PostgreSQL) and REDIS_URL, as in production")
    if not shutil.which("wrk"):
        raise SystemExit("bench.servers needs wrk (apt-get install wrk)")
    unknown = set(endpoints) - set(ENDPOINTS)
    if unknown:
        raise SystemExit(f"unknown endpoints {sorted(unknown)}; known: {', '.join(ENDPOINTS)}")

    meta = {
        "command": "python -m bench.servers " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": _machine(),
        "wrk": f"-t{args.threads} -c{args.connections}",
        "rounds": args.rounds,
        "duration": args.duration,
        "load_before": _load(),
    }
    results = Results()
    with tempfile.TemporaryDirectory(prefix="bench-servers-") as tmp_name:
        tmp = Path(tmp_name)
        env, key = prepare(tmp)
        with start_candidates(candidates, env, tmp) as urls:
            for candidate in candidates:  # warm-up: imports, pools, caches
                for endpoint in endpoints:
                    wrk(urls[candidate].url + ENDPOINTS[endpoint], key, duration=args.warmup, connections=16, threads=1)
            for round_ in range(args.rounds):
                shift = round_ % len(candidates)
                for candidate in candidates[shift:] + candidates[:shift]:
                    for endpoint in endpoints:
                        run = measure(urls[candidate], ENDPOINTS[endpoint], key, env["DATABASE_URL"], candidate, args)
                        results.add(candidate, endpoint, run)
                        print(
                            f"round {round_ + 1}/{args.rounds} {candidate:14} {ENDPOINTS[endpoint]:10} "
                            f"{run.rps:9,.0f} req/s  p50 {run.p50_ms:7.2f} ms  p99 {run.p99_ms:7.2f} ms  "
                            f"cpu {run.cpu_ms_per_request:5.2f} ms/req  errors {run.errors}  pg {run.peak_connections}",
                            flush=True,
                        )
    meta["load_after"] = _load()
    summary = summarize(results, candidates, endpoints)
    text = markdown(summary, meta)
    print("\n" + text)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.with_suffix(".json").write_text(json.dumps({"meta": meta, "endpoints": summary}, indent=2) + "\n")
    output.with_suffix(".md").write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
