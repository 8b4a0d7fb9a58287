"""What each middleware costs, in process (no network, no server): the median time
of a request through Django's own WSGI and ASGI handlers with the full stack,
and with each middleware left out in turn. Variants are interleaved and repeated,
so a noisy machine shifts them all alike.

    python -m bench.middleware [--requests 2000] [--rounds 5] [--path /health]

The figures are microseconds per request, in process; a server adds its own
costs on top (see bench/servers.py).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import statistics
import sys
import time

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "agentsflow.settings")
os.environ.setdefault("ACCESS_LOG", "false")


# Leaving a middleware out also leaves out those that cannot work without it.
DEPENDENTS = {
    "core.middleware.SessionMiddleware": (
        "core.middleware.AuthenticationMiddleware",
        "core.middleware.MessageMiddleware",
    ),
    "core.middleware.PrometheusBeforeMiddleware": ("core.middleware.PrometheusAfterMiddleware",),
    "core.middleware.PrometheusAfterMiddleware": ("core.middleware.PrometheusBeforeMiddleware",),
}


def _setup():
    import django

    django.setup()
    from django.conf import settings
    from django.test.utils import setup_test_environment

    setup_test_environment()
    settings.ALLOWED_HOSTS = ["*"]
    settings.DEBUG = False
    return settings


def _environ(path: str, headers: dict[str, str]) -> dict:
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "SERVER_NAME": "bench",
        "SERVER_PORT": "80",
        "REMOTE_ADDR": "127.0.0.1",
        "wsgi.input": io.BytesIO(),
        "wsgi.url_scheme": "http",
        "wsgi.errors": sys.stderr,
    }
    for name, value in headers.items():
        environ["HTTP_" + name.upper().replace("-", "_")] = value
    return environ


def time_wsgi(middleware: list[str], path: str, headers: dict, requests: int) -> float:
    from django.conf import settings
    from django.core.handlers.wsgi import WSGIHandler

    settings.MIDDLEWARE = middleware
    handler = WSGIHandler()

    def start_response(status, response_headers, exc_info=None):
        assert status.startswith(("200", "429")), status

    for _ in range(50):  # warm caches and lazy imports
        b"".join(handler(_environ(path, headers), start_response))
    started = time.perf_counter()
    for _ in range(requests):
        b"".join(handler(_environ(path, headers), start_response))
    return (time.perf_counter() - started) / requests * 1e6


def time_asgi(middleware: list[str], path: str, headers: dict, requests: int) -> float:
    from django.conf import settings
    from django.core.handlers.asgi import ASGIHandler

    settings.MIDDLEWARE = middleware
    handler = ASGIHandler()
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "client": ("127.0.0.1", 5000),
        "server": ("bench", 80),
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
    }

    async def one() -> None:
        messages = iter([{"type": "http.request", "body": b"", "more_body": False}])

        async def receive():
            try:
                return next(messages)
            except StopIteration:
                await asyncio.sleep(3600)  # no disconnect while the response is produced

        async def send(message):
            if message["type"] == "http.response.start":
                assert message["status"] in (200, 429), message["status"]

        await handler(scope, receive, send)

    async def run(count: int) -> float:
        for _ in range(50):
            await one()
        started = time.perf_counter()
        for _ in range(count):
            await one()
        return (time.perf_counter() - started) / count * 1e6

    return asyncio.run(run(requests))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--path", default="/health")
    parser.add_argument("--key", default="", help="API key to send (e.g. for --path /api/me).")
    args = parser.parse_args(argv)

    settings = _setup()
    full = list(settings.MIDDLEWARE)
    headers = {"Authorization": f"Bearer {args.key}"} if args.key else {}
    variants = {"(full stack)": full, "(none)": []}
    for path in full:
        left_out = {path, *DEPENDENTS.get(path, ())}
        label = path.rsplit(".", 1)[1] + (" (+ what needs it)" if path in DEPENDENTS else "")
        variants[f"- {label}"] = [m for m in full if m not in left_out]
    results: dict[str, dict[str, list[float]]] = {name: {"wsgi": [], "asgi": []} for name in variants}
    for round_number in range(args.rounds):
        for name, middleware in variants.items():
            results[name]["wsgi"].append(time_wsgi(middleware, args.path, headers, args.requests))
            results[name]["asgi"].append(time_asgi(middleware, args.path, headers, args.requests))
        print(f"round {round_number + 1}/{args.rounds} done", file=sys.stderr)

    base = {mode: statistics.median(results["(full stack)"][mode]) for mode in ("wsgi", "asgi")}
    print(f"GET {args.path}: median µs per request in process ({args.rounds} rounds × {args.requests})")
    print(f"{'variant':<52}{'WSGI µs':>10}{'cost':>9}{'ASGI µs':>10}{'cost':>9}")
    for name in variants:
        row = f"{name:<52}"
        for mode in ("wsgi", "asgi"):
            median = statistics.median(results[name][mode])
            cost = base[mode] - median if name.startswith("-") else None
            row += f"{median:>10.1f}" + (f"{cost:>9.1f}" if cost is not None else f"{'':>9}")
        print(row)
    print("cost = full stack minus the stack without that middleware (what it adds per request)")


if __name__ == "__main__":
    main()
