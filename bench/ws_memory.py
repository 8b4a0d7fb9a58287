"""Memory per held WebSocket, by kind of process, for this checkout and a baseline.

    DATABASE_URL=postgres://… REDIS_URL=redis://… python -m bench.ws_memory --count 10000 \\
        [--baseline REF] [--rounds 1] [--compression deflate|none] [--python-heap]

Starts the platform as bench.run does (bench.platform.run_platform: nginx in
front of granian WSGI and uvicorn ASGI, production settings) on a database of
its own with one user and API key, opens and closes a few sockets (workers warm
up lazily), reads the RSS and PSS of each kind of process (each server's main
process, and the workers it started), holds ``--count`` sockets from
bench.ws_client processes (``hold``, offering ``--compression`` as browsers do),
reads them again, and closes the sockets. KB per socket = (held − before) /
sockets held. With ``--baseline REF`` the platform at git ``REF`` (its code,
ops/run-*.sh and ops/nginx.conf, exported to a temporary directory) is measured
the same way in the same run; with ``--rounds`` > 1 the order alternates and
the figures are medians.

``--python-heap`` measures this checkout only, with tracemalloc in every server
process (a sitecustomize that dumps a snapshot on SIGUSR2): per ASGI worker, the
Python allocations the held sockets added, by file and line, against the
worker's RSS growth. Python traces what CPython's allocators hand out, zlib's
state included; the rest of the growth is untraced C (uvloop's handles and
buffers) and the allocator's own overhead. tracemalloc inflates RSS: compare that
run's RSS figures with nothing else. Results: bench/results/ws_memory.{md,json}.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import sys
import sysconfig
import tempfile
import time
import tracemalloc
from pathlib import Path

from agentsflow.testing import BASE_DIR, fresh_database_env, loopback_production_env, prepare_platform
from bench import procs, ws
from bench.machine import run_ended, run_line, run_started
from bench.platform import Platform, run_platform
from bench.stream_overhead import checkouts_to_compare, interleaved

RESULTS = BASE_DIR / "bench" / "results"
WARM_UP_SOCKETS = 200
HEAP_HOOK = """\
import os, signal, tracemalloc

tracemalloc.start()


def _dump(signum, frame, _count=[0]):
    path = os.path.join(os.environ["WS_MEMORY_HEAP_DIR"], f"{os.getpid()}-{_count[0]}")
    _count[0] += 1
    tracemalloc.take_snapshot().dump(path + ".part")
    os.rename(path + ".part", path + ".snap")


signal.signal(signal.SIGUSR2, _dump)
"""


HEAP_NOTE = "tracemalloc ran in every server process: this run's RSS figures are inflated, compare them with none."


def by_kind(platform: Platform) -> dict[str, dict]:
    return {kind: memory.as_dict() for kind, memory in platform.memory_by_kind().items()}


def per_socket(before: dict[str, dict], held: dict[str, dict], sockets: int) -> dict[str, dict]:
    """Each kind's RSS and PSS before and while held, and the growth in KB per socket."""
    rows = {}
    for kind in [*before, "total"]:
        if kind == "total":
            b = {k: sum(row[k] for row in before.values()) for k in ("processes", "rss_mb", "pss_mb")}
            h = {k: sum(row[k] for row in held.values()) for k in ("processes", "rss_mb", "pss_mb")}
        else:
            b, h = before[kind], held[kind]
        rows[kind] = {
            "processes": b["processes"],
            "rss_before_mb": round(b["rss_mb"], 1),
            "rss_held_mb": round(h["rss_mb"], 1),
            "pss_before_mb": round(b["pss_mb"], 1),
            "pss_held_mb": round(h["pss_mb"], 1),
            "rss_kb_per_socket": round((h["rss_mb"] - b["rss_mb"]) * 1024 / max(sockets, 1), 1),
            "pss_kb_per_socket": round((h["pss_mb"] - b["pss_mb"]) * 1024 / max(sockets, 1), 1),
        }
    return rows


# --- tracemalloc in the ASGI workers ----------------------------------------------------


def heap_snapshots(platform: Platform, heap_dir: Path) -> dict[int, dict]:
    """Ask every ASGI worker for a snapshot; wait for them. Per worker pid: the
    snapshot's path, its RSS and its open sockets at that moment."""
    workers = [pid for pid in platform.pids("asgi") if pid != platform.roots["asgi"]]
    taken = {}
    for pid in workers:
        known = set(heap_dir.glob(f"{pid}-*.snap"))
        os.kill(pid, signal.SIGUSR2)
        deadline = time.monotonic() + 300
        while not (new := set(heap_dir.glob(f"{pid}-*.snap")) - known) and time.monotonic() < deadline:
            time.sleep(0.5)
        if new:
            taken[pid] = {
                "path": str(new.pop()),
                "rss_mb": procs.memory([pid]).rss_bytes / 2**20,
                "sockets": procs.open_sockets(pid),
            }
    return taken


