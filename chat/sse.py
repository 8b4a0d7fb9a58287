"""Server-Sent Events for replies: framing, heartbeats and first-event peeking."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import orjson
from django.http import StreamingHttpResponse

from chat.streaming import TERMINAL

HEARTBEAT_SECONDS = 15.0


def frame(event: dict) -> bytes:
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (event["seq"], event["type"].encode(), orjson.dumps(event))


class EventPump:
    """Reads an event iterator in a task of its own, so the response can wait for
    events with a heartbeat timeout without cancelling the iterator itself."""

    def __init__(self, events: AsyncIterator[dict]) -> None:
        self._events = events
        self._queue: asyncio.Queue[dict | None] = asyncio.Queue()
        self._held: list[dict] = []
        self._task = asyncio.create_task(self._pump())

    async def _pump(self) -> None:
        try:
            async for event in self._events:
                self._queue.put_nowait(event)
        finally:
            self._queue.put_nowait(None)
            with contextlib.suppress(Exception):
                await self._events.aclose()

    async def first_content(self) -> dict | None:
        """Hold events until the first one that carries text or ends the reply, and return it.

        This lets a streaming request still answer a plain JSON error (502/503/504)
        when the model fails before producing anything.
        """
        while True:
            event = await self._queue.get()
            if event is None:
                self._queue.put_nowait(None)
                return None
            self._held.append(event)
            if event["type"] == "delta" or event["type"] in TERMINAL:
                return event

    async def frames(self, encode: Callable[[dict], bytes] = frame, end: bytes = b"") -> AsyncIterator[bytes]:
        try:
            for event in self._held:
                yield encode(event)
            self._held.clear()
            while True:
                try:
                    event = await asyncio.wait_for(self._queue.get(), HEARTBEAT_SECONDS)
                except TimeoutError:
                    yield b": keep-alive\n\n"
                    continue
                if event is None:
                    break
                yield encode(event)
            if end:
                yield end
        finally:
            self.close()

    def close(self) -> None:
        self._task.cancel()


def sse_response(body: AsyncIterator[bytes]) -> StreamingHttpResponse:
    response = StreamingHttpResponse(body, content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"  # nginx: pass each event on at once
    return response
