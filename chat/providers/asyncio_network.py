"""httpcore's network layer on plain asyncio: what the providers' pooled client reads
upstream answers through.

httpcore's default backend goes through anyio, which pays per read for a cancel
scope (the read timeout), exception mapping, and resuming then pausing the
socket's reading (two epoll changes). A model streams one token per read, so
that was most of the cost of reading a reply. Here a protocol collects what
arrives and keeps reading until a high-water mark; a read takes what is there,
or waits for the next piece with one timer for its timeout.

Connections, keep-alive, TLS and HTTP/1.1 stay httpcore's and httpx's: only the
socket under them changes (``pooled_transport``).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections import deque
from collections.abc import Iterable
from typing import Any

import httpcore
import httpx

HIGH_WATER = 256 * 1024  # unread bytes at which the socket stops being read, until half is taken
READ_SIZE_LIMIT = 64 * 1024


class _Collector(asyncio.Protocol):
    """Collects a connection's incoming bytes for ``AsyncioStream.read``."""

    def __init__(self) -> None:
        self.pieces: deque[bytes] = deque()
        self.unread = 0
        self.closed = False  # the peer closed its side, or the connection was lost
        self.error: Exception | None = None
        self.reading_paused = False
        self.transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._write_waiter: asyncio.Future[None] | None = None
        self.writing_paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.pieces.append(data)
        self.unread += len(data)
        if self.unread >= HIGH_WATER and not self.reading_paused:
            self.reading_paused = True
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self.closed = True
        self._wake()
        return False  # let the transport close its side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.error = exc
        self._wake()
        self._wake_writer()

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        self._wake_writer()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _wake_writer(self) -> None:
        if self._write_waiter is not None and not self._write_waiter.done():
            self._write_waiter.set_result(None)

    async def wait_for_data(self, timeout: float | None) -> None:
        self._waiter = asyncio.get_running_loop().create_future()
        await _within(self._waiter, timeout, httpcore.ReadTimeout)

    async def wait_until_writable(self, timeout: float | None) -> None:
        self._write_waiter = asyncio.get_running_loop().create_future()
        await _within(self._write_waiter, timeout, httpcore.WriteTimeout)


async def _within(waiter: asyncio.Future[None], timeout: float | None, error: type[Exception]) -> None:
    """Wait for ``waiter``; raise ``error`` after ``timeout`` seconds (a timer, cheaper than a timeout scope)."""
    timer = None
    if timeout is not None:
        timer = asyncio.get_running_loop().call_later(timeout, _expire, waiter)
    try:
        await waiter
    except TimeoutError:
        raise error(f"no progress within {timeout} s") from None
    finally:
        if timer is not None:
            timer.cancel()


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


class AsyncioStream(httpcore.AsyncNetworkStream):
    def __init__(self, transport: asyncio.Transport, collector: _Collector) -> None:
        self._transport = transport
        self._collector = collector

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        collector = self._collector
        if not collector.pieces and not collector.closed:
            await collector.wait_for_data(timeout)
        if collector.pieces:
            piece = collector.pieces.popleft()
            if len(piece) > max_bytes:
                piece, rest = piece[:max_bytes], piece[max_bytes:]
                collector.pieces.appendleft(rest)
            collector.unread -= len(piece)
            if collector.reading_paused and collector.unread < HIGH_WATER // 2 and not self._transport.is_closing():
                collector.reading_paused = False
                self._transport.resume_reading()
            return piece
        if collector.error is not None:
            raise httpcore.ReadError(str(collector.error) or type(collector.error).__name__)
        return b""  # the peer closed the connection

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        if self._collector.closed or self._transport.is_closing():
            raise httpcore.WriteError("the connection is closed")
        self._transport.write(buffer)
        while self._collector.writing_paused and not self._collector.closed:
            await self._collector.wait_until_writable(timeout)

    async def aclose(self) -> None:
        self._transport.close()

    async def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> AsyncioStream:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                transport = await loop.start_tls(
                    self._transport, self._collector, ssl_context, server_hostname=server_hostname
                )
        except TimeoutError:
            self._transport.close()
            raise httpcore.ConnectTimeout("TLS handshake timed out") from None
        except (OSError, ssl.SSLError) as exc:
            self._transport.close()
            raise httpcore.ConnectError(str(exc)) from exc
        self._collector.transport = transport
        return AsyncioStream(transport, self._collector)

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable":
            # httpcore asks this of an idle pooled connection: readable means the server closed it.
            return bool(self._collector.pieces) or self._collector.closed
        key = {"client_addr": "sockname", "server_addr": "peername"}.get(info, info)
        # asyncio's TLS transport fails these once closed; a closed connection has none.
        if key in ("ssl_object", "sockname", "peername", "socket") and not self._transport.is_closing():
            return self._transport.get_extra_info(key)
        return None


class AsyncioBackend(httpcore.AsyncNetworkBackend):
    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> AsyncioStream:
        loop = asyncio.get_running_loop()
        local = (local_address, 0) if local_address else None
        connect = lambda: loop.create_connection(_Collector, host, port, local_addr=local)  # noqa: E731
        return await self._connect(connect, timeout, socket_options)

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> AsyncioStream:
        loop = asyncio.get_running_loop()
        return await self._connect(lambda: loop.create_unix_connection(_Collector, path), timeout, socket_options)

    async def _connect(self, connect, timeout: float | None, socket_options: Iterable[Any] | None) -> AsyncioStream:
        try:
            async with asyncio.timeout(timeout):
                transport, collector = await connect()
        except TimeoutError:
            raise httpcore.ConnectTimeout(f"no connection within {timeout} s") from None
        except OSError as exc:
            raise httpcore.ConnectError(str(exc) or type(exc).__name__) from exc
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # each small write goes out at once
        for option in socket_options or ():
            sock.setsockopt(*option)
        return AsyncioStream(transport, collector)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


def pooled_transport(limits: httpx.Limits) -> httpx.AsyncHTTPTransport:
    """httpx's own transport (TLS settings, HTTP/1.1, the pool's limits) on ``AsyncioBackend``.

    httpx takes no network backend, so its pool is rebuilt with the same settings
    (httpx and httpcore are pinned; tests/test_providers.py runs every provider
    behaviour through it).
    """
    transport = httpx.AsyncHTTPTransport(limits=limits)
    transport._pool = httpcore.AsyncConnectionPool(
        ssl_context=transport._pool._ssl_context,
        max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections,
        keepalive_expiry=limits.keepalive_expiry,
        http1=True,
        http2=False,
        network_backend=AsyncioBackend(),
    )
    return transport
