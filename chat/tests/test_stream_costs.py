"""What keeps the per-token path cheap and fair (bench/stream_overhead.py measures it):
a fast upstream does not hold the event loop for a whole reply, and WebSocket
frames are the events as encoded once for the replay buffer."""

from __future__ import annotations

import asyncio

import orjson
import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer

from bench.fake_upstream import run_fake_upstream
from chat import registry, services, shared, streaming
from chat.models import Message
from chat.providers import get_provider
from chat.providers.base import ChatMessage
from chat.tests.test_websocket import connect, receive, until_final

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(scope="module")
def fast_upstream():
    """An upstream in a process of its own: it writes while we read, so data piles up
    in our socket and reading it never waits (the in-process fake shares our GIL)."""
    with run_fake_upstream(separate_process=True) as base_url:
        yield base_url


@pytest.fixture
def burst_model(providers, settings, make_model, fast_upstream):
    settings.MODEL_PROVIDERS = {**providers, "separate": {**providers["fake"], "base_url": fast_upstream}}
    return make_model("burst", "tokens-2000", provider="separate", max_output_tokens=2000)


def _plan(user, model_name: str) -> services.SendPlan:
    model = registry.usable_model(model_name, tier=user.tier)
    return services.completion_prepare(
        user=user,
        messages=[ChatMessage("user", "go")],
        model=model,
        count_tokens=get_provider(model.provider).count_tokens,
        api_key_id=None,
        temperature=None,
        max_tokens=None,
    )


async def test_a_listener_runs_while_a_fast_upstream_is_still_sending(chat_client, burst_model):
    """The upstream sends 2,000 tokens as fast as it can, so reading it never has to
    wait; the listener must still get its first token long before the last one is read."""
    plan = await sync_to_async(_plan)(chat_client.user, "burst")
    generation = streaming.start(plan)
    queue = generation.subscribe()
    while (event := await queue.get())["type"] != "delta":
        pass
    seen_at_first_delta = generation.seq
    while event["type"] not in streaming.TERMINAL:
        event = await queue.get()
    assert event["type"] == "done" and event["usage"]["completion_tokens"] == 2000
    # start + the first delta + at most one burst between two yields
    assert seen_at_first_delta <= 2 + streaming.YIELD_EVERY_CHUNKS


async def test_socket_frames_are_the_replay_buffer_entries_byte_for_byte(chat_client, echo_model):
    ws = await connect(chat_client.key)
    await ws.send_json_to({"type": "send", "content": "one two three four five", "model": "echo"})
    accepted = await receive(ws)
    frames = []
    while True:
        raw = await ws.receive_from(timeout=5)
        frames.append(raw.encode())
        if orjson.loads(raw)["type"] in streaming.TERMINAL:
            break
    stored = await shared.store().events_after(shared.replay_key(accepted["message_id"]), 0)
    assert frames == stored
    assert [orjson.loads(f)["seq"] for f in frames] == list(range(1, len(frames) + 1))
    await ws.disconnect()


async def test_a_resumed_socket_gets_plain_events_after_packed_ones(chat_client, echo_model):
    """Replays (lists of dicts) and live batches (packed bytes) share the consumer's dedupe."""
    ws = await connect(chat_client.key)
    await ws.send_json_to({"type": "send", "content": "alpha beta gamma", "model": "echo"})
    accepted = await receive(ws)
    events = await until_final(ws, accepted["message_id"])
    await ws.send_json_to({"type": "resume", "message_id": accepted["message_id"], "last_seq": 2})
    replayed = await until_final(ws, accepted["message_id"])
    assert [e["seq"] for e in replayed] == [e["seq"] for e in events[2:]]
    await ws.disconnect()


async def test_messages_reach_the_consumer_without_a_hop_to_the_sync_thread(chat_client, echo_model, monkeypatch):
    """Channels closes stale database connections (in the sync thread) before each
    message it dispatches; the consumer skips that for every message (frames from the
    client and reply events alike): its handlers' database work gives connections back
    itself."""
    import channels.consumer

    hops = []
    original = channels.consumer.aclose_old_connections

    async def counted():
        hops.append(1)
        await original()

    monkeypatch.setattr(channels.consumer, "aclose_old_connections", counted)
    ws = await connect(chat_client.key)
    await ws.send_json_to({"type": "send", "content": "a b c d e f g h", "model": "echo"})
    accepted = await receive(ws)
    events = await until_final(ws, accepted["message_id"])
    await ws.send_json_to({"type": "subscribe", "conversation_id": accepted["conversation_id"]})
    assert (await receive(ws))["type"] == "subscribed"
    assert events[-1]["type"] == "done"
    assert hops == []  # none for the connect, the frames or the reply events
    await ws.disconnect()


def _slow_replay(monkeypatch, delay: float, *, stall_after: int | None = None) -> None:
    """Make each replay-buffer write take ``delay`` (or never end after ``stall_after`` writes),
    as a loaded Redis does; the publisher waits for it before the channel group send
    (or with Redis, publishes in the same pipeline)."""
    writes = []

    def slowed(original):
        async def slow(*args):
            writes.append(1)
            await asyncio.sleep(3600 if stall_after is not None and len(writes) > stall_after else delay)
            return await original(*args)

        return slow

    monkeypatch.setattr(shared, "replay_append_encoded", slowed(shared.replay_append_encoded))
    monkeypatch.setattr(shared, "replay_append_and_publish", slowed(shared.replay_append_and_publish))


