"""The WebSocket figures, driven from bench.run: sockets held at once (and the
platform's memory while they are held), and streamed events per second with
their latency. The clients are separate processes (bench.ws_client)."""

from __future__ import annotations

import math
import queue
import subprocess
import sys
import threading
import time
from array import array
from dataclasses import dataclass
from pathlib import Path

import orjson

from bench import procs
from bench.platform import Platform

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class ClientProcess:
    """A bench.ws_client process: JSON lines out, command lines in."""

    def __init__(self, args: list[str], log: Path) -> None:
        self.log = open(log, "ab")  # noqa: SIM115 (closed in stop)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.ws_client", *args],
            cwd=PROJECT_ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
        )
        self.events: queue.Queue[dict] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            try:
                self.events.put(orjson.loads(line))
            except orjson.JSONDecodeError:
                continue
        self.events.put({"event": "exited"})

    def wait_for(self, kind: str, timeout: float, on_progress=None) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"ws client: no {kind!r} event within {timeout:.0f} s")
            try:
                event = self.events.get(timeout=min(left, 1.0))
            except queue.Empty:
                continue
            if event["event"] == kind:
                return event
            if event["event"] == "exited":
                raise RuntimeError(f"ws client exited (code {self.process.poll()}) before {kind!r}")
            if event["event"] == "progress" and on_progress:
                on_progress(event)

    def tell(self, line: str = "go") -> None:
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.log.close()


