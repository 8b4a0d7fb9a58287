"""What the platform's processes use, read from /proc (Linux): the process trees
of the servers, their resident memory (RSS and PSS) and their open-file limits."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name (field 2) may contain spaces; fields after its ")" are fixed.
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    return children


def tree(pid: int) -> list[int]:
    """``pid`` and every process descended from it."""
    children = _children_map()
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        if (PROC / str(current)).exists():
            found.append(current)
        todo.extend(children.get(current, []))
    return found


def _status_kb(pid: int, field: str) -> int:
    try:
        for line in (PROC / str(pid) / "status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _pss_kb(pid: int) -> int:
    try:
        for line in (PROC / str(pid) / "smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def name(pid: int) -> str:
    try:
        return (PROC / str(pid) / "comm").read_text().strip()
    except OSError:
        return "?"


@dataclass
class Memory:
    processes: int
    rss_bytes: int  # sum of resident sets (counts pages shared by forked workers once per process)
    pss_bytes: int  # proportional set size: shared pages split between their sharers

    def as_dict(self) -> dict:
        return {
            "processes": self.processes,
            "rss_mb": round(self.rss_bytes / 2**20, 1),
            "pss_mb": round(self.pss_bytes / 2**20, 1),
        }


def memory(pids: list[int]) -> Memory:
    return Memory(
        processes=len(pids),
        rss_bytes=sum(_status_kb(pid, "VmRSS") for pid in pids) * 1024,
        pss_bytes=sum(_pss_kb(pid) for pid in pids) * 1024,
    )


def open_files_limit(pid: int) -> int | None:
    """The soft RLIMIT_NOFILE of a process."""
    try:
        for line in (PROC / str(pid) / "limits").read_text().splitlines():
            if line.startswith("Max open files"):
                return int(line.split()[3])
    except (OSError, ValueError):
        pass
    return None


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time used so far by ``pids``."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = (PROC / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / ticks