async def test_a_publisher_behind_the_model_still_ships_the_end(chat_client, echo_model, monkeypatch):
    """Publishing takes longer in all than PUBLISH_STALL_SECONDS but keeps moving
    (each write 0.25 s: the start is still in flight when the reply ends, and the
    rest needs a write of its own): the socket must still get every event."""
    monkeypatch.setattr(streaming, "PUBLISH_STALL_SECONDS", 0.3)
    _slow_replay(monkeypatch, 0.25)
    ws = await connect(chat_client.key)
    await ws.send_json_to({"type": "send", "content": "late but whole", "model": "echo"})
    accepted = await receive(ws)
    events = await until_final(ws, accepted["message_id"])
    assert events[-1]["type"] == "done" and events[-1]["content"] == "late but whole"
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    await ws.disconnect()


async def test_a_stalled_publisher_is_given_up_and_the_reply_still_stored(chat_client, echo_model, monkeypatch, caplog):
    monkeypatch.setattr(streaming, "PUBLISH_STALL_SECONDS", 0.2)
    _slow_replay(monkeypatch, 0.0, stall_after=1)
    plan = await sync_to_async(_plan)(chat_client.user, "echo")
    generation = streaming.start(plan)
    await asyncio.wait_for(generation.task, 5)
    assert generation.final["type"] == "done"
    assert "publishing stalled" in caplog.text
    reply = await Message.objects.aget(pk=plan.assistant_message_id)
    assert reply.status == Message.Status.COMPLETE and reply.content == "go"


@pytest.mark.redis
async def test_with_redis_a_batch_is_published_in_the_replay_append_pipeline(chat_client, echo_model, monkeypatch):
    """One round trip per batch: the channel layer's group_send is not used while Redis
    takes the pipeline, and the socket still gets every event once, in order."""
    layer = get_channel_layer()
    group_sends = []

    async def counted(group, message):
        group_sends.append(group)

    monkeypatch.setattr(layer._get_layer(), "group_send", counted)
    ws = await connect(chat_client.key)
    await ws.send_json_to({"type": "send", "content": "one two three four five", "model": "echo"})
    accepted = await receive(ws)
    events = await until_final(ws, accepted["message_id"])
    assert events[-1]["type"] == "done" and events[-1]["content"] == "one two three four five"
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert group_sends == []
    await ws.disconnect()


@pytest.mark.redis
async def test_when_the_pipeline_fails_the_batch_still_goes_out_through_the_channel_layer(
    chat_client, echo_model, monkeypatch
):
    async def refused(*args):
        return False

    monkeypatch.setattr(shared, "replay_append_and_publish", refused)
    ws = await connect(chat_client.key)
    await ws.send_json_to({"type": "send", "content": "still delivered", "model": "echo"})
    accepted = await receive(ws)
    events = await until_final(ws, accepted["message_id"])
    assert events[-1]["type"] == "done" and events[-1]["content"] == "still delivered"
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    await ws.disconnect()


@pytest.fixture
def slow_model(make_model):
    return make_model("slow", "tps-20+tokens-200", max_output_tokens=200)


@pytest.mark.redis
async def test_one_check_watches_every_reply_of_the_process_and_stops_the_one_cancelled_elsewhere(
    chat_client, slow_model, monkeypatch
):
    """Cancel requests from another process are read for all running replies at once
    (one round trip a check, not one per reply); the one named stops, the others go on."""
    checks = []
    original = shared.cancels_requested

    async def counted(message_ids):
        checks.append(sorted(message_ids))
        return await original(message_ids)

    monkeypatch.setattr(shared, "cancels_requested", counted)
    generations = [streaming.start(await sync_to_async(_plan)(chat_client.user, "slow")) for _ in range(3)]
    ids = sorted(g.message_id for g in generations)
    queues = [g.subscribe() for g in generations]  # listeners, so the grace period never ends them
    await shared.request_cancel(generations[1].message_id)  # as another process does
    await asyncio.wait_for(generations[1].task, 5)
    assert generations[1].final["status"] == Message.Status.CANCELLED
    assert generations[1].final["reason"] == streaming.USER_CANCEL
    assert not generations[0].task.done() and not generations[2].task.done()
    assert ids in checks  # the three in one check
    for generation, queue in zip(generations, queues, strict=True):
        generation.unsubscribe(queue)


async def test_a_running_reply_is_marked_alive_at_once(chat_client, slow_model):
    generation = streaming.start(await sync_to_async(_plan)(chat_client.user, "slow"))
    queue = generation.subscribe()

    async def marked() -> None:
        while not await shared.is_alive(generation.message_id):
            await asyncio.sleep(0.01)

    await asyncio.wait_for(marked(), 5)
    assert not generation.task.done()
    generation.unsubscribe(queue)
