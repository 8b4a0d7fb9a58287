"""The replay buffer: every event a resume has not seen, in order, whatever an
outage lost before it."""

from chat import shared


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
