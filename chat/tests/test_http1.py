"""The upstream HTTP/1.1 client (chat/providers/http1.py) against raw servers on real
sockets: the ways an answer's body can be framed, TLS, interim answers, answers that
are not HTTP, and which connections are kept for reuse. The provider's behaviour
over it (retries, timeouts, cancels) is in test_providers.py."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from chat.providers import http1
from chat.providers.base import ChatMessage, CompletionRequest, ProviderFailed
from chat.providers.openai import OpenAIProvider, close_http_client

EVENT = b'data: {"choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": "stop"}]}\n\n'

Answer = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class RawServer:
    """A loopback server that answers each request with ``answer``; counts connections and requests."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.connections = 0
        self.requests: list[bytes] = []
        self.server: asyncio.Server | None = None
        self.handlers: set[asyncio.Task] = set()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.handlers.add(asyncio.current_task())
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(
                    next(line for line in head.split(b"\r\n") if line.startswith(b"content-length")).split(b":")[1]
                )
                self.requests.append(head + await reader.readexactly(length))
                await self.answer(reader, writer)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def start(self, tls: ssl.SSLContext | None = None) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=tls)
        scheme = "https" if tls else "http"
        return f"{scheme}://localhost:{self.server.sockets[0].getsockname()[1]}/v1/chat/completions"

    async def stop(self) -> None:
        self.server.close()
        for handler in self.handlers:
            handler.cancel()
        await asyncio.gather(*self.handlers, return_exceptions=True)
        await self.server.wait_closed()


@pytest.fixture
async def pool() -> AsyncIterator[http1.Pool]:
    pool = http1.Pool()
    yield pool
    await pool.aclose()


async def serve(answer: Answer, tls: ssl.SSLContext | None = None) -> tuple[RawServer, str]:
    server = RawServer(answer)
    return server, await server.start(tls)


def answering(*pieces: bytes, then_close: bool = False) -> Answer:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for piece in pieces:
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(0.01)  # separate reads on the client's side
        if then_close:
            writer.close()
            raise ConnectionError

    return answer


async def body_of(pool: http1.Pool, url: str) -> tuple[http1.Response, bytes]:
    response = await pool.request(
        b"POST", url, {"content-type": "application/json"}, b"{}", connect_timeout=1, read_timeout=2
    )
    return response, await response.read()


SSE_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"


@pytest.mark.parametrize(
    "pieces, close",
    [
        pytest.param([SSE_HEAD + b"content-length: %d\r\n\r\n" % (2 * len(EVENT)), EVENT, EVENT], False, id="length"),
        pytest.param(
            [SSE_HEAD + b"transfer-encoding: chunked\r\n\r\n", b"%x\r\n%s\r\n" % (len(EVENT), EVENT),
             b"%x\r\n%s\r\n0\r\n\r\n" % (len(EVENT), EVENT)],
            False, id="chunked",
        ),
        pytest.param([SSE_HEAD + b"\r\n", EVENT, EVENT], True, id="ended-by-close"),
    ],
)  # fmt: skip
async def test_a_body_framed_any_way_arrives_whole_and_only_complete_ones_are_reused(pool, pieces, close):
    server, url = await serve(answering(*pieces, then_close=close))
    try:
        for _ in range(2):
            response, body = await body_of(pool, url)
            assert (response.status_code, response.headers["content-type"], body) == (
                200,
                "text/event-stream",
                EVENT * 2,
            )
    finally:
        await server.stop()
    assert server.connections == (2 if close else 1)


async def test_the_request_carries_host_length_and_the_given_headers(pool):
    server, url = await serve(answering(SSE_HEAD + b"content-length: 0\r\n\r\n"))
    try:
        await pool.request(
            b"POST", url + "?x=1", {"authorization": "Bearer k"}, b'{"a": 1}', connect_timeout=1, read_timeout=1
        )
    finally:
        await server.stop()
    head, _, body = server.requests[0].partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    port = url.split(":")[2].split("/")[0]
    assert lines[0] == b"POST /v1/chat/completions?x=1 HTTP/1.1"
    assert {b"host: localhost:" + port.encode(), b"authorization: Bearer k", b"content-length: 8"} <= set(lines)
    assert body == b'{"a": 1}'


async def test_an_interim_answer_is_skipped(pool):
    server, url = await serve(answering(b"HTTP/1.1 100 Continue\r\n\r\n", SSE_HEAD + b"content-length: 2\r\n\r\nok"))
    try:
        response, body = await body_of(pool, url)
    finally:
        await server.stop()
    assert (response.status_code, body) == (200, b"ok")


