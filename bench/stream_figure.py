"""Figure 6's streamed events on their own, against an older commit if asked.

    python -m bench.stream_figure [--baseline REF] [--rounds 3] [--sockets 200] \\
        [--tokens-per-second 50] [--tokens 750]

``make bench``'s streamed-events figure in a few minutes: the platform as
deployed (bench.platform: nginx, uvicorn ASGI workers, PostgreSQL, Redis), the
fake model streaming time-stamped tokens at a fixed rate in a process of its
own, and bench.ws_client processes that open the sockets, send one message each
at the same moment and time every delta (bench.ws.streamed_events). Needs
DATABASE_URL (the run makes a database of its own next to it, ``<name>_stream_figure``)
and REDIS_URL (a Redis database of its own: it is flushed).

Besides events per second and their latency it prints the CPU seconds each kind
of process used while streaming (ASGI workers, nginx, the clients, the fake
model, Redis, PostgreSQL): on two shared cores a process that is not the
platform's still takes CPU from it. ``--baseline REF`` also runs the platform
as it is at git ``REF`` (same database), in interleaved rounds. ``--profile S``
samples this checkout's ASGI workers with py-spy for S seconds of its last round
(bench/results/profiles/stream_figure.txt, summarised in the report).
Results: bench/results/stream_figure.{md,json}.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

from agentsflow.testing import BASE_DIR, fresh_database_env, prepare_platform
from bench import profile, ws
from bench.fake_upstream import run_fake_upstream
from bench.machine import run_ended, run_line, run_started
from bench.platform import run_platform
from bench.run import platform_env, prepare_state, setup_django
from bench.stream_overhead import checkouts_to_compare, interleaved, spread, spread_text

RESULTS = BASE_DIR / "bench" / "results"


def summarise(runs: list[dict]) -> dict:
    def of(pick) -> dict:
        values = [v for v in (pick(r) for r in runs) if v is not None]
        return spread(values) if values else {}

    kinds = sorted({name for r in runs for name in r["cpu_seconds_by_process"]})
    return {
        "events_per_second": of(lambda r: r["events_per_second"]),
        "p50_ms": of(lambda r: r["latency_ms"]["p50"]),
        "p99_ms": of(lambda r: r["latency_ms"]["p99"]),
        "missing": sum(r["deltas_expected"] - r["deltas_received"] for r in runs),
        # CPU µs per delta received, per kind of process.
        "cpu_us_per_event": {
            name: of(lambda r, n=name: r["cpu_seconds_by_process"].get(n, 0) / max(r["deltas_received"], 1) * 1e6)
            for name in kinds
        },
    }


def profiled_go(platform, seconds: float, output: Path, spies: list):
    """An ``on_go`` for streamed_events: py-spy on the ASGI workers once the streams
    flow (the sends are stored within a few seconds)."""

    def later() -> None:
        time.sleep(5)
        spies.append(profile.start(platform.roots["asgi"], seconds, output))

    return lambda: threading.Thread(target=later, daemon=True).start()


def report(args, machine: dict, summaries: dict[str, dict], profiled: dict | None = None) -> str:
    offered = args.sockets * args.tokens_per_second
    lines = [
        "# Streamed events (figure 6)",
        "",
        run_line(f"python -m bench.stream_figure {' '.join(sys.argv[1:])}", machine),
        "",
        f"{args.sockets} WebSockets through nginx, each sending one message to a model streaming "
        f"{args.tokens} time-stamped tokens at {args.tokens_per_second}/s ({offered:,} events/s offered); "
        f"{args.rounds} interleaved rounds. Medians (min–max) over rounds; latency is the client's "
        "receive time minus the fake model's send time.",
        "",
        "| platform | events/s | p50 ms | p99 ms | missing |",
        "| --- | --- | --- | --- | --- |",
    ]
    for label, s in summaries.items():
        rate, p99 = s["events_per_second"], s["p99_ms"]
        lines.append(
            f"| {label} | {spread_text(rate, ',.0f')} | {s['p50_ms']['median']:.1f} | {spread_text(p99, '.1f')} "
            f"| {s['missing']} |"
        )
    kinds = sorted({name for s in summaries.values() for name in s["cpu_us_per_event"]})
    lines += [
        "",
        "CPU µs per event received, by process (medians over rounds):",
        "",
        "| process | " + " | ".join(summaries) + " |",
        "| --- |" + " --- |" * len(summaries),
    ]
    for name in [*kinds, "all"]:
        cells = []
        for s in summaries.values():
            per = s["cpu_us_per_event"]
            value = sum(v["median"] for v in per.values() if v) if name == "all" else per.get(name, {}).get("median")
            cells.append("—" if value is None else f"{value:.0f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if profiled:
        lines += ["", f"py-spy on the ASGI workers, {profiled.get('samples', 0)} samples. Self time by package:", ""]
        lines += [f"- {name}: {share} %" for name, share in profiled.get("self_by_package", [])]
        lines += ["", "On the stack (inclusive):", ""]
        lines += [f"- {name}: {share} %" for name, share in profiled.get("inclusive", [])]
        if profiled.get("error"):
            lines.append(f"py-spy failed: {profiled['error']}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.stream_figure", description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", default="", help="also run the platform at this git ref ('before')")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sockets", type=int, default=200)
    parser.add_argument("--tokens-per-second", type=int, default=50)
    parser.add_argument("--tokens", type=int, default=750)
    parser.add_argument("--profile", type=float, default=0, help="py-spy seconds in this checkout's last round")
    parser.add_argument("--output", help="path without extension (default bench/results/stream_figure)")
    args = parser.parse_args(argv)
    database_url, redis_url = os.environ.get("DATABASE_URL", ""), os.environ.get("REDIS_URL", "")
    if not (database_url.startswith(("postgres://", "postgresql://")) and redis_url.startswith("redis://")):
        parser.error("needs DATABASE_URL (PostgreSQL) and REDIS_URL (a Redis database of its own: it is flushed)")

    plan = ws.StreamPlan(args.sockets, args.tokens_per_second, args.tokens)
    machine = run_started()
    runs: dict[str, list[dict]] = {}
    spies: list = []
    profile_output = RESULTS / "profiles" / "stream_figure.txt"
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="stream-figure-")))
        upstream = stack.enter_context(run_fake_upstream(separate_process=True))
        database_url = fresh_database_env("stream_figure", tmp)["DATABASE_URL"]
        env = platform_env(database_url, redis_url, upstream, plan, tmp / "var")
        setup_django(env)
        key = prepare_platform(env).key
        prepare_state(redis_url)
        keys_file = tmp / "keys.txt"
        keys_file.write_text(key + "\n")
        checkouts = checkouts_to_compare(stack, args.baseline)
        platforms = []
        for label, checkout in checkouts:
            platforms.append((label, stack.enter_context(run_platform(env, checkout=checkout))))
            print(f"{label}: {platforms[-1][1].topology}", file=sys.stderr, flush=True)
            runs[label] = []
        for round_number, (label, platform) in interleaved(platforms, args.rounds):
            on_go = None
            if args.profile and label != "before" and round_number == args.rounds - 1:
                profile_output.parent.mkdir(parents=True, exist_ok=True)
                on_go = profiled_go(platform, args.profile, profile_output, spies)
            run = ws.streamed_events(platform, keys_file, tmp, plan, on_go=on_go, others=ws.services())
            runs[label].append(run)
            print(
                f"round {round_number + 1} {label}: {run['events_per_second']:,} events/s, "
                f"p99 {run['latency_ms']['p99']} ms (each second: {run['p99_ms_by_second']}), "
                f"CPU {run['cpu_seconds_by_process']}, ASGI processes {run['asgi_cpu_seconds_by_process']}, "
                f"{run['seconds']} s",
                file=sys.stderr,
                flush=True,
            )
    run_ended(machine)
    profiled = None
    if spies:
        error = profile.finish(spies[0])
        profiled = {"error": error} if error else profile.summarise(profile_output, top=15)
    summaries = {label: summarise(label_runs) for label, label_runs in runs.items()}
    text = report(args, machine, summaries, profiled)
    print(text)
    output = Path(args.output or RESULTS / "stream_figure")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.with_suffix(".md").write_text(text)
    output.with_suffix(".json").write_text(json.dumps({"machine": machine, "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
