"""What the platform adds to a streamed reply, against calling the upstream directly.

    python -m bench.stream_overhead --rounds 5 --tokens 2000 [--concurrency 20] [--baseline main]
    python -m bench.stream_overhead --setups services --paths websocket --rounds 0 \
        --tokens 500 --tokens-per-second 50 --concurrency 20 --concurrent-rounds 5 --baseline HEAD~1

Starts the fake OpenAI-compatible upstream (bench/fake_upstream.py, a process of
its own, no latency, as fast as it can send) and the platform in production
settings as a real uvicorn process: once with the embedded defaults (SQLite,
in-memory cache and channel layer), and once more with PostgreSQL and Redis when
DATABASE_URL and REDIS_URL are set. Then, in interleaved rounds (the order
rotates each round), it streams the same N-token completion:

- ``direct``: from the upstream itself (httpx, SSE parsed here),
- ``v1``: through the platform's ``POST /v1/chat/completions`` with ``stream``,
- ``rest-sse``: through ``POST /api/conversations/<id>/messages`` with ``stream``,
- ``websocket``: through ``ws/chat/`` (the ``websockets`` client, one open socket).

Per path: median time to first token, median total time, tokens per second, and
the overhead per streamed token, ``(platform total − direct total) / tokens``
(median over rounds, with min and max), plus the fixed per-request overhead (the
difference in time to first token). The concurrent variant streams
``--concurrency`` replies at once per path and compares wall times the same way.

Server CPU µs per token is the platform process's user + system CPU time over a
measurement divided by the tokens it delivered: other load on the shared machine
disturbs it far less than wall times, so compare that first. It is only
load-insensitive while the server keeps up: an overloaded server reads several
upstream events per read and looks cheaper per token. ``--tokens-per-second``
paces the upstream (``make bench`` offers 50 a stream) so that each token arrives
in a read of its own, as it does from a real model; ``--rounds 0`` skips the
one-at-a-time variant, which pacing makes slow.

``--baseline REF`` also runs the platform as it is at git ``REF`` (exported to
a temporary directory, same database) next to this checkout's, interleaved in
the same rounds, to show a change's before and after.

Every client keeps its connection open between requests (HTTP keep-alive, one
socket), so connection set-up is not counted. The client, the upstream and the
server share the machine's cores: figures are for comparing rows of one run.
Results: bench/results/stream_overhead.{md,json}.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
import orjson
import websockets

from agentsflow.testing import BASE_DIR, fresh_database_env, loopback_production_env, prepare_platform, run_server
from bench import procs
from bench.fake_upstream import run_fake_upstream
from bench.machine import cpu_model, memory_kb

RESULTS = BASE_DIR / "bench" / "results"
PATHS = ("v1", "rest-sse", "websocket")
PROMPT = "Tell me a long story."
STALL_SECONDS = 30  # a WebSocket stream with no event for this long counts as failed


@dataclass
class Sample:
    ttft: float  # seconds from sending the request to the first text delta
    total: float  # seconds from sending the request to the end of the reply
    tokens: int  # text deltas received


@dataclass
class Target:
    """One platform server under test."""

    label: str  # e.g. "embedded" or "embedded/baseline"
    url: str
    key: str
    pid: int  # the server process (its CPU time is read around each measurement)
    client: httpx.AsyncClient | None = None
    socket: websockets.ClientConnection | None = None


# --- clients ------------------------------------------------------------------------


async def sse_events(response: httpx.Response) -> AsyncIterator[bytes]:
    """The JSON data of each server-sent event, parsed straight from the bytes."""
    buffer = b""
    async for piece in response.aiter_raw():
        buffer += piece
        *events, buffer = buffer.split(b"\n\n")
        for raw in events:
            for line in raw.split(b"\n"):
                if line.startswith(b"data: "):
                    yield line[6:]


async def stream_openai(client: httpx.AsyncClient, url: str, body: dict, headers: dict) -> Sample:
    """An OpenAI-format stream (the upstream itself, or the platform's /v1)."""
    started = time.perf_counter()
    first, tokens = None, 0
    async with client.stream("POST", url, json=body, headers=headers) as response:
        if response.status_code != 200:
            raise RuntimeError(f"{url} answered {response.status_code}: {(await response.aread())[:300]!r}")
        async for data in sse_events(response):
            if data == b"[DONE]":
                continue
            event = orjson.loads(data)
            choices = event.get("choices") or ()
            if choices and choices[0]["delta"].get("content"):
                tokens += 1
                if first is None:
                    first = time.perf_counter()
    return Sample(first - started, time.perf_counter() - started, tokens)


async def stream_rest(target: Target, conversation_id: int) -> Sample:
    started = time.perf_counter()
    first, tokens, final = None, 0, None
    async with target.client.stream(
        "POST",
        f"{target.url}/api/conversations/{conversation_id}/messages",
        json={"content": PROMPT, "model": "bench", "stream": True},
    ) as response:
        if response.status_code != 200:
            raise RuntimeError(f"REST send answered {response.status_code}: {(await response.aread())[:300]!r}")
        async for data in sse_events(response):
            event = orjson.loads(data)
            if event["type"] == "delta":
                tokens += 1
                if first is None:
                    first = time.perf_counter()
            elif event["type"] in ("done", "error"):
                final = event
    ended = time.perf_counter()
    if final is None or final["type"] != "done":
        raise RuntimeError(f"REST stream ended with {final!r}")
    return Sample(first - started, ended - started, tokens)


async def stream_socket(socket: websockets.ClientConnection, conversation_id: int) -> Sample:
    started = time.perf_counter()
    await socket.send(
        orjson.dumps({"type": "send", "content": PROMPT, "model": "bench", "conversation_id": conversation_id}).decode()
    )
    first, tokens, reply_id = None, 0, None
    while True:
        event = orjson.loads(await asyncio.wait_for(socket.recv(), STALL_SECONDS))
        kind = event["type"]
        if kind == "accepted":
            reply_id = event["message_id"]
        elif event.get("message_id") != reply_id:
            continue
        elif kind == "delta":
            tokens += 1
            if first is None:
                first = time.perf_counter()
        elif kind in ("done", "error"):
            if kind != "done":
                raise RuntimeError(f"WebSocket stream ended with {event!r}")
            return Sample(first - started, time.perf_counter() - started, tokens)


async def new_conversations(target: Target, count: int) -> list[int]:
    ids = []
    for _ in range(count):
        response = await target.client.post(f"{target.url}/api/conversations", json={"model": "bench"})
        response.raise_for_status()
        ids.append(response.json()["id"])
    return ids


async def open_socket(target: Target) -> websockets.ClientConnection:
    socket = await websockets.connect(
        target.url.replace("http", "ws", 1) + "/ws/chat/",
        additional_headers={"Authorization": f"Bearer {target.key}"},
        max_size=2**22,
    )
    ready = orjson.loads(await socket.recv())
    if ready["type"] != "ready":
        raise RuntimeError(f"WebSocket not ready: {ready!r}")
    return socket


# --- one measurement of a path (sequential, or `concurrency` at once) ----------------


def upstream_model(tokens: int, tokens_per_second: float = 0) -> str:
    """The fake upstream's model id for a reply of ``tokens`` tokens, paced or as fast as it can."""
    return f"tokens-{tokens}" + (f"+tps-{tokens_per_second:g}" if tokens_per_second else "")


class Runner:
    def __init__(self, upstream: str, tokens: int, tokens_per_second: float = 0) -> None:
        self.upstream = upstream
        self.tokens = tokens
        self.tokens_per_second = tokens_per_second
        self.direct = httpx.AsyncClient(timeout=120, trust_env=False, limits=httpx.Limits(max_connections=500))

    def direct_body(self) -> dict:
        return {
            "model": upstream_model(self.tokens, self.tokens_per_second),
            "messages": [{"role": "user", "content": PROMPT}],
            "max_tokens": self.tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
        }

    async def prepare(self, target: Target | None, path: str, concurrency: int) -> Callable[[], Awaitable[Sample]]:
        """Untimed set-up (conversations, sockets); returns the timed streams as one coroutine factory."""
        if target is None:
            return lambda: stream_openai(self.direct, f"{self.upstream}/chat/completions", self.direct_body(), {})
        if path == "v1":
            body = {
                "model": "bench",
                "messages": [{"role": "user", "content": PROMPT}],
                "stream": True,
                "stream_options": {"include_usage": True},
            }
            return lambda: stream_openai(target.client, f"{target.url}/v1/chat/completions", body, {})
        conversations = iter(await new_conversations(target, concurrency))
        if path == "rest-sse":
            return lambda: stream_rest(target, next(conversations))
        if concurrency == 1:
            return lambda: stream_socket(target.socket, next(conversations))
        sockets = [await open_socket(target) for _ in range(concurrency)]
        pool = iter(sockets)

        async def on_own_socket() -> Sample:
            socket = next(pool)
            try:
                return await stream_socket(socket, next(conversations))
            finally:
                await socket.close()

        return on_own_socket

    async def measure(self, target: Target | None, path: str, concurrency: int) -> dict:
        """One round of a path. A stream that fails (an error, a timeout, missing
        tokens) is counted, not fatal; a round with a failure gives no timing."""
        one = await self.prepare(target, path, concurrency)
        pids = procs.tree(target.pid) if target is not None else []
        cpu_before = procs.cpu_seconds(pids)
        started = time.perf_counter()
        results = await asyncio.gather(*(one() for _ in range(concurrency)), return_exceptions=True)
        wall = time.perf_counter() - started
        cpu = procs.cpu_seconds(pids) - cpu_before
        delivered = sum(r.tokens for r in results if isinstance(r, Sample))
        samples = [r for r in results if isinstance(r, Sample) and r.tokens == self.tokens]
        failures = [
            f"{r.tokens} of {self.tokens} tokens" if isinstance(r, Sample) else f"{type(r).__name__}: {r}"[:200]
            for r in results
            if not (isinstance(r, Sample) and r.tokens == self.tokens)
        ]
        complete = not failures
        return {
            "wall": wall if complete else None,
            "ttft": statistics.median(s.ttft for s in samples) if complete else None,
            "total": statistics.median(s.total for s in samples) if complete else None,
            "streams": concurrency,
            # Counted even when a stream failed: the CPU went into the tokens that did arrive.
            "cpu_us_per_token": cpu / delivered * 1e6 if pids and delivered else None,
            "failed": len(failures),
            "failures": failures[:3],
            "samples": [asdict(s) for s in samples],
        }


# --- servers ----------------------------------------------------------------------------


def production_env(tmp: Path, setup: str) -> dict[str, str]:
    """A server's environment: production settings on loopback, limits lifted, and
    SQLite + memory (``embedded``) or a fresh PostgreSQL database + Redis (``services``)."""
    env = {
        "AGENTSFLOW_VAR_DIR": str(tmp),
        **loopback_production_env("stream-overhead-" + "k" * 60),
        "ACCESS_LOG": "false",
        "LOG_LEVEL": "warning",
        # The benchmark sends far more than a user may: lift the limits so they never answer 429.
        "RATE_LIMIT_REGULAR": "1000000",
        "TOKEN_QUOTA_REGULAR": "1000000000",
    }
    if setup == "embedded":
        # Empty values override this shell's DATABASE_URL and REDIS_URL: SQLite and memory.
        env.update(DATABASE_URL="", REDIS_URL="", SQLITE_PATH=str(tmp / "embedded.sqlite3"))
    else:
        env.update(fresh_database_env("services", tmp))
        env["REDIS_URL"] = os.environ["REDIS_URL"]
    return env


def platform_env(upstream: str, tokens: int, tmp: Path, setup: str, tokens_per_second: float = 0) -> dict[str, str]:
    """``production_env`` with a model "bench" that streams ``tokens`` tokens from the
    fake upstream (``tokens_per_second`` a second; 0: as fast as it can)."""
    model = {
        "name": "bench",
        "provider": "fake",
        "upstream_model": upstream_model(tokens, tokens_per_second),
        "context_window": 8192,
        "max_output_tokens": tokens,
    }
    env = production_env(tmp, setup)
    env.update(EXTRA_PROVIDERS="fake", FAKE_BASE_URL=upstream, AGENTSFLOW_MODELS=json.dumps([model]))
    return env


@contextlib.contextmanager
def baseline_checkout(ref: str) -> Iterator[Path]:
    """The project as it is at git ``ref``, exported to a temporary directory."""
    with tempfile.TemporaryDirectory(prefix="stream-baseline-") as directory:
        archive = subprocess.run(
            ["git", "archive", "--format=tar", ref], cwd=BASE_DIR, capture_output=True, check=True
        ).stdout
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(directory, filter="data")
        yield Path(directory)


def checkouts_to_compare(stack: contextlib.ExitStack, baseline: str) -> list[tuple[str, Path]]:
    """(label, project directory) of each platform a comparison runs: this checkout
    alone, or the one at git ``baseline`` ("before", exported for ``stack``'s life)
    and this one ("after")."""
    if not baseline:
        return [("this checkout", BASE_DIR)]
    return [("before", stack.enter_context(baseline_checkout(baseline))), ("after", BASE_DIR)]


# --- the run --------------------------------------------------------------------------------


def overheads(platform_runs: list[dict], direct_runs: list[dict], tokens: int, key: str) -> dict | None:
    """Per-token and fixed overhead against the direct run of the same round
    (rounds where either had a failed stream are left out)."""
    pairs = [(p, d) for p, d in zip(platform_runs, direct_runs, strict=True) if p[key] and d[key]]
    if not pairs:
        return None
    return {
        "us_per_token": spread([(p[key] - d[key]) / tokens * 1e6 for p, d in pairs]),
        "us_per_token_after_first": spread(
            [((p["total"] - p["ttft"]) - (d["total"] - d["ttft"])) / (tokens - 1) * 1e6 for p, d in pairs]
        ),
        "ttft_delta_ms": spread([(p["ttft"] - d["ttft"]) * 1000 for p, d in pairs]),
    }


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def spread_text(spread: dict, spec: str = ".0f") -> str:
    """ "median (min–max)", each value formatted with ``spec``."""
    return f"{spread['median']:{spec}} ({spread['min']:{spec}}–{spread['max']:{spec}})"


def interleaved(items: list, rounds: int):
    """(round number, item) for ``rounds`` rounds over ``items``, the order rotating
    every round, so load on the machine that drifts meanwhile shifts every item alike."""
    for round_number in range(rounds):
        shift = round_number % len(items)
        for item in items[shift:] + items[:shift]:
            yield round_number, item


def summarise(runs: list[dict], tokens: int, key: str) -> dict:
    row = {
        "failed_streams": sum(r["failed"] for r in runs),
        "streams": sum(r["streams"] for r in runs),
        "failures": [f for r in runs for f in r["failures"]][:5],
    }
    cpu = [r["cpu_us_per_token"] for r in runs if r.get("cpu_us_per_token") is not None]
    if cpu:
        row["cpu_us_per_token"] = spread(cpu)
    complete = [r for r in runs if r[key]]
    if complete:
        total = statistics.median(r[key] for r in complete)
        row.update(
            ttft_ms=statistics.median(r["ttft"] for r in complete) * 1000,
            total_ms=total * 1000,
            tokens_per_s=tokens * runs[0]["streams"] / total,
        )
    return row


async def run_rounds(
    runner: Runner, targets: list[Target], rounds: int, concurrency: int, *, log_prefix: str, paths=PATHS
) -> dict[str, list[dict]]:
    """Every (target, path) and the direct path once per round, the order rotated each round."""
    cells: list[tuple[Target | None, str]] = [(None, "direct")]
    cells += [(target, path) for target in targets for path in paths]
    results: dict[str, list[dict]] = {_cell_name(t, p): [] for t, p in cells}
    for number in range(rounds):
        shift = number % len(cells)
        for target, path in cells[shift:] + cells[:shift]:
            results[_cell_name(target, path)].append(await runner.measure(target, path, concurrency))
        print(f"{log_prefix} round {number + 1}/{rounds} done", file=sys.stderr, flush=True)
    return results


def _cell_name(target: Target | None, path: str) -> str:
    return "direct" if target is None else f"{target.label} {path}"


def machine_info() -> dict:
    return {
        "cpu": cpu_model() or platform.processor(),
        "cores": os.cpu_count(),
        "memory_gib": round(memory_kb() / 2**20, 1),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "load_average_start": os.getloadavg(),
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=BASE_DIR, capture_output=True, text=True
        ).stdout.strip(),
    }


