"""A small HTTP/1.1 client for upstream model streams: one request, a streamed body,
kept-alive connections per origin.

httpx read each streamed token through httpcore's connection, h11's pure-Python
chunked parser and four layers of async iterators: a quarter of an ASGI
worker's CPU while it relayed 10,000 events/s (py-spy, bench.stream_figure).
Here the bytes are parsed in C as they arrive (httptools, llhttp: uvicorn's
parser) and ``Response.receive`` hands out the body's pieces as they were sent.

It does only what the OpenAI-compatible provider needs: HTTP and HTTPS, a body
of known length, answers with a Content-Length, chunked or ended by a close,
and no redirects, proxies, cookies or compression (nothing asks for gzip).
"""

from __future__ import annotations

import asyncio
import functools
import math
import os
import socket
import ssl
import time
from collections import deque
from typing import NamedTuple
from urllib.parse import urlsplit

import certifi
import httptools

HIGH_WATER = 256 * 1024  # unread body bytes at which the socket stops being read, until half is taken
MAX_HEADER_BYTES = 64 * 1024
USER_AGENT = b"agentsflow"


class TransportError(Exception):
    """The exchange failed below HTTP: no connection, a broken one, or no bytes in time."""


class ConnectError(TransportError):
    pass


class ConnectTimeout(ConnectError):
    pass


class PoolTimeout(ConnectError):
    """Every connection the pool may open was in use for the whole connect timeout."""


class ReadTimeout(TransportError):
    pass


class ReadError(TransportError):
    """The connection closed or broke before the answer was complete, or the answer was not HTTP."""


class WriteError(TransportError):
    pass


