"""What the benchmark ran on, for the report: cores, memory, CPU model, load,
versions and the commit."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _first(path: str, prefix: str) -> str | None:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(prefix):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def _run(*command: str) -> str:
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=10, cwd=PROJECT_ROOT, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return (result.stdout or result.stderr).strip()


def cpu_model() -> str | None:
    """The CPU's model name from /proc/cpuinfo (None where there is none)."""
    return _first("/proc/cpuinfo", "model name")


def memory_kb() -> int:
    """Total memory in KiB from /proc/meminfo (0 where there is none)."""
    return int((_first("/proc/meminfo", "MemTotal") or "0 kB").split()[0])


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _load_text() -> str:
    return " ".join(f"{x:.2f}" for x in load_average())


def run_started() -> dict:
    """When and where a benchmark runs (``run_ended`` adds the load at its end)."""
    return {
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpu": f"{os.cpu_count()} cores ({cpu_model()})",
        "load_start": _load_text(),
    }


def run_ended(machine: dict) -> None:
    machine["load_end"] = _load_text()


def run_line(command: str, machine: dict) -> str:
    """The report's first line: the command, when, the CPU and the load around the run."""
    return (
        f"`{command}`: {machine['when']}, {machine['cpu']}, "
        f"load average {machine['load_start']} at the start and {machine['load_end']} at the end."
    )


def describe(database_url: str, redis_url: str) -> dict:
    import psycopg
    import redis

    from bench.seed import _conninfo

    with psycopg.connect(_conninfo(database_url)) as conn:
        postgres = conn.execute("SHOW server_version").fetchone()[0]
    redis_version = redis.Redis.from_url(redis_url).info("server").get("redis_version")
    sha = _run("git", "rev-parse", "--short", "HEAD")
    dirty = bool(_run("git", "status", "--porcelain", "--untracked-files=no"))
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "git_sha": sha + ("+dirty" if dirty else ""),
        "git_branch": _run("git", "rev-parse", "--abbrev-ref", "HEAD"),
        "nproc": os.cpu_count(),
        "memory_gb": round(memory_kb() / 2**20, 1),
        "cpu_model": cpu_model() or platform.processor(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "postgres": postgres,
        "redis": redis_version,
        "wrk": _run(shutil.which("wrk") or "wrk", "--version").splitlines()[0][:60] if shutil.which("wrk") else None,
        "nginx": _run("nginx", "-v").removeprefix("nginx version: ") if shutil.which("nginx") else None,
        "load_average_before": load_average(),
    }
