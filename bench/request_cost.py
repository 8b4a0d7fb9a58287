"""What one request costs the server: CPU milliseconds per request, and requests a second.

    python -m bench.request_cost [--request send|list|models] [--baseline REF] [--rounds 5] [--seconds 8]

One of ``make bench``'s figures on its own, so a change to its path can be
measured in minutes instead of a whole run. Needs DATABASE_URL and REDIS_URL
(the production case). ``--request``:

- ``send`` (figure 4): ``POST /api/conversations/<id>/messages``, non-streaming,
  to one uvicorn worker (the server nginx sends it to);
- ``list`` (figure 3b): ``GET /api/conversations?page_size=50``, a page of 50
  from PostgreSQL (the parameter skips the cache), to one granian WSGI worker;
- ``models`` (figure 2): ``GET /api/models`` with the key, cached, to one
  granian WSGI worker.

Starts the fake OpenAI-compatible upstream (its own process, no latency, 16
tokens a reply) and the platform in production settings (PostgreSQL, Redis,
limits lifted). Each server gets its own conversations with some history
(``--history`` messages). Then, in interleaved rounds (the order rotates each
round), wrk sends the request for ``--seconds`` over ``--connections``
connections, cycling through the conversations.

CPU ms per request is the server process's user + system CPU time over the run
divided by the requests answered: other load on the machine disturbs it far less
than the rate does, so compare that first. ``--baseline REF`` also runs the
platform as it is at git ``REF`` (exported to a temporary directory, same
database) next to this checkout, interleaved in the same rounds.
Results: bench/results/request_cost_<request>.{md,json}.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
from pathlib import Path

import httpx

from agentsflow.testing import BASE_DIR, prepare_platform, run_server
from bench import procs, wrk
from bench.fake_upstream import run_fake_upstream
from bench.machine import run_ended, run_line, run_started
from bench.stream_overhead import checkouts_to_compare, interleaved, platform_env, spread, spread_text

RESULTS = BASE_DIR / "bench" / "results"
TOKENS = 16
# The question of make bench's figure 4; the conversation's own model answers it.
REQUESTS = {
    "send": "POST /api/conversations/<id>/messages (non-streaming, zero-latency model)",
    "list": "GET /api/conversations?page_size=50 (a page of 50 from PostgreSQL)",
    "models": "GET /api/models with an API key (cached)",
}
SERVERS = {"send": "uvicorn", "list": "granian-wsgi", "models": "granian-wsgi"}
PATHS = {"list": "/api/conversations?page_size=50", "models": "/api/models"}
BODY = '{"content": "Benchmark question: in one sentence, what does a connection pool do?"}'


def seed_conversations(url: str, key: str, count: int, history: int) -> list[int]:
    """``count`` conversations of the model "bench", each with about ``history`` messages."""
    headers = {"Authorization": f"Bearer {key}"}
    ids = []
    with httpx.Client(base_url=url, headers=headers, timeout=30) as client:
        for _ in range(count):
            cid = _sent(client, "/api/chat", {"content": "Hello there.", "model": "bench"})["conversation_id"]
            for _ in range(max(0, history // 2 - 1)):
                _sent(client, f"/api/conversations/{cid}/messages", {"content": "Go on."})
            ids.append(cid)
    return ids


def _sent(client: httpx.Client, path: str, body: dict) -> dict:
    response = client.post(path, json=body)
    if response.status_code != 201:
        raise RuntimeError(f"seeding: {path} answered {response.status_code}: {response.text[:500]}")
    return response.json()


def requests_for(kind: str, key: str, conversation_ids: list[int]) -> list[wrk.Request]:
    if kind in PATHS:
        return [wrk.Request("GET", PATHS[kind], key)]
    return [wrk.Request("POST", f"/api/conversations/{cid}/messages", key, BODY) for cid in conversation_ids]


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
    def of(key: str) -> dict:
        values = [r[key] for r in runs if r[key] is not None]
        return spread(values) if values else {}

    return {
        "rps": of("rps"),
        "cpu_ms": of("cpu_ms"),
        "p50_ms": of("p50_ms"),
        "p99_ms": of("p99_ms"),
        "errors": sum(r["errors"] for r in runs),
    }


def report(args, machine: dict, summaries: dict[str, dict]) -> str:
    lines = [
        f"# Request cost: {args.request}",
        "",
        run_line(f"python -m bench.request_cost {' '.join(sys.argv[1:])}", machine),
        "",
        f"{REQUESTS[args.request]}; one {SERVERS[args.request]} worker, production settings, "
        f"PostgreSQL + Redis, the fake upstream at zero latency ({TOKENS} tokens a reply). "
        f"wrk: {args.connections} connections, {args.rounds} interleaved rounds "
        f"of {args.seconds:g} s; conversations of about {args.history} messages. Medians, "
        "(min–max) over rounds.",
        "",
        "| server | CPU ms / request | requests/s | p50 ms | p99 ms | errors |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for label, s in summaries.items():
        cpu, rps = s["cpu_ms"], s["rps"]
        lines.append(
            f"| {label} | {spread_text(cpu, '.2f')} | {spread_text(rps)} "
            f"| {s['p50_ms']['median']:.1f} | {s['p99_ms']['median']:.1f} | {s['errors']} |"
        )
    if "before" in summaries and "after" in summaries:
        before, after = summaries["before"], summaries["after"]
        lines += [
            "",
            f"after / before: CPU per request × {after['cpu_ms']['median'] / before['cpu_ms']['median']:.2f}, "
            f"requests/s × {after['rps']['median'] / before['rps']['median']:.2f}.",
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.request_cost", description=__doc__.split("\n\n")[0])
    parser.add_argument("--request", choices=sorted(REQUESTS), default="send")
    parser.add_argument("--baseline", default="", help="also run the platform at this git ref ('before')")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--conversations", type=int, default=64)
    parser.add_argument("--history", type=int, default=20, help="messages in each conversation before the run")
    parser.add_argument("--output", help="path without extension (default bench/results/request_cost_<request>)")
    args = parser.parse_args(argv)
    if not (os.environ.get("DATABASE_URL") and os.environ.get("REDIS_URL")):
        parser.error("needs DATABASE_URL and REDIS_URL")

    machine = run_started()
    runs: dict[str, list[dict]] = {}
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="request-cost-")))
        upstream = stack.enter_context(run_fake_upstream(separate_process=True, tokens=TOKENS))
        env = platform_env(upstream, TOKENS, tmp, "services")
        key = prepare_platform(env).key
        checkouts = checkouts_to_compare(stack, args.baseline)
        # Seeded through a uvicorn server of its own: under WSGI a send's reply may
        # die with the request's throw-away event loop (agentsflow/serving.py).
        print("seeding", file=sys.stderr, flush=True)
        with run_server(env, log_path=tmp / "seeding.log") as seeder:
            seeded = [seed_conversations(seeder.url, key, args.conversations, args.history) for _ in checkouts]
        targets = []
        for (label, checkout), ids in zip(checkouts, seeded, strict=True):
            server = stack.enter_context(
                run_server(env, kind=SERVERS[args.request], cwd=checkout, log_path=tmp / f"{label}.log")
            )
            print(f"{label}: {server.url} (pid {server.process.pid})", file=sys.stderr, flush=True)
            requests_file = wrk.write_requests(tmp / f"{label}.requests", requests_for(args.request, key, ids))
            targets.append((label, server, requests_file))
            runs[label] = []
        # A warm-up run each: connection pools, caches and the first model call.
        for _label, server, requests_file in targets:
            wrk.run(server.url, requests_file, seconds=2, connections=args.connections, timeout=10)
        for round_number, (label, server, requests_file) in interleaved(targets, args.rounds):
            run = measure(server.url, server.process.pid, requests_file, args)
            runs[label].append(run)
            print(
                f"round {round_number + 1} {label}: {run['rps']:.0f} requests/s, {run['cpu_ms'] or 0:.2f} CPU ms",
                file=sys.stderr,
                flush=True,
            )
    run_ended(machine)
    summaries = {label: summarise(label_runs) for label, label_runs in runs.items()}
    text = report(args, machine, summaries)
    print(text)
    output = Path(args.output or RESULTS / f"request_cost_{args.request}")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.with_suffix(".md").write_text(text)
    output.with_suffix(".json").write_text(json.dumps({"machine": machine, "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
