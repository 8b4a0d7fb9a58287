"""ASGI middleware that runs before Django sees a request."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from django.conf import settings

logger = logging.getLogger("agentsflow.errors")

DRAIN_SECONDS = 5.0  # how long the rest of a refused body is read (and thrown away)
DRAIN_LIMITS = 16  # ... and how much of it, in multiples of the body limit

CLOSE_TRY_AGAIN = 1013  # WebSocket close code: Redis or PostgreSQL is down, reconnect later


class SizedBody:
    """Cap request bodies before Django reads them, and give chunked ones a length.

    Django's ASGI handler reads a whole body (to a temporary file) before any
    middleware runs, so BodySizeLimitMiddleware's 413 came only after a declared
    3 MB, or an endless chunked upload, had been read; and DRF reads nothing of a
    body that declares no length, so chunked JSON was neither capped nor parsed.

    Here a body declared over DATA_UPLOAD_MAX_MEMORY_SIZE reaches Django empty,
    and a chunked one is read one byte past the limit at most and reaches Django
    with its length: BodySizeLimitMiddleware then answers the 413 (JSON, security
    headers and all) and every view reads a body that fits. The rest of a refused
    body is read and dropped for a few seconds after the answer, so the client, still
    sending, is not reset before it reads the 413.
    """

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        chunked = any(name == b"transfer-encoding" for name, _ in scope["headers"])
        if not chunked and _declared_length(scope["headers"]) <= limit:
            return await self.app(scope, receive, send)

        body, state = bytearray(), {"more": True}
        while chunked and state["more"] and len(body) <= limit:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            body += message.get("body", b"")
            state["more"] = message.get("more_body", False)
        headers = scope["headers"]
        if chunked:
            del body[limit + 1 :]
            headers = [(name, value) for name, value in headers if name != b"transfer-encoding"]
            headers.append((b"content-length", str(len(body)).encode()))
        pending = [{"type": "http.request", "body": bytes(body), "more_body": False}]

        async def replay():
            if pending:
                return pending.pop()
            while True:  # Django only listens for a disconnect now: drop the body's rest
                message = await receive()
                if message["type"] == "http.disconnect":
                    return message
                state["more"] = message.get("more_body", False)

        await self.app({**scope, "headers": headers}, replay, send)
        if state["more"]:
            await _drain(receive, DRAIN_LIMITS * limit)
        return None


def _declared_length(headers) -> int:
    for name, value in headers:
        if name == b"content-length":
            with contextlib.suppress(ValueError):
                return int(value)
    return 0


async def _drain(receive, most: int) -> None:
    """Read and drop what is left of a body, within DRAIN_SECONDS and ``most`` bytes."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(DRAIN_SECONDS):
            while most > 0:
                message = await receive()
                if message["type"] == "http.disconnect" or not message.get("more_body", False):
                    return
                most -= len(message.get("body", b""))


class WebSocketSendDeadline:
    """Drop a WebSocket client that stops reading.

    uvicorn waits, without limit, for a socket to drain before each send, and its
    keepalive's close waits for the buffer to flush too: a client that stopped reading
    while a long reply streamed kept its socket, its blocked consumer and every event
    queued for it for ever. A send that waits longer than WS_SEND_TIMEOUT seconds
    aborts the connection instead (the server's transport, when it exposes one), the
    consumer hears a disconnect and cleans up, and nothing more is sent to that socket.
    """

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "websocket":
            return await self.app(scope, receive, send)
        dropped = False
        # uvicorn's send waits only while its transport is paused (``writable`` clear):
        # a send that cannot wait needs no timer, and most sends are such (a timeout
        # context per frame was a tenth of the cost of streaming a token).
        writable = getattr(getattr(send, "__self__", None), "writable", None)

        async def send_within_deadline(message) -> None:
            nonlocal dropped
            if dropped:
                return
            if writable is not None and writable.is_set():
                return await send(message)
            try:
                async with asyncio.timeout(settings.WS_SEND_TIMEOUT):
                    await send(message)
            except TimeoutError:
                if dropped:  # another send timed out with this one
                    return
                dropped = True
                logger.warning("websocket client stopped reading for %ss: connection dropped", settings.WS_SEND_TIMEOUT)
                transport = getattr(getattr(send, "__self__", None), "transport", None)
                if transport is not None:
                    transport.abort()

        return await self.app(scope, receive, send_within_deadline)


async def accept_and_close(receive, send, code: int) -> None:
    """Finish a WebSocket handshake only to close the socket with ``code``: a client
    can act on a close code, while a failed handshake is an HTTP 500."""
    if (await receive())["type"] == "websocket.connect":
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close", "code": code})