def heap_growth(before: dict[int, dict], held: dict[int, dict], top: int = 15) -> list[dict]:
    """Per worker: the traced Python growth per socket, by line and by file, against its RSS growth."""
    ignore = [tracemalloc.Filter(False, tracemalloc.__file__), tracemalloc.Filter(False, "<frozen importlib*")]
    workers = []
    for pid in sorted(set(before) & set(held)):
        sockets = held[pid]["sockets"] - before[pid]["sockets"]
        if sockets < 10:  # not a worker that serves sockets (multiprocessing's resource tracker)
            continue
        old = tracemalloc.Snapshot.load(str(before[pid]["path"])).filter_traces(ignore)
        new = tracemalloc.Snapshot.load(str(held[pid]["path"])).filter_traces(ignore)

        def rows(group: str, old=old, new=new, sockets=sockets) -> list[dict]:
            diffs = sorted(new.compare_to(old, group), key=lambda d: -d.size_diff)[:top]
            return [
                {
                    "where": _short(str(d.traceback[0])),
                    "kb_per_socket": round(d.size_diff / 1024 / sockets, 2),
                    "objects_per_socket": round(d.count_diff / sockets, 2),
                }
                for d in diffs
            ]

        traced = sum(s.size for s in new.statistics("filename")) - sum(s.size for s in old.statistics("filename"))
        workers.append(
            {
                "pid": pid,
                "sockets": sockets,
                "rss_kb_per_socket": round((held[pid]["rss_mb"] - before[pid]["rss_mb"]) * 1024 / sockets, 1),
                "traced_kb_per_socket": round(traced / 1024 / sockets, 1),
                "by_line": rows("lineno"),
                "by_file": rows("filename"),
            }
        )
    return workers


def _short(where: str) -> str:
    """A path from its package on: site-packages/ and the standard library's directory cut off."""
    for marker in ("site-packages/", sysconfig.get_paths()["stdlib"] + "/", str(BASE_DIR) + "/"):
        if marker in where:
            return where.split(marker, 1)[1]
    return where


# --- the run ------------------------------------------------------------------------------


def measure(platform: Platform, keys_file: Path, work_dir: Path, args, heap_dir: Path | None) -> dict:
    """Warm up, read, hold ``args.count`` sockets, read again."""
    quiet = open(os.devnull, "w")  # noqa: SIM115 (closed below)
    with contextlib.closing(quiet):
        warm_up = min(WARM_UP_SOCKETS, args.count)
        ws.held_connections(platform, keys_file, work_dir, count=warm_up, compression=args.compression, out=quiet)
    time.sleep(2)
    before = by_kind(platform)
    readings: dict = {}
    if heap_dir is not None:
        readings["heap_before"] = heap_snapshots(platform, heap_dir)

    def while_held() -> None:
        readings["held"] = by_kind(platform)
        if heap_dir is not None:
            readings["heap_held"] = heap_snapshots(platform, heap_dir)

    held = ws.held_connections(
        platform, keys_file, work_dir, count=args.count, compression=args.compression, while_held=while_held
    )
    result = {
        "sockets": held["held"],
        "failed": held["failed"],
        "failures": held["failures"],
        "kinds": per_socket(before, readings["held"], held["held"]),
    }
    if heap_dir is not None:
        result["heap"] = heap_growth(readings["heap_before"], readings["heap_held"])
    return result


def median_rows(runs: list[dict]) -> dict[str, dict]:
    kinds = runs[0]["kinds"]
    return {
        kind: {field: statistics.median(run["kinds"][kind][field] for run in runs) for field in kinds[kind]}
        for kind in kinds
    }


