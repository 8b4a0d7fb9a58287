"""What one chat send costs the server: CPU milliseconds per send, and sends a second.

    python -m bench.send_cost [--baseline REF] [--rounds 5] [--seconds 8] [--connections 16]

The issue's figure 4 (chat send, non-streaming, zero-latency model) on its own,
so a change to the send path can be measured in minutes instead of a whole
``make bench``. Needs DATABASE_URL and REDIS_URL (the production case).

Starts the fake OpenAI-compatible upstream (its own process, no latency, 16
tokens a reply) and the platform in production settings as one uvicorn worker
(PostgreSQL, Redis, limits lifted). Each server gets its own conversations with
some history (``--history`` messages). Then, in interleaved rounds (the order
rotates each round), wrk sends ``POST /api/conversations/<id>/messages`` for
``--seconds`` over ``--connections`` connections, cycling through them.

CPU ms per send is the server process's user + system CPU time over the run
divided by the sends answered: other load on the machine disturbs it far less
than the rate does, so compare that first. ``--baseline REF`` also runs the
platform as it is at git ``REF`` (exported to a temporary directory, same
database) next to this checkout, interleaved in the same rounds.
Results: bench/results/send_cost.{md,json}.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

from agentsflow.testing import BASE_DIR, prepare_platform, run_server
from bench import procs, wrk
from bench.fake_upstream import run_fake_upstream
from bench.machine import cpu_model
from bench.stream_overhead import baseline_checkout, platform_env

RESULTS = BASE_DIR / "bench" / "results"
TOKENS = 16
# The question of make bench's figure 4; the conversation's own model answers it.
BODY = '{"content": "Benchmark question: in one sentence, what does a connection pool do?"}'


def seed_conversations(url: str, key: str, count: int, history: int) -> list[int]:
    """``count`` conversations of the model "bench", each with about ``history`` messages."""
    headers = {"Authorization": f"Bearer {key}"}
    ids = []
    with httpx.Client(base_url=url, headers=headers, timeout=30) as client:
        for _ in range(count):
            response = client.post("/api/chat", json={"content": "Hello there.", "model": "bench"})
            response.raise_for_status()
            cid = response.json()["conversation_id"]
            for _ in range(max(0, history // 2 - 1)):
                client.post(f"/api/conversations/{cid}/messages", json={"content": "Go on."}).raise_for_status()
            ids.append(cid)
    return ids


def measure(url: str, pid: int, requests_file: Path, args) -> dict:
    pids = procs.tree(pid)
    cpu_before = procs.cpu_seconds(pids)
    result = wrk.run(url, requests_file, seconds=args.seconds, connections=args.connections, timeout=10)
    cpu = procs.cpu_seconds(pids) - cpu_before
    return {
        "rps": result.rps,
        "cpu_ms": cpu * 1000 / result.ok if result.ok else None,
        "p50_ms": result.p50_ms,
        "p99_ms": result.p99_ms,
        "ok": result.ok,
        "errors": result.other_errors + result.rejected,
    }


def summarise(runs: list[dict]) -> dict:
    def spread(key: str) -> dict:
        values = [r[key] for r in runs if r[key] is not None]
        return {"median": statistics.median(values), "min": min(values), "max": max(values)} if values else {}

    return {
        "rps": spread("rps"),
        "cpu_ms": spread("cpu_ms"),
        "p50_ms": spread("p50_ms"),
        "p99_ms": spread("p99_ms"),
        "errors": sum(r["errors"] for r in runs),
    }


def report(args, machine: dict, summaries: dict[str, dict]) -> str:
    lines = [
        "# Chat send cost",
        "",
        f"`python -m bench.send_cost {' '.join(sys.argv[1:])}`: {machine['when']}, {machine['cpu']}, "
        f"load average {machine['load_start']} at the start and {machine['load_end']} at the end.",
        "",
        f"One uvicorn worker, production settings, PostgreSQL + Redis, the fake upstream at zero latency "
        f"({TOKENS} tokens a reply). wrk: {args.connections} connections, {args.rounds} interleaved rounds "
        f"of {args.seconds:g} s; sends into conversations of about {args.history} messages. Medians, "
        "(min–max) over rounds.",
        "",
        "| server | CPU ms / send | sends/s | p50 ms | p99 ms | errors |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for label, s in summaries.items():
        cpu, rps = s["cpu_ms"], s["rps"]
        lines.append(
            f"| {label} | {cpu['median']:.2f} ({cpu['min']:.2f}–{cpu['max']:.2f}) "
            f"| {rps['median']:.0f} ({rps['min']:.0f}–{rps['max']:.0f}) "
            f"| {s['p50_ms']['median']:.1f} | {s['p99_ms']['median']:.1f} | {s['errors']} |"
        )
    if "before" in summaries and "after" in summaries:
        before, after = summaries["before"], summaries["after"]
        lines += [
            "",
            f"after / before: CPU per send × {after['cpu_ms']['median'] / before['cpu_ms']['median']:.2f}, "
            f"sends/s × {after['rps']['median'] / before['rps']['median']:.2f}.",
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.send_cost", description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", default="", help="also run the platform at this git ref ('before')")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--conversations", type=int, default=64)
    parser.add_argument("--history", type=int, default=20, help="messages in each conversation before the run")
    parser.add_argument("--output", default=str(RESULTS / "send_cost"), help="path without extension")
    args = parser.parse_args(argv)
    if not (os.environ.get("DATABASE_URL") and os.environ.get("REDIS_URL")):
        parser.error("needs DATABASE_URL and REDIS_URL")

    machine = {
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpu": f"{os.cpu_count()} cores ({cpu_model()})",
        "load_start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }
    runs: dict[str, list[dict]] = {}
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="send-cost-")))
        upstream = stack.enter_context(run_fake_upstream(separate_process=True, tokens=TOKENS))
        env = platform_env(upstream, TOKENS, tmp, "services")
        key = prepare_platform(env).key
        checkouts = [("after" if args.baseline else "this checkout", BASE_DIR)]
        if args.baseline:
            checkouts.insert(0, ("before", stack.enter_context(baseline_checkout(args.baseline))))
        targets = []
        for label, checkout in checkouts:
            server = stack.enter_context(run_server(env, cwd=checkout, log_path=tmp / f"{label}.log"))
            print(f"{label}: {server.url} (pid {server.process.pid}); seeding", file=sys.stderr, flush=True)
            ids = seed_conversations(server.url, key, args.conversations, args.history)
            requests = [wrk.Request("POST", f"/api/conversations/{cid}/messages", key, BODY) for cid in ids]
            requests_file = wrk.write_requests(tmp / f"{label}.requests", requests)
            targets.append((label, server, requests_file))
            runs[label] = []
        # A warm-up run each: connection pools, caches and the first model call.
        for _label, server, requests_file in targets:
            wrk.run(server.url, requests_file, seconds=2, connections=args.connections, timeout=10)
        for round_number in range(args.rounds):
            shift = round_number % len(targets)
            for label, server, requests_file in targets[shift:] + targets[:shift]:
                run = measure(server.url, server.process.pid, requests_file, args)
                runs[label].append(run)
                print(
                    f"round {round_number + 1} {label}: {run['rps']:.0f} sends/s, {run['cpu_ms'] or 0:.2f} CPU ms",
                    file=sys.stderr,
                    flush=True,
                )
    machine["load_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    summaries = {label: summarise(label_runs) for label, label_runs in runs.items()}
    text = report(args, machine, summaries)
    print(text)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.with_suffix(".md").write_text(text)
    output.with_suffix(".json").write_text(json.dumps({"machine": machine, "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