async def test_a_connection_the_upstream_asks_to_close_is_not_reused(pool):
    server, url = await serve(answering(SSE_HEAD + b"connection: close\r\ncontent-length: 2\r\n\r\nok"))
    try:
        for _ in range(2):
            assert (await body_of(pool, url))[1] == b"ok"
    finally:
        await server.stop()
    assert server.connections == 2


async def test_a_response_closed_before_its_end_closes_its_connection(pool):
    server, url = await serve(answering(SSE_HEAD + b"content-length: 100\r\n\r\n", b"x" * 10))
    try:
        response = await pool.request(b"POST", url, {}, b"", connect_timeout=1, read_timeout=1)
        assert await response.receive() == b"x" * 10
        await response.aclose()
        assert (await response.receive()) == b""
        await pool.request(b"POST", url, {}, b"", connect_timeout=1, read_timeout=1)
    finally:
        await server.stop()
    assert server.connections == 2


@pytest.mark.parametrize(
    "answer, message",
    [
        pytest.param(b"SMTP ready\r\n\r\n", "not valid HTTP", id="not-http"),
        pytest.param(SSE_HEAD + b"x-big: " + b"a" * 70_000 + b"\r\n\r\n", "not valid HTTP", id="huge-headers"),
        pytest.param(SSE_HEAD + b"transfer-encoding: chunked\r\n\r\nzz\r\n", "not valid HTTP", id="bad-chunk"),
        pytest.param(
            SSE_HEAD + b"content-length: 100\r\n\r\nshort", "closed the connection mid-answer", id="cut-short"
        ),
        pytest.param(
            b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n",
            "switched protocols",
            id="upgrade",
        ),
    ],
)
async def test_a_broken_answer_is_a_read_error_naming_the_problem(pool, answer, message):
    server, url = await serve(answering(answer, then_close=True))
    try:
        with pytest.raises(http1.ReadError, match=message):
            await body_of(pool, url)
    finally:
        await server.stop()


async def test_a_broken_stream_is_a_provider_error_not_a_crash():
    server, url = await serve(
        answering(SSE_HEAD + b"transfer-encoding: chunked\r\n\r\n", b"5\r\ndata:\r\nzz", then_close=True)
    )
    provider = OpenAIProvider("raw", url.removesuffix("/chat/completions"), retries=0, read_timeout=2)
    request = CompletionRequest(model="m", messages=(ChatMessage("user", "hi"),), max_tokens=8, temperature=0.0)
    try:
        with pytest.raises(ProviderFailed, match="broke off: the upstream's answer is not valid HTTP"):
            async for _ in provider.stream(request):
                pass
    finally:
        await close_http_client()
        await server.stop()


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> tuple[Path, Path]:
    """A self-signed certificate for localhost (Debian's openssl)."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


async def test_https_checks_the_certificate_against_the_trust_store(certificate, monkeypatch):
    cert, key = certificate
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)
    server, url = await serve(answering(SSE_HEAD + b"content-length: 2\r\n\r\nok"), tls=tls)
    try:
        untrusting = http1.Pool()  # the default trust store (certifi) does not know this certificate
        with pytest.raises(http1.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            await body_of(untrusting, url)
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))
        trusting = http1.Pool()
        response, body = await body_of(trusting, url)
        assert (response.status_code, body) == (200, b"ok")
        await body_of(trusting, url)
        await trusting.aclose()
    finally:
        await server.stop()
    # One kept-alive connection for two requests (the refused handshake never reached the handler).
    assert server.connections == 1


async def test_past_its_connections_a_request_waits_then_fails_with_pool_timeout():
    server, url = await serve(answering(SSE_HEAD + b"content-length: 4\r\n\r\n", b"ok"))  # 2 of 4 bytes, then waits
    pool = http1.Pool(max_connections=1)
    try:
        held = await pool.request(b"POST", url, {}, b"", connect_timeout=1, read_timeout=1)
        with pytest.raises(http1.PoolTimeout, match=r"all 1 upstream connections stayed in use for 0\.2 s"):
            await pool.request(b"POST", url, {}, b"", connect_timeout=0.2, read_timeout=1)
        waiting = asyncio.create_task(pool.request(b"POST", url, {}, b"", connect_timeout=1, read_timeout=1))
        await asyncio.sleep(0.05)
        await held.aclose()  # frees the connection: the waiting request goes on
        assert (await waiting).status_code == 200
    finally:
        await pool.aclose()
        await server.stop()