def report(args, machine: dict, runs: dict[str, list[dict]]) -> str:
    lines = [
        "# Memory per held WebSocket",
        "",
        run_line(f"python -m bench.ws_memory {' '.join(sys.argv[1:])}", machine),
        "",
        f"The platform as bench.run starts it (nginx -> granian WSGI + uvicorn ASGI, production settings); "
        f"{args.count:,} sockets held from 2 bench.ws_client processes offering compression "
        f"`{args.compression}`, after {WARM_UP_SOCKETS} opened and closed to warm up. "
        f"{'Medians over ' + str(args.rounds) + ' rounds.' if args.rounds > 1 else 'One round.'}",
        "",
    ]
    if args.python_heap:
        lines += [HEAP_NOTE, ""]
    for label, label_runs in runs.items():
        held = ", ".join(f"{r['sockets']:,} held ({r['failed']} failed)" for r in label_runs)
        lines += [
            f"## {label}: {held}",
            "",
            "| processes | n | RSS before MB | RSS held MB | RSS KB/socket "
            "| PSS before MB | PSS held MB | PSS KB/socket |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for kind, row in median_rows(label_runs).items():
            lines.append(
                f"| {kind} | {row['processes']:.0f} | {row['rss_before_mb']:.1f} | {row['rss_held_mb']:.1f} "
                f"| {row['rss_kb_per_socket']:.1f} | {row['pss_before_mb']:.1f} | {row['pss_held_mb']:.1f} "
                f"| {row['pss_kb_per_socket']:.1f} |"
            )
        lines.append("")
        for worker in label_runs[-1].get("heap", []):
            lines += heap_lines(worker)
    return "\n".join(lines)


def heap_lines(worker: dict) -> list[str]:
    lines = [
        f"### ASGI worker {worker['pid']}: {worker['sockets']:,} sockets, RSS +{worker['rss_kb_per_socket']} KB "
        f"a socket, of which Python traced +{worker['traced_kb_per_socket']} KB",
        "",
    ]
    for group in ("by_line", "by_file"):
        lines += [f"| {group.replace('_', ' ')} | KB/socket | objects/socket |", "| --- | ---: | ---: |"]
        lines += [f"| `{r['where']}` | {r['kb_per_socket']} | {r['objects_per_socket']} |" for r in worker[group]]
        lines.append("")
    return lines


def platform_env(tmp: Path, heap_dir: Path | None) -> dict[str, str]:
    env = {
        **loopback_production_env("ws-memory-" + "k" * 60),
        **fresh_database_env("ws_memory", tmp),
        "REDIS_URL": os.environ["REDIS_URL"],
        "AGENTSFLOW_VAR_DIR": str(tmp),
        "ACCESS_LOG": "false",
    }
    if heap_dir is not None:
        (heap_dir / "sitecustomize.py").write_text(HEAP_HOOK)
        env.update(PYTHONPATH=str(heap_dir), WS_MEMORY_HEAP_DIR=str(heap_dir))
    return env


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.ws_memory", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=10_000, help="sockets held at once")
    parser.add_argument("--baseline", default="", help="also run the platform at this git ref ('before')")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--compression", choices=("deflate", "none"), default="deflate", help="what the clients offer")
    parser.add_argument("--python-heap", action="store_true", help="tracemalloc in the ASGI workers (this checkout)")
    parser.add_argument("--output", default=str(RESULTS / "ws_memory"), help="path without extension")
    args = parser.parse_args(argv)
    if not (os.environ.get("DATABASE_URL") and os.environ.get("REDIS_URL")):
        parser.error("needs DATABASE_URL and REDIS_URL")
    if args.python_heap and (args.baseline or args.rounds > 1):
        parser.error("--python-heap measures this checkout once")

    machine = run_started()
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ws-memory-")))
        heap_dir = tmp / "heap" if args.python_heap else None
        if heap_dir is not None:
            heap_dir.mkdir()
        env = platform_env(tmp, heap_dir)
        keys_file = tmp / "keys.txt"
        keys_file.write_text(prepare_platform(env).key + "\n")
        checkouts = checkouts_to_compare(stack, args.baseline)
        runs: dict[str, list[dict]] = {label: [] for label, _ in checkouts}
        for number, (label, checkout) in interleaved(checkouts, args.rounds):
            print(f"round {number + 1}: {label}", file=sys.stderr, flush=True)
            with run_platform(env, checkout=checkout) as platform:
                runs[label].append(measure(platform, keys_file, tmp, args, heap_dir))
            total = runs[label][-1]["kinds"]["total"]
            print(
                f"  {label}: RSS {total['rss_before_mb']} -> {total['rss_held_mb']} MB, "
                f"{total['rss_kb_per_socket']} KB a socket",
                file=sys.stderr,
                flush=True,
            )
    run_ended(machine)
    text = report(args, machine, runs)
    print(text)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.with_suffix(".md").write_text(text)
    output.with_suffix(".json").write_text(json.dumps({"machine": machine, "args": vars(args), "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
