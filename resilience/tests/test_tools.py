"""The fault injectors themselves (no platform involved): the TCP proxy's modes,
the private Redis, the load loop's bookkeeping."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator

import pytest

from resilience.tools import FaultProxy, LoadResult, PrivateRedis, Sample, percentile, redis_server_binary


@contextlib.contextmanager
def echo_server() -> Iterator[int]:
    """A TCP server on loopback that sends back what it receives."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            threading.Thread(target=echo, args=(conn,), daemon=True).start()

    def echo(conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            while data := conn.recv(65536):
                conn.sendall(data)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join()
        listener.close()


def roundtrip(port: int, payload: bytes = b"ping", timeout: float = 2.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
        conn.sendall(payload)
        return conn.recv(100)


def test_the_proxy_passes_refuses_drops_and_black_holes():
    with echo_server() as target, FaultProxy(target) as proxy:
        assert roundtrip(proxy.port) == b"ping"

        held = socket.create_connection(("127.0.0.1", proxy.port), timeout=2)
        held.sendall(b"x")
        assert held.recv(10) == b"x"
        assert len(proxy.open_client_ports()) == 1
        assert proxy.drop_all() == 1
        with pytest.raises(ConnectionResetError):  # reset, as by a crashed server
            held.sendall(b"y")
            held.recv(10)
        held.close()

        proxy.refuse()
        with pytest.raises(ConnectionRefusedError):
            roundtrip(proxy.port)

        proxy.blackhole()
        with pytest.raises(TimeoutError):
            roundtrip(proxy.port, timeout=0.5)

        proxy.passthrough()
        assert roundtrip(proxy.port, b"again") == b"again"


@pytest.mark.skipif(redis_server_binary() is None, reason="needs redis-server")
def test_a_private_redis_stops_and_starts_on_the_same_port():
    with PrivateRedis() as redis:
        port = redis.port
        redis.client().set("k", "v")
        redis.stop()
        assert not redis.ping()
        redis.start()
        assert redis.port == port and redis.ping()
        assert redis.client().get("k") is None  # no persistence: a restart starts empty


def test_load_results_cut_into_windows_and_percentiles():
    samples = [Sample(at=t, latency=t / 100, status=200 if t < 8 else 503, method="GET", path="/") for t in range(10)]
    result = LoadResult(samples)
    assert result.between(2, 5).count == 3
    assert [s.status for s in result.server_errors] == [503, 503]
    assert percentile(range(1, 101), 0.95) == 95 and percentile([], 0.5) is None
    assert result.p95_ms == pytest.approx(90.0)
