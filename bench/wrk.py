"""wrk as the HTTP load generator: a C program in its own process (it does not
share the server's interpreter), driven by bench/lua/requests.lua, which
replays prepared requests (one API key per request, rotating) and reports
status codes and latency percentiles as JSON."""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

LUA = Path(__file__).resolve().parent / "lua" / "requests.lua"
WRK = shutil.which("wrk")


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    key: str = ""
    body: str = ""  # JSON, on one line

    def line(self) -> str:
        for value in (self.method, self.path, self.key, self.body):
            if "\t" in value or "\n" in value:
                raise ValueError(f"tabs and newlines cannot be replayed: {value!r}")
        return f"{self.method}\t{self.path}\t{self.key}\t{self.body}"


def write_requests(path: Path, requests: list[Request]) -> Path:
    path.write_text("\n".join(r.line() for r in requests) + "\n")
    return path


@dataclass
class WrkResult:
    requests: int
    seconds: float
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    statuses: dict[str, int] = field(default_factory=dict)
    socket_errors: dict[str, int] = field(default_factory=dict)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def ok(self) -> int:
        return sum(n for code, n in self.statuses.items() if code.startswith("2"))

    @property
    def rejected(self) -> int:
        """Answered 429 (rate limit or quota)."""
        return self.statuses.get("429", 0)

    @property
    def other_errors(self) -> int:
        """Every failure that is not a 429: other non-2xx statuses and socket errors (timeouts included)."""
        bad_statuses = sum(n for code, n in self.statuses.items() if not code.startswith("2") and code != "429")
        return bad_statuses + sum(self.socket_errors.values())


def parse(output: str) -> WrkResult:
    line = next((line for line in output.splitlines() if line.startswith("WRK_JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no result:\n{output[-2000:]}")
    data = json.loads(line.removeprefix("WRK_JSON "))
    latency = data["latency_us"]
    return WrkResult(
        requests=data["requests"],
        seconds=data["duration_us"] / 1e6,
        p50_ms=latency["p50"] / 1000,
        p90_ms=latency["p90"] / 1000,
        p95_ms=latency["p95"] / 1000,
        p99_ms=latency["p99"] / 1000,
        max_ms=latency["max"] / 1000,
        statuses={str(k): int(v) for k, v in data["statuses"].items()},
        socket_errors={k: int(v) for k, v in data["socket_errors"].items() if v},
    )


def run(
    base_url: str,
    requests_file: Path,
    *,
    seconds: float,
    connections: int = 64,
    threads: int = 2,
    timeout: float = 5.0,
) -> WrkResult:
    if WRK is None:
        raise RuntimeError("wrk is not installed (apt-get install wrk)")
    command = [
        WRK,
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        f"--timeout={max(1, round(timeout))}s",
        "-s",
        str(LUA),
        base_url.rstrip("/") + "/",
        "--",
        str(requests_file),
    ]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=seconds + timeout + 30, check=False)
    if finished.returncode != 0:
        raise RuntimeError(f"wrk failed ({finished.returncode}):\n{finished.stdout}\n{finished.stderr}")
    return parse(finished.stdout)
