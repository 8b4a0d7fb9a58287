"""What the platform's processes use, read from /proc (Linux): the process trees
of the servers, their resident memory (RSS and PSS) and their open-file limits."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name, which may contain
    spaces: [1] ppid, [2] process group, [11] utime, [12] stime. None once it exited."""
    try:
        return (PROC / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def _live_pids() -> list[int]:
    return [int(entry.name) for entry in PROC.iterdir() if entry.name.isdigit()]


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for pid in _live_pids():
        fields = _stat_fields(pid)
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(pid)
    return children


def in_process_groups(pgids: set[int]) -> list[int]:
    """Every live process whose process group is one of ``pgids`` (a server started
    in a session of its own leads a group that its workers share)."""
    found = []
    for pid in _live_pids():
        fields = _stat_fields(pid)
        if fields is not None and int(fields[2]) in pgids:
            found.append(pid)
    return found


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


def named(comm: str) -> list[int]:
    """Every live process whose name (``comm``: the program, not its arguments) is ``comm``."""
    return [pid for pid in _live_pids() if name(pid) == comm]


def matching(text: str) -> list[int]:
    """Every live process whose command line contains ``text``."""
    found = []
    for pid in _live_pids():
        with contextlib.suppress(OSError):
            if text.encode() in (PROC / str(pid) / "cmdline").read_bytes().replace(b"\0", b" "):
                found.append(pid)
    return found


def _kb(pid: int, file: str, field: str) -> int:
    """A ``Field:  N kB`` line of /proc/<pid>/<file> (status, smaps_rollup): N, or 0."""
    try:
        for line in (PROC / str(pid) / file).read_text().splitlines():
            if line.startswith(field + ":"):
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
        rss_bytes=sum(_kb(pid, "status", "VmRSS") for pid in pids) * 1024,
        pss_bytes=sum(_kb(pid, "smaps_rollup", "Pss") for pid in pids) * 1024,
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
        fields = _stat_fields(pid)
        if fields is not None:
            total += int(fields[11]) + int(fields[12])
    return total / ticks


def open_sockets(pid: int) -> int:
    """How many sockets a process has open (its descriptors that are sockets)."""
    fd_dir = PROC / str(pid) / "fd"
    count = 0
    try:
        for entry in fd_dir.iterdir():
            with contextlib.suppress(OSError):
                count += os.readlink(entry).startswith("socket:")
    except OSError:
        pass
    return count
