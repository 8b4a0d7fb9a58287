"""The platform as deployed, for the benchmarks: nginx in front of granian WSGI
(one worker per core, one blocking thread each) for ordinary API traffic and
uvicorn ASGI (two workers) for WebSockets, streams and the model-calling views.

``agentsflow.testing.run_stack`` starts that stack; on a checkout without it,
the two servers are started directly (no nginx) and the clients pick the server
for each path the way nginx would.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from agentsflow import testing
from bench import procs

ASGI_WORKERS = 2

# nginx's routing when agentsflow.serving is not there yet (same patterns).
_FALLBACK_ASGI_PATHS = (
    r"^/ws/",
    r"^/v1/",
    r"^/api/chat$",
    r"^/api/conversations/\d+/messages$",
    r"^/api/messages/\d+/(?:cancel|regenerate|stream)$",
)


def served_by_asgi(path: str) -> bool:
    try:
        from agentsflow.serving import served_by_asgi as routed
    except ImportError:
        return any(re.search(pattern, path.split("?", 1)[0]) for pattern in _FALLBACK_ASGI_PATHS)
    return routed(path.split("?", 1)[0])


@dataclass
class Platform:
    url: str | None  # nginx, when the stack runs behind it
    wsgi_url: str
    asgi_url: str
    wsgi_workers: int
    asgi_workers: int
    roots: dict[str, int] = field(default_factory=dict)  # server name -> pid of its main process
    logs: dict[str, Path] = field(default_factory=dict)

    @property
    def topology(self) -> str:
        servers = (
            f"granian WSGI ({self.wsgi_workers} workers, 1 blocking thread) + "
            f"uvicorn ASGI ({self.asgi_workers} workers)"
        )
        return f"nginx -> {servers}" if self.url else f"{servers}, no nginx (clients route by path)"

    def base_for(self, path: str) -> str:
        """Where a client sends ``path``: nginx, or the server nginx would pick."""
        if self.url:
            return self.url
        return self.asgi_url if served_by_asgi(path) else self.wsgi_url

    def ws_url(self, path: str = "/ws/chat/") -> str:
        return self.base_for(path).replace("http://", "ws://") + path

    def pids(self, *names: str) -> list[int]:
        """Every process of the named servers (all of them by default), workers included."""
        chosen = names or tuple(self.roots)
        return [pid for name in chosen if name in self.roots for pid in procs.tree(self.roots[name])]

    def memory(self) -> procs.Memory:
        return procs.memory(self.pids())

    def memory_by_kind(self) -> dict[str, procs.Memory]:
        """Memory per kind of process: each server's main process ("asgi main")
        apart from the processes it started ("asgi workers")."""
        kinds = {}
        for name, root in self.roots.items():
            children = [pid for pid in procs.tree(root) if pid != root]
            kinds[f"{name} main"] = procs.memory([root])
            kinds[f"{name} workers"] = procs.memory(children)
        return kinds

    def keep_logs(self, directory: Path) -> None:
        """Copy the servers' logs without the access-log lines (one a request) to ``directory``."""
        directory.mkdir(parents=True, exist_ok=True)
        for name, path in self.logs.items():
            if path.exists() and "access" not in name:
                with open(path, errors="replace") as source, open(directory / f"{name}.log", "w") as target:
                    target.writelines(line for line in source if '"logger":"agentsflow.access"' not in line)


def stack_available() -> bool:
    return hasattr(testing, "run_stack") and not getattr(testing, "NGINX_MISSING", True)


@contextlib.contextmanager
def run_platform(
    env: dict[str, str], *, wsgi_workers: int | None = None, checkout: Path = testing.BASE_DIR
) -> Iterator[Platform]:
    """Start the production topology with ``env`` laid over production settings,
    from ``checkout`` (this one by default; an older one to compare with)."""
    wsgi_workers = wsgi_workers or os.cpu_count() or 2
    if stack_available():
        with testing.run_stack(
            env,
            wsgi_workers=wsgi_workers,
            asgi_workers=ASGI_WORKERS,
            # Every per-address limit off: all the load comes from one address, and the
            # figures are the platform's, not nginx's shield.
            nginx={"api_rate": None, "auth_rate": None, "conn_limit": None},
            collectstatic=False,
            checkout=checkout,
        ) as stack:
            yield Platform(
                url=stack.url,
                wsgi_url=stack.wsgi_url,
                asgi_url=stack.asgi_url,
                wsgi_workers=wsgi_workers,
                asgi_workers=ASGI_WORKERS,
                roots={name: process.pid for name, process in stack.processes.items()},
                logs=dict(stack.logs),
            )
        return
    # The directory outlives the servers (they log into it until they stop).
    with tempfile.TemporaryDirectory(prefix="agentsflow-bench-") as tmp, contextlib.ExitStack() as stack:
        directory = Path(tmp)
        servers = {}
        # The settings ops/run-wsgi.sh and ops/run-asgi.sh use: small pools sized to
        # each server's concurrency, one metrics directory per server.
        for name, kind, workers, pool in (
            ("wsgi", "granian-wsgi", wsgi_workers, "2"),
            ("asgi", "uvicorn", ASGI_WORKERS, "8"),
        ):
            metrics_dir = directory / f"prometheus-{name}"
            metrics_dir.mkdir()
            server_env = {
                **env,
                "DB_POOL_MIN_SIZE": "1",
                "DB_POOL_MAX_SIZE": pool,
                "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
            }
            servers[name] = stack.enter_context(
                testing.run_server(
                    server_env,
                    kind=kind,
                    workers=workers,
                    log_path=directory / f"{name}.log",
                    timeout=60,
                    cwd=checkout,
                )
            )
        yield Platform(
            url=None,
            wsgi_url=servers["wsgi"].url,
            asgi_url=servers["asgi"].url,
            wsgi_workers=wsgi_workers,
            asgi_workers=ASGI_WORKERS,
            roots={name: server.process.pid for name, server in servers.items()},
            logs={name: server.log_path for name, server in servers.items()},
        )