async def bench(args: argparse.Namespace, servers: list[tuple[str, str, str, int]], upstream: str) -> dict:
    runner = Runner(upstream, args.tokens, args.tokens_per_second)
    targets = [
        Target(label, url, key, pid, client=_platform_client(key), socket=None) for label, url, key, pid in servers
    ]
    for target in targets:
        target.socket = await open_socket(target)
    try:
        # Warm up every path once (first requests import and connect lazily).
        paths = args.paths.split(",")
        await run_rounds(runner, targets, 1, 1, log_prefix="warm-up", paths=paths)
        sequential = {}
        if args.rounds > 0:
            sequential = await run_rounds(runner, targets, args.rounds, 1, log_prefix="sequential", paths=paths)
        concurrent = {}
        if args.concurrency > 1:
            concurrent = await run_rounds(
                runner,
                targets,
                args.concurrent_rounds,
                args.concurrency,
                log_prefix=f"{args.concurrency} at once",
                paths=paths,
            )
    finally:
        for target in targets:
            await target.socket.close()
            await target.client.aclose()
        await runner.direct.aclose()
    return {"sequential": sequential, "concurrent": concurrent}


def _platform_client(key: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        timeout=120,
        trust_env=False,
        headers={"Authorization": f"Bearer {key}"},
        limits=httpx.Limits(max_connections=500),
    )