class Origin(NamedTuple):
    scheme: str
    host: str
    port: int
    host_header: bytes

    @classmethod
    @functools.lru_cache(maxsize=256)
    def of(cls, url: str) -> tuple[Origin, bytes]:
        """The origin of an http(s) URL, and the request target (path and query) to ask it for.
        Parsed once per URL: a provider asks for the same one on every request."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        host_header = parts.netloc.rpartition("@")[2]  # as written, so an IPv6 host keeps its brackets
        return cls(parts.scheme, parts.hostname, port, host_header.encode("idna")), target.encode("ascii")


class _Connection(asyncio.Protocol):
    """One connection: the protocol its transport calls, and httptools' parser's callbacks."""

    def __init__(self, origin: Origin) -> None:
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self.closed = False  # the peer closed its side, or the connection was lost
        self.error: Exception | None = None
        self.idle_since = 0.0
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[None] | None = None
        self._deadline = math.inf
        self._timer: asyncio.TimerHandle | None = None
        self._writable: asyncio.Future[None] | None = None
        self._reading_paused = False
        self._writing_paused = False
        self._begin()

    def _begin(self) -> None:
        """State for the next answer on this connection."""
        self.status = 0
        self.headers: dict[str, str] = {}
        self.header_bytes = 0
        self.headers_done = False
        self.complete = False
        self.keep_alive = False
        self.pieces: deque[bytes] = deque()
        self.unread = 0

    # --- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ReadError(f"the upstream's answer is not valid HTTP/1.1: {exc}"))
            return
        except httptools.HttpParserUpgrade:
            self._fail(ReadError("the upstream switched protocols, which nothing asked it to"))
            return
        if self.unread >= HIGH_WATER and not self._reading_paused:
            self._reading_paused = True
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self._ended(None)
        return False  # let the transport close its side too

    def connection_lost(self, exc: Exception | None) -> None:
        self._ended(exc)
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)

    def _ended(self, exc: Exception | None) -> None:
        if self.headers_done and not self.complete and self._ends_at_close():
            self.complete = True  # a body without Content-Length or chunks ends with the connection
        self.closed = True
        self.error = self.error or exc
        self._wake()

    def _fail(self, error: Exception) -> None:
        self.error = error
        self.closed = True
        self.transport.close()
        self._wake()

    def _ends_at_close(self) -> bool:
        return "content-length" not in self.headers and "chunked" not in self.headers.get("transfer-encoding", "")

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    # --- httptools callbacks --------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_bytes += len(name) + len(value)
        if self.header_bytes > MAX_HEADER_BYTES:
            raise ValueError("the upstream's headers are too large")  # httptools turns it into a parser error
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        self.headers[key] = f"{self.headers[key]}, {text}" if key in self.headers else text

    def on_headers_complete(self) -> None:
        self.status = self._parser.get_status_code()
        if self.status >= 200:
            self.headers_done = True
        else:
            self.headers = {}  # 100 Continue and other interim answers: the real one follows

    def on_body(self, body: bytes) -> None:
        self.pieces.append(body)
        self.unread += len(body)

    def on_message_complete(self) -> None:
        if self.headers_done:
            self.complete = True
            self.keep_alive = self._parser.should_keep_alive()  # llhttp forgets it once the callback returns

    # --- used by Pool and Response ----------------------------------------------------------

    async def wait(self, timeout: float | None) -> None:
        """Until something arrives or the connection ends; ReadTimeout after ``timeout`` seconds.

        A stream waits once a token, so a wait only moves the deadline: the
        connection's one timer, when it fires early, sets itself again for it.
        """
        loop = asyncio.get_running_loop()
        self._waiter = loop.create_future()
        self._deadline = loop.time() + timeout if timeout is not None else math.inf
        if self._timer is None and timeout is not None:
            self._timer = loop.call_at(self._deadline, self._check_deadline, loop)
        try:
            await self._waiter
        except TimeoutError:
            raise ReadTimeout(f"no bytes from the upstream within {timeout} s") from None

    def _check_deadline(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        if self._waiter is None or self._waiter.done() or self._deadline == math.inf:
            return  # no wait in progress, or one without a limit: the next timed wait sets a timer
        if loop.time() >= self._deadline:
            self._waiter.set_exception(TimeoutError())
        else:
            self._timer = loop.call_at(self._deadline, self._check_deadline, loop)

    async def write(self, data: bytes, timeout: float | None) -> None:
        if self.closed or self.transport.is_closing():
            raise WriteError("the connection is closed")
        self.transport.write(data)
        while self._writing_paused and not self.closed:
            self._writable = asyncio.get_running_loop().create_future()
            await _within(self._writable, timeout, WriteError(f"the upstream took no bytes for {timeout} s"))

    def take(self) -> bytes:
        piece = self.pieces.popleft()
        self.unread -= len(piece)
        if self._reading_paused and self.unread < HIGH_WATER // 2 and not self.transport.is_closing():
            self._reading_paused = False
            self.transport.resume_reading()
        return piece

    def reusable(self) -> bool:
        return self.complete and self.keep_alive and not self.closed and not self.pieces

    def close(self) -> None:
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.transport is not None:
            self.transport.close()


async def _within(waiter: asyncio.Future[None], timeout: float | None, error: Exception) -> None:
    """Wait for ``waiter``; raise ``error`` after ``timeout`` seconds (one timer, cheaper than a timeout scope)."""
    timer = None
    if timeout is not None:
        timer = asyncio.get_running_loop().call_later(timeout, _expire, waiter)
    try:
        await waiter
    except TimeoutError:
        raise error from None
    finally:
        if timer is not None:
            timer.cancel()


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


class Response:
    """An answer whose head has arrived; its body is read with ``receive``.

    Read to the end, the connection goes back to its pool; closed before that
    (``aclose``), it is closed, so the upstream sees the client go.
    """

    def __init__(self, pool: Pool, connection: _Connection, read_timeout: float | None) -> None:
        self.status_code = connection.status
        self.headers = connection.headers
        self._pool = pool
        self._connection: _Connection | None = connection
        self._read_timeout = read_timeout

    async def receive(self) -> bytes:
        """The next piece of the body as it arrived; b"" once the body is complete.

        ReadTimeout when nothing arrives within the read timeout; ReadError when
        the connection ends before the body does.
        """
        connection = self._connection
        if connection is None:
            return b""
        while True:
            if connection.pieces:
                return connection.take()
            if connection.complete:
                self._connection = None
                self._pool.give_back(connection)
                return b""
            if connection.closed:
                self._connection = None
                self._pool.give_back(connection)
                raise ReadError(str(connection.error or "the upstream closed the connection mid-answer"))
            await connection.wait(self._read_timeout)

    async def read(self, limit: int | None = None) -> bytes:
        """The body (its first ``limit`` bytes or a little more, when given: the rest is not read)."""
        body = bytearray()
        while piece := await self.receive():
            body += piece
            if limit is not None and len(body) >= limit:
                await self.aclose()
                break
        return bytes(body)

    async def aclose(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._pool.give_back(self._connection)
            self._connection = None


class Pool:
    """Kept-alive connections per origin, for one event loop.

    Every stream in flight holds a connection, at most ``max_connections`` at
    once: one more request waits for a free one up to its connect timeout, then
    fails with PoolTimeout. At most ``max_idle`` wait for reuse, each for
    ``idle_expiry`` seconds.
    """

    def __init__(self, max_connections: int = 1000, max_idle: int = 200, idle_expiry: float = 30.0) -> None:
        self.max_connections = max_connections
        self._free = asyncio.Semaphore(max_connections)
        self.max_idle = max_idle
        self.idle_expiry = idle_expiry
        self._idle: dict[Origin, list[_Connection]] = {}
        self._idle_count = 0
        self._ssl_context: ssl.SSLContext | None = None
        self.is_closed = False

    async def request(
        self,
        method: bytes,
        url: str,
        headers: dict[str, str],
        body: bytes,
        *,
        connect_timeout: float | None,
        read_timeout: float | None,
    ) -> Response:
        """Send the request; return once the answer's status and headers have arrived."""
        origin, target = Origin.of(url)
        await self._take_slot(connect_timeout)
        try:
            connection = self._idle_connection(origin) or await self._connect(origin, connect_timeout)
        except BaseException:
            self._free.release()
            raise
        head = [b"%s %s HTTP/1.1\r\nhost: %s\r\nuser-agent: %s\r\n" % (method, target, origin.host_header, USER_AGENT)]
        head += [f"{name}: {value}\r\n".encode("latin-1") for name, value in headers.items()]
        head.append(b"content-length: %d\r\n\r\n" % len(body))
        try:
            await connection.write(b"".join(head) + body, read_timeout)
            while not connection.headers_done:
                if connection.closed:
                    raise ReadError(str(connection.error or "the upstream closed the connection before answering"))
                await connection.wait(read_timeout)
        except BaseException:
            connection.close()
            self.give_back(connection)
            raise
        return Response(self, connection, read_timeout)

    async def _take_slot(self, timeout: float | None) -> None:
        if not self._free.locked():
            await self._free.acquire()  # free: returns at once
            return
        try:
            async with asyncio.timeout(timeout):
                await self._free.acquire()
        except TimeoutError:
            raise PoolTimeout(
                f"all {self.max_connections} upstream connections stayed in use for {timeout} s"
            ) from None

    def give_back(self, connection: _Connection) -> None:
        """A request's connection, once its answer is read or given up: kept for reuse, or closed."""
        self._free.release()
        if self.is_closed or not connection.reusable() or self._idle_count >= self.max_idle:
            connection.close()
            return
        connection._begin()
        connection.idle_since = time.monotonic()
        self._idle.setdefault(connection.origin, []).append(connection)
        self._idle_count += 1

    def _idle_connection(self, origin: Origin) -> _Connection | None:
        idle = self._idle.get(origin)
        now = time.monotonic()
        while idle:
            connection = idle.pop()  # the most recent: the least likely to have been closed by the server
            self._idle_count -= 1
            # Closed while idle (servers drop idle keep-alive connections), or too old to trust.
            if connection.closed or connection.pieces or now - connection.idle_since > self.idle_expiry:
                connection.close()
                continue
            return connection
        return None

    async def _connect(self, origin: Origin, timeout: float | None) -> _Connection:
        loop = asyncio.get_running_loop()
        tls = self._tls_context() if origin.scheme == "https" else None
        try:
            async with asyncio.timeout(timeout):
                transport, connection = await loop.create_connection(
                    lambda: _Connection(origin), origin.host, origin.port, ssl=tls,
                    server_hostname=origin.host if tls else None,
                )  # fmt: skip
        except TimeoutError:
            raise ConnectTimeout(f"no connection within {timeout} s") from None
        except (OSError, ssl.SSLError) as exc:
            raise ConnectError(str(exc) or type(exc).__name__) from exc
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # the request goes out at once
        return connection

    def _tls_context(self) -> ssl.SSLContext:
        if self._ssl_context is None:
            # The trust store httpx and requests use; SSL_CERT_FILE names another (a company CA).
            self._ssl_context = ssl.create_default_context(cafile=os.environ.get("SSL_CERT_FILE") or certifi.where())
        return self._ssl_context

    async def aclose(self) -> None:
        self.is_closed = True
        for idle in self._idle.values():
            for connection in idle:
                connection.close()
        self._idle.clear()
        self._idle_count = 0
