"""Server-Sent Events for replies: framing, heartbeats and first-event peeking."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import orjson
from django.http import StreamingHttpResponse

from chat.streaming import TERMINAL

HEARTBEAT_SECONDS = 15.0
MAX_BATCH_EVENTS = 256  # events joined into one write at most (bounds the piece's size)


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
        """The events as SSE bytes. Events that are already waiting go out together
        in one piece: one write (and one ASGI message) per batch, not per token,
        when the model is faster than the connection. Nothing is held back to
        make a batch, so a slow model's tokens still leave one by one at once."""
        try:
            if self._held:
                yield b"".join(map(encode, self._held))
                self._held.clear()
            finished = False
            while not finished:
                if self._queue.empty():  # wait_for costs a task and a timer: only when there is a wait
                    try:
                        event = await asyncio.wait_for(self._queue.get(), HEARTBEAT_SECONDS)
                    except TimeoutError:
                        yield b": keep-alive\n\n"
                        continue
                else:
                    event = self._queue.get_nowait()
                if event is None:
                    break
                batch = [encode(event)]
                while not self._queue.empty() and len(batch) < MAX_BATCH_EVENTS:
                    event = self._queue.get_nowait()
                    if event is None:
                        finished = True
                        break
                    batch.append(encode(event))
                yield b"".join(batch)
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
