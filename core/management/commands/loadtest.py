"""`manage.py loadtest`: the guide's performance test, done properly.

Concurrent async clients run a weighted mix of endpoints against a base URL for
a bounded time (and, optionally, a bounded number of requests), print a progress
line while they run, then per-endpoint requests, RPS, status counts and latency
percentiles. `--json` prints the same as JSON for machines.
"""

from __future__ import annotations

import asyncio
import math
import random
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import httpx
import orjson
from django.core.management.base import BaseCommand, CommandError

ENDPOINTS = ("health", "models", "conversations", "chat")
DEFAULT_MIX = "health=2,models=3,conversations=3,chat=1"


@dataclass
class EndpointStats:
    latencies: list[float] = field(default_factory=list)
    statuses: Counter = field(default_factory=Counter)

    def summary(self, elapsed: float) -> dict:
        ordered = sorted(self.latencies)
        count = len(ordered)
        # A status is an HTTP code, or the name of a transport error (ReadTimeout, ConnectError…).
        errors = sum(n for status, n in self.statuses.items() if not (status.isdigit() and 200 <= int(status) < 300))
        return {
            "requests": count,
            "rps": round(count / elapsed, 1) if elapsed else 0.0,
            "statuses": dict(sorted(self.statuses.items())),
            "error_rate": round(errors / count, 4) if count else 0.0,
            "p50_ms": _ms(percentile(ordered, 0.50)),
            "p95_ms": _ms(percentile(ordered, 0.95)),
            "p99_ms": _ms(percentile(ordered, 0.99)),
            "max_ms": _ms(ordered[-1] if ordered else None),
        }


def percentile(ordered: list[float], q: float) -> float | None:
    """Nearest-rank percentile of an already sorted list."""
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


def parse_mix(raw: str) -> dict[str, int]:
    mix = {}
    for part in raw.split(","):
        name, _, weight = part.strip().partition("=")
        if name not in ENDPOINTS:
            raise CommandError(f"Unknown endpoint {name!r} in --mix; choose from {', '.join(ENDPOINTS)}.")
        try:
            mix[name] = int(weight or 1)
        except ValueError:
            raise CommandError(f"--mix weight for {name} must be an integer.") from None
        if mix[name] < 0:
            raise CommandError("--mix weights must not be negative.")
    if not any(mix.values()):
        raise CommandError("--mix needs at least one endpoint with a positive weight.")
    return mix


class LoadTest:
    def __init__(self, *, base_url, key, concurrency, duration, max_requests, mix, model, out) -> None:
        self.base_url = base_url.rstrip("/")
        self.key = key
        self.concurrency = concurrency
        self.duration = duration
        self.max_requests = max_requests
        self.names, self.weights = zip(*[(n, w) for n, w in mix.items() if w], strict=True)
        self.model = model
        self.out = out
        self.stats: dict[str, EndpointStats] = defaultdict(EndpointStats)
        self.sent = 0
        self.failures: Counter = Counter()

    def _request(self, name: str, conversation: dict) -> tuple[str, str, dict | None]:
        if name == "health":
            return "GET", "/health", None
        if name == "models":
            return "GET", "/api/models", None
        if name == "conversations":
            return "GET", "/api/conversations", None
        body = {"content": f"load test {random.randint(0, 10**9)}: say hi", "max_tokens": 16}
        if self.model:
            body["model"] = self.model
        if conversation.get("id"):
            return "POST", f"/api/conversations/{conversation['id']}/messages", body
        return "POST", "/api/chat", body

    async def _worker(self, client: httpx.AsyncClient, deadline: float) -> None:
        conversation: dict = {}
        while time.monotonic() < deadline and (not self.max_requests or self.sent < self.max_requests):
            self.sent += 1
            name = random.choices(self.names, self.weights)[0]
            method, path, body = self._request(name, conversation)
            started = time.perf_counter()
            try:
                response = await client.request(method, path, json=body)
                status = str(response.status_code)
                if name == "chat" and response.status_code == 201:
                    conversation.setdefault("id", response.json().get("conversation_id"))
            except httpx.HTTPError as exc:
                status = type(exc).__name__
                self.failures[status] += 1
            self.stats[name].latencies.append(time.perf_counter() - started)
            self.stats[name].statuses[status] += 1

    async def _progress(self, started: float, deadline: float) -> None:
        while True:
            await asyncio.sleep(1)
            elapsed = time.monotonic() - started
            done = sum(len(s.latencies) for s in self.stats.values())
            errors = sum(n for s in self.stats.values() for st, n in s.statuses.items() if not st.startswith("2"))
            self.out.write(
                f"\r{elapsed:5.1f}s / {deadline - started:.0f}s  {done} requests  {done / elapsed:7.1f} req/s  "
                f"{errors} non-2xx"
            )
            self.out.flush()

    async def run(self) -> dict:
        headers = {"Authorization": f"Bearer {self.key}"} if self.key else {}
        limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
        timeout = httpx.Timeout(30.0, connect=5.0)
        async with httpx.AsyncClient(base_url=self.base_url, headers=headers, limits=limits, timeout=timeout) as client:
            try:
                await client.get("/health")
            except httpx.HTTPError as exc:
                raise CommandError(f"Cannot reach {self.base_url}: {exc}") from None
            started = time.monotonic()
            deadline = started + self.duration
            progress = asyncio.create_task(self._progress(started, deadline))
            try:
                await asyncio.gather(*(self._worker(client, deadline) for _ in range(self.concurrency)))
            finally:
                progress.cancel()
            elapsed = time.monotonic() - started
        self.out.write("\n")
        everything = EndpointStats()
        for stats in self.stats.values():
            everything.latencies += stats.latencies
            everything.statuses.update(stats.statuses)
        return {
            "base_url": self.base_url,
            "concurrency": self.concurrency,
            "duration_s": round(elapsed, 2),
            "total": everything.summary(elapsed),
            "endpoints": {name: self.stats[name].summary(elapsed) for name in self.names},
        }


