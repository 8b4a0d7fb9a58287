"""The HTTP figures: what each one requests, and their runs with wrk in
interleaved rounds (every figure once per round, so a noisy neighbour shifts
them all alike); a figure's result is the median over the rounds."""

from __future__ import annotations

import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from bench import wrk
from bench.seed import BenchUser


@dataclass(frozen=True)
class Goal:
    rps: float | None = None
    p99_ms: float | None = None

    def __str__(self) -> str:
        parts = []
        if self.rps:
            parts.append(f"≥ {self.rps:,.0f} req/s")
        if self.p99_ms:
            parts.append(f"p99 ≤ {self.p99_ms:g} ms")
        return ", ".join(parts) or "—"

    def met(self, rps: float, p99_ms: float) -> bool:
        return (self.rps is None or rps >= self.rps) and (self.p99_ms is None or p99_ms <= self.p99_ms)


@dataclass
class HttpFigure:
    id: str
    label: str
    server: str  # "wsgi" or "asgi": who answers it in the production topology
    requests: list[wrk.Request]
    goal: Goal | None = None
    note: str = ""
    skipped: str = ""  # why it was not measured
    runs: list[wrk.WrkResult] = field(default_factory=list)
    cpu_ms: list[float] = field(default_factory=list)  # the platform's CPU time per request, per run

    @property
    def path(self) -> str:
        return self.requests[0].path

    def summary(self) -> dict:
        if self.skipped or not self.runs:
            return {"id": self.id, "label": self.label, "skipped": self.skipped or "not run", "note": self.note}
        rps = statistics.median(r.rps for r in self.runs)
        p99 = statistics.median(r.p99_ms for r in self.runs)
        requests = sum(r.requests for r in self.runs)
        statuses: dict[str, int] = {}
        for run in self.runs:
            for code, count in run.statuses.items():
                statuses[code] = statuses.get(code, 0) + count
        other = sum(r.other_errors for r in self.runs)
        return {
            "id": self.id,
            "label": self.label,
            "server": self.server,
            "rounds": len(self.runs),
            "requests": requests,
            "rps": round(rps, 1),
            "rps_rounds": [round(r.rps, 1) for r in self.runs],
            "cpu_ms_per_request": round(statistics.median(self.cpu_ms), 3) if self.cpu_ms else None,
            "p50_ms": round(statistics.median(r.p50_ms for r in self.runs), 2),
            "p95_ms": round(statistics.median(r.p95_ms for r in self.runs), 2),
            "p99_ms": round(p99, 2),
            "max_ms": round(max(r.max_ms for r in self.runs), 2),
            "statuses": dict(sorted(statuses.items())),
            "errors_429": sum(r.rejected for r in self.runs),
            "errors_other": other,
            "socket_errors": _merge([r.socket_errors for r in self.runs]),
            "goal": str(self.goal) if self.goal else None,
            "passed": self.goal.met(rps, p99) and other == 0 if self.goal else None,
            "note": self.note,
        }


def _merge(dicts: list[dict[str, int]]) -> dict[str, int]:
    merged: dict[str, int] = {}
    for d in dicts:
        for k, v in d.items():
            merged[k] = merged.get(k, 0) + v
    return merged


CHAT_BODY = orjson.dumps(
    {"content": "Benchmark question: in one sentence, what does a connection pool do?", "model": "fast"}
).decode()


def define(users: list[BenchUser], *, analytics_path: str | None, analytics_skip: str) -> list[HttpFigure]:
    """The figures of the issue, in its order (plus two reference rows)."""
    keyed = [u.key for u in users]
    figures = [
        HttpFigure(
            "ceiling",
            "1. ceiling: bare Django JSON view (/health)",
            "wsgi",
            [wrk.Request("GET", "/health")],
            note="same server, settings and middleware stack; no key, no I/O",
        ),
        HttpFigure(
            "models",
            "2. GET /api/models, API key (cached)",
            "wsgi",
            [wrk.Request("GET", "/api/models", key) for key in keyed],
            Goal(3000, 50),
        ),
        HttpFigure(
            "models_anonymous",
            "2r. GET /api/models, no key (reference for the key's cost)",
            "wsgi",
            [wrk.Request("GET", "/api/models")],
        ),
        HttpFigure(
            "conversations",
            "3. 50 most recent conversations, API key (first page, cached)",
            "wsgi",
            [wrk.Request("GET", "/api/conversations", key) for key in keyed],
            Goal(1000, 100),
        ),
        HttpFigure(
            "conversations_db",
            "3b. 50 most recent conversations, from PostgreSQL (?page_size=50 skips the cache)",
            "wsgi",
            [wrk.Request("GET", "/api/conversations?page_size=50", key) for key in keyed],
            Goal(1000, 100),
        ),
        HttpFigure(
            "chat",
            "4. chat send, non-streaming, zero-latency model",
            "asgi",
            [
                wrk.Request("POST", f"/api/conversations/{cid}/messages", user.key, CHAT_BODY)
                for user in users
                for cid in user.conversation_ids
            ],
            Goal(400, 150),
            note="POST /api/conversations/<id>/messages into seeded conversations (history sent to the model)",
        ),
        HttpFigure(
            "analytics",
            "5. analytics summary, API key",
            "wsgi",
            [wrk.Request("GET", analytics_path or "/api/analytics/summary", key) for key in keyed],
            skipped="" if analytics_path else analytics_skip,
        ),
    ]
    return figures


def run_rounds(
    figures: list[HttpFigure],
    base_for,
    work_dir: Path,
    *,
    rounds: int,
    seconds: float,
    warmup: float,
    connections: int,
    cpu_seconds=None,
    out=sys.stderr,
) -> None:
    """Warm every figure up once, then run them in ``rounds`` interleaved rounds.

    ``cpu_seconds`` (optional) returns the CPU time the platform's processes have
    used so far: each run then also records the platform's CPU milliseconds per
    request, which other load on the machine changes far less than the rate."""
    active = [f for f in figures if not f.skipped]
    files = {f.id: wrk.write_requests(work_dir / f"{f.id}.tsv", f.requests) for f in active}
    if warmup:
        for figure in active:
            wrk.run(base_for(figure.path), files[figure.id], seconds=warmup, connections=connections)
    for round_number in range(1, rounds + 1):
        for figure in active:
            cpu_before = cpu_seconds() if cpu_seconds else 0.0
            result = wrk.run(base_for(figure.path), files[figure.id], seconds=seconds, connections=connections)
            if cpu_seconds and result.requests:
                figure.cpu_ms.append((cpu_seconds() - cpu_before) * 1000 / result.requests)
            figure.runs.append(result)
            out.write(
                f"  round {round_number}/{rounds}  {figure.id:<18} {result.rps:>9,.0f} req/s  "
                f"p50 {result.p50_ms:7.2f}  p99 {result.p99_ms:7.2f} ms  "
                f"non-2xx/errors {result.requests - result.ok}"
                + (f"  {figure.cpu_ms[-1]:.2f} CPU ms/request" if figure.cpu_ms else "")
                + "\n"
            )
            out.flush()