def report(args: argparse.Namespace, machine: dict, raw: dict) -> tuple[str, dict]:
    tokens = args.tokens
    summary: dict[str, dict] = {}
    for mode, key in (("sequential", "total"), ("concurrent", "wall")):
        cells = raw[mode]
        if not cells:
            continue
        direct = cells["direct"]
        summary[mode] = {}
        for name, runs in cells.items():
            row = summarise(runs, tokens, key)
            if name != "direct":
                row["overhead"] = overheads(runs, direct, tokens * runs[0]["streams"], key)
            summary[mode][name] = row

    lines = [
        "# Streaming overhead: the platform against the upstream directly",
        "",
        f"Command: `python -m bench.stream_overhead {' '.join(sys.argv[1:])}`",
        "",
        f"Machine: {machine['cpu']}, {machine['cores']} cores, {machine['memory_gib']} GiB, Python "
        f"{machine['python']}, commit {machine['commit']}. Load average at start "
        f"{'/'.join(f'{x:.2f}' for x in machine['load_average_start'])}, at end "
        f"{'/'.join(f'{x:.2f}' for x in machine['load_average_end'])}: **the machine is shared with other "
        "engineers' tests and benchmarks**, so compare rows of this run, not absolute figures across runs. "
        "The client, the fake upstream and the server process share the same cores.",
        "",
        f"{tokens} tokens per reply (the fake upstream sends one word per event, "
        f"{f'{args.tokens_per_second:g} a second' if args.tokens_per_second else 'no delay'}); one uvicorn worker; "
        f"production settings; {args.rounds} interleaved rounds after a warm-up round.",
        "",
    ]
    if args.baseline:
        lines += [
            f"before = the platform at git `{args.baseline}`, after = this checkout ({machine['commit']}), "
            "run side by side in the same rounds.",
            "",
        ]
    for mode in summary:
        if mode == "sequential":
            lines += ["## One stream at a time", ""]
            lines += [
                "Overhead per token = (platform total − direct total) / tokens, per round, median (min–max). "
                "After first = the same for the time after the first token (the per-token relay cost alone). "
                "Fixed = time-to-first-token difference (per-request cost: auth, database writes, upstream "
                "connection). Server CPU = the platform process's CPU time per token delivered, median over "
                "the rounds (min–max). Failed = streams that broke, stalled for "
                f"{STALL_SECONDS} s or lost tokens (rounds with one are left out of the timings).",
                "",
            ]
        else:
            lines += [f"## {args.concurrency} streams at once", ""]
            lines += [
                f"Each round starts {args.concurrency} streams on one path together; total = wall time until the "
                f"last one ends, tokens/s = {args.concurrency} × {tokens} / wall time, TTFT = median over the streams. "
                f"Overhead per token = (platform wall − direct wall) / ({args.concurrency} × {tokens}). "
                "Server CPU = the platform process's CPU time per token delivered (the load-insensitive figure). "
                f"{args.concurrent_rounds} rounds.",
                "",
            ]
        lines += [
            "| path | server CPU µs/token | TTFT ms | total ms | tokens/s | overhead µs/token "
            "| after first µs/token | fixed ms | failed |",
            "| --- | --- | ---: | ---: | ---: | --- | --- | --- | ---: |",
        ]
        for name, row in summary[mode].items():
            failed = f"{row['failed_streams']}/{row['streams']}"
            cpu = spread_text(row["cpu_us_per_token"], ".1f") if "cpu_us_per_token" in row else "—"
            if "total_ms" not in row:
                lines.append(f"| {name} | {cpu} | — | — | — | — | — | — | {failed} |")
                continue
            timing = f"{cpu} | {row['ttft_ms']:.1f} | {row['total_ms']:.0f} | {row['tokens_per_s']:,.0f}"
            spread = row.get("overhead")
            if name == "direct" or spread is None:
                lines.append(
                    f"| {'direct (upstream)' if name == 'direct' else name} | {timing} | — | — | — | {failed} |"
                )
                continue
            # With many streams at once, "after the first token" has no single meaning.
            after_first = spread_text(spread["us_per_token_after_first"]) if mode == "sequential" else "—"
            lines.append(
                f"| {name} | {timing} | {spread_text(spread['us_per_token'])} | {after_first} "
                f"| {spread_text(spread['ttft_delta_ms'], '.1f')} | {failed} |"
            )
        if args.baseline:
            lines += ["", *cpu_ratio_lines(raw[mode])]
        failures = {name: row["failures"] for name, row in summary[mode].items() if row["failures"]}
        if failures:
            lines += [
                "",
                "Failed streams (first few): " + "; ".join(f"{n}: {', '.join(f)}" for n, f in failures.items()),
            ]
        lines.append("")
    text = "\n".join(lines)
    return text, {"machine": machine, "args": vars(args), "summary": summary, "raw": raw}


