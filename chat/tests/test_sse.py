"""SSE framing: events already waiting leave together in one piece, each still a whole event."""

from __future__ import annotations

import asyncio

from chat.sse import MAX_BATCH_EVENTS, EventPump, frame


def _events(count: int) -> list[dict]:
    events = [{"type": "delta", "seq": n, "message_id": 1, "text": f"t{n} "} for n in range(1, count)]
    return [*events, {"type": "done", "seq": count, "message_id": 1, "content": "x"}]


async def _pieces(events: list[dict], *, wait_first: bool) -> list[bytes]:
    async def source():
        for event in events:
            yield event

    pump = EventPump(source())
    if wait_first:
        await pump.first_content()
    await asyncio.sleep(0.01)  # let the pump read everything, as a fast model does
    return [piece async for piece in pump.frames()]


async def test_waiting_events_go_out_in_one_piece_in_order():
    events = _events(50)
    for wait_first in (False, True):
        pieces = await _pieces(events, wait_first=wait_first)
        assert b"".join(pieces) == b"".join(frame(event) for event in events)
        assert len(pieces) <= 2  # the held first event, then the rest together


async def test_a_piece_holds_at_most_max_batch_events():
    events = _events(MAX_BATCH_EVENTS * 2 + 10)
    pieces = await _pieces(events, wait_first=False)
    assert b"".join(pieces) == b"".join(frame(event) for event in events)
    assert max(piece.count(b"\n\n") for piece in pieces) == MAX_BATCH_EVENTS
    assert len(pieces) == 3


async def test_the_end_marker_follows_the_last_event():
    events = _events(3)

    async def source():
        for event in events:
            yield event

    pump = EventPump(source())
    await asyncio.sleep(0.01)
    pieces = [piece async for piece in pump.frames(end=b"data: [DONE]\n\n")]
    assert pieces[-1] == b"data: [DONE]\n\n"
    assert b"".join(pieces[:-1]) == b"".join(frame(event) for event in events)
