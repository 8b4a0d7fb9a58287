"""The replay buffer: every event a resume has not seen, in order, whatever an
outage lost before it."""

import asyncio

import orjson
import pytest

from chat import shared
from core import redis


def _deltas(message_id: int, seqs) -> list[dict]:
    return [{"type": "delta", "seq": n, "message_id": message_id, "conversation_id": 1, "text": f"t{n}"} for n in seqs]


def _seqs(events: list[dict]) -> list[int]:
    return [event["seq"] for event in events]


async def test_a_resume_after_lost_events_gets_every_later_one():
    """Found in review: the buffer was a list read from index ``after_seq`` (index ==
    seq - 1). Appends lost to a Redis outage shifted every later event's index, so a
    resume skipped events, and a follower past the gap saw nothing until the end."""
    reply = 987_654
    await shared.replay_append(reply, _deltas(reply, range(1, 11)))
    # Events 11-15 were lost while Redis was unreachable.
    await shared.replay_append(reply, _deltas(reply, range(16, 21)))
    assert _seqs(await shared.replay_read(reply, 12)) == [16, 17, 18, 19, 20]
    assert _seqs(await shared.replay_read(reply, 20)) == []
    await shared.replay_append(reply, _deltas(reply, [21]))
    assert _seqs(await shared.replay_read(reply, 20)) == [21]
    assert _seqs(shared.replay_read_now(reply)) == [*range(1, 11), *range(16, 22)]


async def test_an_event_appended_twice_is_read_once():
    """A retried append (the first one's reply was lost) must not repeat events."""
    reply = 987_655
    await shared.replay_append(reply, _deltas(reply, [1, 2]))
    await shared.replay_append(reply, _deltas(reply, [2]))
    assert _seqs(await shared.replay_read(reply, 0)) == [1, 2]


# --- the shipper: replay appends and publishes of every reply on a loop, in rounds ------


def _append_and_publish(message_id: int, seqs, channel: str) -> list[list]:
    zadd = ["ZADD", shared.replay_key(message_id)]
    for event in _deltas(message_id, seqs):
        zadd += [event["seq"], orjson.dumps(event)]
    return [zadd, ["EXPIRE", shared.replay_key(message_id), 60], ["PUBLISH", channel, b"packed"]]


@pytest.mark.redis
async def test_replies_handing_in_together_share_one_round_and_all_land():
    shipper = shared.Shipper()
    rounds = []
    original = shipper._round

    async def counted(commands):
        rounds.append(len(commands))
        return await original(commands)

    shipper._round = counted
    replies = range(987_700, 987_710)
    results = await asyncio.gather(
        *(shipper.ship(_append_and_publish(reply, [1, 2, 3], "af-test-shipper")) for reply in replies)
    )
    assert results == [True] * 10
    assert rounds == [30]  # ten replies' three commands each, in one write
    for reply in replies:
        assert _seqs(await shared.replay_read(reply, 1)) == [2, 3]


@pytest.mark.redis
async def test_an_error_reply_fails_its_round_trips_the_breaker_and_the_next_round_starts_clean():
    shipper = shared.Shipper()
    broken = [["ZADD", shared.replay_key(987_720), "not-a-score", b"x"], ["PING"]]
    assert await shipper.ship(broken) is False
    assert redis.breaker.open
    assert await shipper.ship(_append_and_publish(987_721, [1], "af-test-shipper")) is False  # skipped while open
    redis.breaker.reset()
    assert await shipper.ship(_append_and_publish(987_721, [1], "af-test-shipper")) is True
    assert _seqs(await shared.replay_read(987_721, 0)) == [1]


@pytest.mark.redis
async def test_an_unreachable_redis_fails_the_round_at_once(settings):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"
    assert await shared.Shipper().ship([["PING"]]) is False
    assert redis.breaker.open


@pytest.mark.redis
async def test_a_connection_redis_closed_is_replaced_at_once_without_failing_the_round():
    shipper = shared.Shipper()
    assert await shipper.ship(_append_and_publish(987_730, [1], "af-test-shipper")) is True
    connection = shipper._connection
    await connection.send_command("CLIENT", "ID")
    own_id = await connection.read_response()
    # Redis closes the shipper's connection (as when it restarts); only that one: the
    # server may be shared.
    assert await redis.async_client().client_kill_filter(_id=str(own_id)) == 1
    assert await shipper.ship(_append_and_publish(987_730, [2], "af-test-shipper")) is True
    assert not redis.breaker.open
    assert _seqs(await shared.replay_read(987_730, 0)) == [1, 2]


def test_commands_are_packed_as_redis_py_packs_them():
    from redis.connection import Connection

    commands = [
        ["ZADD", "replay:1", 1, b'{"n": "\\n"}', 2, b"\x00\xff"],
        ["EXPIRE", "replay:1", 3600],
        ["PUBLISH", "chän", b""],
        ["SET", "x", 0.25, "EX", -1],
    ]
    assert shared.pack_commands(commands) == b"".join(Connection().pack_commands(commands))