def cpu_ratio_lines(cells: dict[str, list[dict]]) -> list[str]:
    """After ÷ before server CPU per token, per round (the two ran minutes apart at
    most, under much the same load), median (min–max): the change's effect."""
    lines = []
    for name, after in cells.items():
        if not name.endswith("/after " + name.rsplit(" ", 1)[-1]):
            continue
        before = cells[name.replace("/after ", "/before ")]
        ratios = [
            a["cpu_us_per_token"] / b["cpu_us_per_token"]
            for a, b in zip(after, before, strict=True)
            if a.get("cpu_us_per_token") and b.get("cpu_us_per_token")
        ]
        if ratios:
            label = name.replace("/after", "")
            lines.append(f"- {label}: server CPU after ÷ before, per round: {spread_text(spread(ratios), '.3f')}")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.stream_overhead",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--rounds", type=int, default=5, help="one-at-a-time rounds (0: skip them)")
    parser.add_argument("--tokens", type=int, default=2000)
    parser.add_argument(
        "--tokens-per-second", type=float, default=0, help="pace each stream at the upstream (0: as fast as it can)"
    )
    parser.add_argument(
        "--concurrency", type=int, default=20, help="streams at once in the concurrent variant (1: skip)"
    )
    parser.add_argument("--concurrent-rounds", type=int, default=3)
    parser.add_argument(
        "--baseline", default="", help="also run the platform at this git ref (rows 'before'; this checkout 'after')"
    )
    parser.add_argument("--paths", default=",".join(PATHS), help=f"platform paths to measure, of {','.join(PATHS)}")
    parser.add_argument("--setups", default="auto", help="embedded, services, or auto (services when env is set)")
    parser.add_argument("--output", default=str(RESULTS / "stream_overhead"), help="path without extension")
    args = parser.parse_args(argv)

    setups = ["embedded"]
    if args.setups == "auto":
        if os.environ.get("DATABASE_URL") and os.environ.get("REDIS_URL"):
            setups.append("services")
    else:
        setups = args.setups.split(",")
    machine = machine_info()
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="stream-overhead-")))
        logs = Path(tempfile.mkdtemp(prefix="stream-overhead-logs-"))
        upstream = stack.enter_context(run_fake_upstream(separate_process=True, tokens=args.tokens))
        checkouts = [("", BASE_DIR)]
        if args.baseline:
            checkouts.insert(0, ("/before", stack.enter_context(baseline_checkout(args.baseline))))
        servers = []
        for setup in setups:
            (tmp / setup).mkdir()
            env = platform_env(upstream, args.tokens, tmp / setup, setup, args.tokens_per_second)
            key = prepare_platform(env).key
            for suffix, checkout in checkouts:
                label = setup + (suffix or ("/after" if args.baseline else ""))
                server = stack.enter_context(
                    run_server(env, cwd=checkout, log_path=logs / f"{label.replace('/', '-')}.log")
                )
                servers.append((label, server.url, key, server.process.pid))
                print(f"{label}: {server.url} (pid {server.process.pid})", file=sys.stderr, flush=True)
        raw = asyncio.run(bench(args, servers, upstream))
    machine["load_average_end"] = os.getloadavg()
    # The servers' logs are kept when a stream failed, to find out why.
    if any(run["failed"] for cells in raw.values() for runs in cells.values() for run in runs):
        print(f"some streams failed; server logs kept in {logs}", file=sys.stderr)
    else:
        shutil.rmtree(logs, ignore_errors=True)
    text, data = report(args, machine, raw)
    print(text)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.with_suffix(".md").write_text(text)
    output.with_suffix(".json").write_text(json.dumps(data, indent=1))
    print(f"saved {output.with_suffix('.md')} and .json", file=sys.stderr)


if __name__ == "__main__":
    main()