def render_table(result: dict) -> str:
    head = f"{'endpoint':<14}{'requests':>9}{'rps':>9}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'max ms':>9}  statuses"
    lines = [
        f"{result['base_url']}: {result['concurrency']} clients for {result['duration_s']} s",
        head,
        "-" * len(head),
    ]
    rows = [*result["endpoints"].items(), ("all", result["total"])]
    for name, row in rows:
        cells = [f"{(row[k] if row[k] is not None else '-'):>9}" for k in ("p50_ms", "p95_ms", "p99_ms", "max_ms")]
        statuses = " ".join(f"{status}:{count}" for status, count in row["statuses"].items())
        lines.append(f"{name:<14}{row['requests']:>9}{row['rps']:>9}{''.join(cells)}  {statuses}")
    lines.append(f"error rate (non-2xx): {result['total']['error_rate'] * 100:.2f} %")
    return "\n".join(lines)


class Command(BaseCommand):
    help = "Load-test a running platform with a mix of endpoints; prints RPS, errors and latency percentiles."

    def add_arguments(self, parser):
        parser.add_argument("--base-url", default="http://127.0.0.1:8000")
        parser.add_argument("--key", default="", help="API key (afk_…); without one only public endpoints succeed.")
        parser.add_argument("--concurrency", type=int, default=20)
        parser.add_argument("--duration", type=float, default=30.0, help="Seconds (at most 3600).")
        parser.add_argument("--max-requests", type=int, default=0, help="Stop after this many (0: no limit).")
        parser.add_argument("--mix", default=DEFAULT_MIX, help=f"Weights, e.g. {DEFAULT_MIX}.")
        parser.add_argument("--model", default="", help="Model for chat sends (default: the platform's).")
        parser.add_argument("--json", action="store_true", help="Print the result as JSON.")

    def handle(self, *args, **options):
        if not 1 <= options["concurrency"] <= 1000:
            raise CommandError("--concurrency must be between 1 and 1000.")
        if not 0 < options["duration"] <= 3600:
            raise CommandError("--duration must be between 0 and 3600 seconds.")
        if options["max_requests"] < 0:
            raise CommandError("--max-requests must not be negative.")
        test = LoadTest(
            base_url=options["base_url"],
            key=options["key"],
            concurrency=options["concurrency"],
            duration=options["duration"],
            max_requests=options["max_requests"],
            mix=parse_mix(options["mix"]),
            model=options["model"],
            out=sys.stderr,
        )
        result = asyncio.run(test.run())
        if options["json"]:
            self.stdout.write(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
        else:
            self.stdout.write(render_table(result))
