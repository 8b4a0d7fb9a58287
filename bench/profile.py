"""Profiles of the server processes under load, with py-spy (a sampling
profiler in its own process: it reads the workers' memory, the workers run on).

``record`` samples every process of a server (``--subprocesses``) while a load
runs; ``summarise`` turns py-spy's collapsed stacks into where the CPU went: the
share of samples by package of the innermost frame (self time) and the
functions most often on the stack (inclusive time).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections import Counter
from pathlib import Path

PY_SPY = shutil.which("py-spy") or str(Path(__file__).resolve().parent.parent / ".venv" / "bin" / "py-spy")
PROJECT_APPS = ("core", "chat", "analytics", "agentsflow", "bench")
_FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^():]*)(?::\d+)?\)$")


def available() -> bool:
    return Path(PY_SPY).exists()


def start(pid: int, seconds: float, output: Path, *, rate: int = 97) -> subprocess.Popen:
    """Begin sampling ``pid`` and its children for ``seconds`` (collapsed stacks to ``output``)."""
    return subprocess.Popen(
        [
            PY_SPY,
            "record",
            "--pid",
            str(pid),
            "--subprocesses",
            "--nonblocking",  # never pause the workers being measured
            "--duration",
            str(max(1, round(seconds))),
            "--rate",
            str(rate),
            "--format",
            "raw",
            "--output",
            str(output),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen, timeout: float = 60) -> str:
    _, errors = process.communicate(timeout=timeout)
    return "" if process.returncode == 0 else errors[-1000:]


def package_of(path: str) -> str:
    """A short name for where a frame's code lives."""
    if "site-packages/" in path:
        return path.split("site-packages/", 1)[1].split("/", 1)[0].removesuffix(".py")
    match = re.search(r"/lib/python3\.\d+/([^/]+)", path)
    if match:
        return "stdlib:" + match[1].removesuffix(".py")
    parts = Path(path).parts
    for app in PROJECT_APPS:
        if app in parts:
            return f"platform:{app}"
    return path or "?"


def _parse(line: str) -> tuple[list[tuple[str, str]], int] | None:
    stack, _, count = line.rstrip().rpartition(" ")
    if not stack or not count.isdigit():
        return None
    frames = []
    for frame in stack.split(";"):
        match = _FRAME.match(frame)
        if match:
            frames.append((match["function"], match["file"]))
        else:
            frames.append((frame, ""))
    return frames, int(count)


def summarise(path: Path, top: int = 12) -> dict:
    self_by_package: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        parsed = _parse(line)
        if parsed is None:
            continue
        frames, count = parsed
        # py-spy puts "process <pid>:..." and "thread ..." pseudo-frames first with --subprocesses.
        frames = [f for f in frames if f[1]]
        if not frames:
            continue
        total += count
        self_by_package[package_of(frames[-1][1])] += count
        seen = set()
        for function, file in frames:
            name = f"{function} ({_short(file)})"
            if name not in seen:
                seen.add(name)
                inclusive[name] += count
    if not total:
        return {"samples": 0}
    share = lambda n: round(100 * n / total, 1)  # noqa: E731
    return {
        "samples": total,
        "self_by_package": [(name, share(n)) for name, n in self_by_package.most_common(top)],
        "inclusive": [(name, share(n)) for name, n in inclusive.most_common(top * 4) if share(n) < 97][: top * 2],
    }


def _short(file: str) -> str:
    if "site-packages/" in file:
        return file.split("site-packages/", 1)[1]
    match = re.search(r"/lib/python3\.\d+/(.+)$", file)
    if match:
        return match[1]
    for app in PROJECT_APPS:
        marker = f"/{app}/"
        if marker in file:
            return app + "/" + file.split(marker, 1)[1]
    return file