def _split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def _metric(platform: Platform, name: str) -> float | None:
    """A sample's value summed over the workers of the ASGI server's /metrics."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    try:
        text = httpx.get(platform.asgi_url + "/metrics", timeout=10).text
    except httpx.HTTPError:
        return None
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    )


def held_connections(
    platform: Platform,
    keys_file: Path,
    work_dir: Path,
    *,
    count: int,
    clients: int = 2,
    compression: str = "deflate",
    while_held=None,
    out=sys.stderr,
) -> dict:
    """Open ``count`` sockets from ``clients`` processes (offering ``compression``);
    while they are held, read the platform's memory, the server's own count and the
    open-file limits, and call ``while_held()`` (more readings of the caller's own)."""
    before = platform.memory()
    started = time.monotonic()
    processes = [
        ClientProcess(
            [
                "hold",
                *("--url", platform.ws_url(), "--keys", str(keys_file), "--count", str(n)),
                *("--handshakes", "100", "--compression", compression),
            ],
            work_dir / f"ws-hold-{i}.log",
        )
        for i, n in enumerate(_split(count, clients))
    ]
    progress: dict[int, int] = {}

    def show(index: int):
        def update(event: dict) -> None:
            progress[index] = event["open"]
            out.write(
                f"\r  websockets open: {sum(progress.values()):>7,}/{count:,}  {time.monotonic() - started:5.1f} s"
            )
            out.flush()

        return update

    try:
        held = [p.wait_for("held", timeout=120 + count / 50, on_progress=show(i)) for i, p in enumerate(processes)]
        out.write("\n")
        opened = sum(h["open"] for h in held)
        time.sleep(2)  # let the servers settle (allocations after the last handshake)
        memory = platform.memory()
        if while_held is not None:
            while_held()
        server_count = _metric(platform, "agentsflow_websocket_connections")
        asgi_limits = sorted({procs.open_files_limit(pid) for pid in platform.pids("asgi")} - {None})
        nginx_limits = sorted({procs.open_files_limit(pid) for pid in platform.pids("nginx")} - {None})
        for process in processes:
            process.tell("close")
        closed = [p.wait_for("closed", timeout=120) for p in processes]
    finally:
        for process in processes:
            process.stop()
    failures: dict[str, int] = {}
    for h in held:
        for name, n in h["failures"].items():
            failures[name] = failures.get(name, 0) + n
    return {
        "requested": count,
        "held": opened,
        "still_open_at_close": sum(c["still_open"] for c in closed),
        "server_gauge": server_count,
        "failed": sum(h["failed"] for h in held),
        "failures": failures,
        "open_seconds": round(max(h["seconds"] for h in held), 1),
        "memory_before": before.as_dict(),
        "memory_held": memory.as_dict(),
        "per_socket_kb": round((memory.rss_bytes - before.rss_bytes) / max(opened, 1) / 1024, 1),
        "asgi_open_files_limit": asgi_limits,
        "nginx_open_files_limit": nginx_limits,
        "client_processes": clients,
        "servers": ", ".join(platform.roots),
    }


@dataclass
class StreamPlan:
    sockets: int
    tokens_per_second: int  # per stream, at the fake upstream
    tokens: int  # per stream

    @property
    def upstream_model(self) -> str:
        return f"stamp+tps-{self.tokens_per_second}+tokens-{self.tokens}"

    @property
    def offered_events_per_second(self) -> int:
        return self.sockets * self.tokens_per_second


def _cpu_by_pid(kinds: dict[str, list[int]]) -> dict[int, float]:
    """CPU seconds used so far by each process of ``kinds`` (read once a process)."""
    return {pid: procs.cpu_seconds([pid]) for pids in kinds.values() for pid in pids}


def services() -> dict[str, list[int]]:
    """The processes a stream passes through besides the platform's servers, for
    the CPU split: the fake model, Redis and PostgreSQL."""
    return {
        "fake model": procs.matching("bench.fake_upstream"),
        "redis": procs.named("redis-server"),
        "postgres": procs.named("postgres"),
    }


def percentile(ordered: list[int], q: float) -> int | None:
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def _steady_window(streams: list[dict]) -> tuple[int, int, str]:
    """The receive-time window the rate and latencies are taken over (ns): while
    every stream ran; else, when the streams barely overlapped (their starts
    spread out under load), while at least half of them ran; else everything."""
    if not streams:
        return 0, 0, "none"
    firsts = sorted(s["first"] for s in streams)
    lasts = sorted(s["last"] for s in streams)
    if lasts[0] - firsts[-1] >= 1e9:
        return firsts[-1], lasts[0], "all streams running"
    half = len(streams) // 2
    if lasts[half] - firsts[half] >= 1e9:
        return firsts[half], lasts[half], "half of the streams running (they did not all overlap)"
    return firsts[0], lasts[-1], "first delta to last (the streams did not overlap)"


def streamed_events(
    platform: Platform,
    keys_file: Path,
    work_dir: Path,
    plan: StreamPlan,
    *,
    clients: int = 2,
    on_go=None,
    others: dict[str, list[int]] | None = None,
) -> dict:
    """Every socket sends one message at the same moment; deltas are counted and
    their latencies kept over the window in which every stream was running. The CPU
    used meanwhile is split by process kind: each server of the platform, the
    clients, and ``others`` (name -> pids, e.g. the fake model and Redis)."""
    processes = []
    sample_files = []
    for i, n in enumerate(_split(plan.sockets, clients)):
        sample_files.append(work_dir / f"ws-stream-{i}.bin")
        processes.append(
            ClientProcess(
                [
                    "stream",
                    "--url",
                    platform.ws_url(),
                    "--keys",
                    str(keys_file),
                    "--sockets",
                    str(n),
                    "--model",
                    "stream",
                    "--samples",
                    str(sample_files[-1]),
                    "--timeout",
                    str(plan.tokens / plan.tokens_per_second * 4 + 30),
                ],
                work_dir / f"ws-stream-{i}.log",
            )
        )
    try:
        ready = [p.wait_for("ready", timeout=120) for p in processes]
        if on_go:
            on_go()
        kinds = {name: platform.pids(name) for name in platform.roots}
        kinds["ws clients"] = [p.process.pid for p in processes]
        kinds.update(others or {})
        cpu_before = _cpu_by_pid(kinds)
        started = time.monotonic()
        for process in processes:
            process.tell("go")
        timeout = plan.tokens / plan.tokens_per_second * 4 + 60
        results = [p.wait_for("streamed", timeout=timeout) for p in processes]
        elapsed = time.monotonic() - started
        cpu_after = _cpu_by_pid(kinds)
        used = {pid: cpu_after[pid] - cpu_before[pid] for pid in cpu_before}
        cpu_by_kind = {name: round(sum(used[pid] for pid in pids), 2) for name, pids in kinds.items()}
        # One busy worker queues its sockets' events however idle the other is.
        asgi_by_process = sorted((round(used[pid], 2) for pid in kinds.get("asgi", [])), reverse=True)
        cpu = sum(cpu_by_kind[name] for name in platform.roots)
    finally:
        for process in processes:
            process.stop()

    sockets = [s for r in results for s in r["sockets"]]
    finals: dict[str, int] = {}
    for r in results:
        for name, n in r["finals"].items():
            finals[name] = finals.get(name, 0) + n
    samples = array("q")
    for path in sample_files:
        if path.exists():
            samples.frombytes(path.read_bytes())
    received, latencies = samples[0::2], samples[1::2]
    streaming = [s for s in sockets if s["first"] is not None]
    window_start, window_end, window_kind = _steady_window(streaming)
    window = (window_end - window_start) / 1e9
    samples_in_window = [
        (at, lat) for at, lat in zip(received, latencies, strict=True) if window_start <= at <= window_end
    ]
    in_window = sorted(lat for _, lat in samples_in_window)
    everything = sorted(latencies)
    # Steady queueing (the workers short of CPU) shows in every second; pauses (a
    # garbage collection, a slow Redis round trip) in a few.
    by_second: dict[int, list[int]] = {}
    for at, lat in samples_in_window:
        by_second.setdefault((at - window_start) // 1_000_000_000, []).append(lat)
    p99_by_second = [round(percentile(sorted(v), 0.99) / 1e6, 1) for _, v in sorted(by_second.items())]
    first_delta = sorted((s["first"] - s["sent"]) for s in streaming)
    return {
        "sockets": plan.sockets,
        "opened": sum(r["open"] for r in ready),
        "offered_events_per_second": plan.offered_events_per_second,
        "tokens_per_stream": plan.tokens,
        "deltas_received": len(latencies),
        "deltas_expected": plan.sockets * plan.tokens,
        "finals": finals,
        "error_messages": [m for r in results for m in r.get("errors", [])][:5],
        "window_seconds": round(window, 2),
        "window": window_kind,
        "events_per_second": round(len(in_window) / window, 1) if window > 0 else None,
        "latency_ms": {
            name: (None if value is None else round(value / 1e6, 2))
            for name, value in (
                ("p50", percentile(in_window, 0.50)),
                ("p95", percentile(in_window, 0.95)),
                ("p99", percentile(in_window, 0.99)),
                ("max", in_window[-1] if in_window else None),
            )
        },
        "p99_ms_by_second": p99_by_second,
        "latency_all_ms": {
            name: (None if value is None else round(value / 1e6, 2))
            for name, value in (("p50", percentile(everything, 0.5)), ("p99", percentile(everything, 0.99)))
        },
        "send_to_first_delta_ms": {
            "p50": round(percentile(first_delta, 0.5) / 1e6, 1) if first_delta else None,
            "p99": round(percentile(first_delta, 0.99) / 1e6, 1) if first_delta else None,
        },
        "seconds": round(elapsed, 1),
        "platform_cpu_seconds": round(cpu, 1),
        "cpu_seconds_by_process": cpu_by_kind,
        "asgi_cpu_seconds_by_process": asgi_by_process,
        "client_processes": clients,
    }
