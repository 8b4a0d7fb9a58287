"""The WebSocket chat protocol (docs/streaming.md), through the whole ASGI application."""

from __future__ import annotations

import asyncio

import orjson
import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from redis.exceptions import ConnectionError as RedisConnectionError

from agentsflow.asgi import application
from chat import shared, streaming
from chat.models import Conversation, Message

pytestmark = pytest.mark.django_db(transaction=True)


def socket(key: str | None = None, origin: str | None = None, extra: list | None = None) -> WebsocketCommunicator:
    headers = list(extra or [])
    if key:
        headers.append((b"authorization", f"Bearer {key}".encode()))
    if origin:
        headers.append((b"origin", origin.encode()))
    return WebsocketCommunicator(application, "/ws/chat/", headers=headers)


async def connect(key: str) -> WebsocketCommunicator:
    communicator = socket(key)
    connected, _ = await communicator.connect()
    assert connected
    assert (await receive(communicator))["type"] == "ready"
    return communicator


async def receive(communicator: WebsocketCommunicator, timeout: float = 5) -> dict:
    return orjson.loads(await communicator.receive_from(timeout=timeout))


async def until_final(communicator: WebsocketCommunicator, message_id: int | None = None) -> list[dict]:
    events = []
    while True:
        event = await receive(communicator)
        events.append(event)
        if (
            event["type"] in ("done", "error")
            and event.get("seq")
            and (message_id is None or event["message_id"] == message_id)
        ):
            return events


async def test_send_streams_the_reply_and_stores_it(chat_client, echo_model):
    ws = await connect(chat_client.key)
    await ws.send_json_to({"type": "send", "content": "over the socket", "model": "echo", "client_id": "c-1"})
    accepted = await receive(ws)
    assert accepted["type"] == "accepted" and accepted["client_id"] == "c-1"
    events = await until_final(ws)
    assert events[0]["type"] == "start" and events[-1]["type"] == "done"
    assert "".join(e["text"] for e in events if e["type"] == "delta") == "over the socket"
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    reply = await sync_to_async(Message.objects.get)(pk=accepted["message_id"])
    assert reply.status == "complete" and reply.content == "over the socket"
    await ws.disconnect()


async def test_unauthenticated_socket_is_closed_with_4401(transactional_db):
    communicator = socket()
    communicator.scope["headers"].append((b"origin", b"http://localhost"))
    connected, _ = await communicator.connect()
    assert connected
    assert await communicator.receive_output(timeout=2) == {"type": "websocket.close", "code": 4401}


async def test_invalid_key_is_closed_with_4401(transactional_db):
    communicator = socket("afk_not-a-real-key")
    await communicator.connect()
    assert (await communicator.receive_output(timeout=2))["code"] == 4401


async def test_foreign_origin_is_refused_even_with_a_key(chat_client):
    communicator = socket(chat_client.key, origin="https://evil.example")
    connected, _ = await communicator.connect()
    assert not connected


async def test_cookie_session_needs_an_origin_of_ours(chat_client):
    from django.test import Client

    client = Client()
    await sync_to_async(client.force_login)(chat_client.user)
    cookie = (b"cookie", f"sessionid={client.cookies['sessionid'].value}".encode())
    without_origin = WebsocketCommunicator(application, "/ws/chat/", headers=[cookie])
    assert (await without_origin.connect())[0] is False
    with_origin = WebsocketCommunicator(application, "/ws/chat/", headers=[cookie, (b"origin", b"http://localhost")])
    assert (await with_origin.connect())[0] is True
    assert (await receive(with_origin))["user"]["email"] == chat_client.user.email
    await with_origin.disconnect()


async def test_malformed_and_unknown_messages_get_errors_and_the_socket_stays_open(chat_client, echo_model):
    ws = await connect(chat_client.key)
    await ws.send_to(text_data="{not json")
    assert (await receive(ws))["code"] == "parse_error"
    await ws.send_to(text_data="[1, 2]")
    assert (await receive(ws))["code"] == "parse_error"
    await ws.send_json_to({"type": "teleport"})
    assert (await receive(ws))["code"] == "unknown_type"
    await ws.send_json_to({"type": "send", "content": "  "})
    error = await receive(ws)
    assert error["code"] == "invalid" and "content" in error["details"]
    await ws.send_json_to({"type": "ping"})
    assert (await receive(ws))["type"] == "pong"
    await ws.disconnect()


async def test_message_over_the_limit_is_an_error_event(chat_client, echo_model, settings):
    settings.CHAT_MAX_MESSAGE_CHARS = 10
    ws = await connect(chat_client.key)
    await ws.send_json_to({"type": "send", "content": "x" * 11})
    assert (await receive(ws))["code"] == "message_too_long"
    assert not await sync_to_async(Message.objects.exists)()
    await ws.disconnect()


async def test_frame_over_the_size_limit_closes_1009(chat_client, settings):
    settings.WS_MAX_MESSAGE_BYTES = 2048
    ws = await connect(chat_client.key)
    await ws.send_to(text_data='{"type":"send","content":"' + "x" * 4096 + '"}')
    assert (await ws.receive_output(timeout=2))["code"] == 1009


async def test_binary_frames_close_1003(chat_client):
    ws = await connect(chat_client.key)
    await ws.send_to(bytes_data=b"\x00\x01")
    assert (await ws.receive_output(timeout=2))["code"] == 1003


async def test_another_users_conversation_closes_4404_and_stores_nothing(chat_client, echo_model, make_user):
    other = await sync_to_async(make_user)()
    theirs = await sync_to_async(Conversation.objects.create)(user=other, model_name="echo")
    for message in (
        {"type": "send", "content": "hi", "conversation_id": theirs.pk},
        {"type": "subscribe", "conversation_id": theirs.pk},
        {"type": "resume", "message_id": 999_999, "last_seq": 0},
    ):
        ws = await connect(chat_client.key)
        await ws.send_json_to(message)
        assert (await receive(ws))["code"] == "not_found"
        assert (await ws.receive_output(timeout=2))["code"] == 4404
    assert not await sync_to_async(Message.objects.exists)()


async def test_every_socket_on_a_conversation_sees_the_same_stream(chat_client, echo_model):
    first = await connect(chat_client.key)
    await first.send_json_to({"type": "send", "content": "warm up", "model": "echo"})
    accepted = await receive(first)
    await until_final(first)
    second = await connect(chat_client.key)
    await second.send_json_to({"type": "subscribe", "conversation_id": accepted["conversation_id"]})
    assert (await receive(second))["type"] == "subscribed"
    await first.send_json_to(
        {"type": "send", "content": "for both tabs", "conversation_id": accepted["conversation_id"]}
    )
    reply_id = (await receive(first))["message_id"]
    seen_first, seen_second = await asyncio.gather(until_final(first, reply_id), until_final(second, reply_id))
    assert [e["seq"] for e in seen_first] == [e["seq"] for e in seen_second]
    assert seen_second[-1]["content"] == "for both tabs"
    await first.disconnect()
    await second.disconnect()


async def test_resume_replays_missed_events_then_goes_live(chat_client, make_model):
    await sync_to_async(make_model)("steady", "tokens-40+tps-100")
    ws = await connect(chat_client.key)
    await ws.send_json_to({"type": "send", "content": "go", "model": "steady"})
    reply_id = (await receive(ws))["message_id"]
    head = [await receive(ws) for _ in range(5)]
    await ws.disconnect()  # the tab loses its connection
    await asyncio.sleep(0.1)
    again = await connect(chat_client.key)
    await again.send_json_to({"type": "resume", "message_id": reply_id, "last_seq": head[-1]["seq"]})
    tail = await until_final(again, reply_id)
    seqs = [e["seq"] for e in head + tail]
    assert seqs == list(range(1, len(seqs) + 1))
    assert "".join(e["text"] for e in head + tail if e["type"] == "delta") == tail[-1]["content"]
    await again.disconnect()


async def test_cancel_over_the_socket(chat_client, make_model):
    await sync_to_async(make_model)("slowtalker", "tokens-200+tps-20")
    ws = await connect(chat_client.key)
    await ws.send_json_to({"type": "send", "content": "go", "model": "slowtalker"})
    reply_id = (await receive(ws))["message_id"]
    await receive(ws)  # start
    await ws.send_json_to({"type": "cancel", "message_id": reply_id})
    final = (await until_final(ws, reply_id))[-1]
    assert final["type"] == "done" and final["status"] == "cancelled"
    reply = await sync_to_async(Message.objects.get)(pk=reply_id)
    assert reply.status == "cancelled"
    await ws.disconnect()


async def test_regenerate_over_the_socket(chat_client, echo_model):
    ws = await connect(chat_client.key)
    await ws.send_json_to({"type": "send", "content": "twice", "model": "echo"})
    first_id = (await receive(ws))["message_id"]
    await until_final(ws, first_id)
    await ws.send_json_to({"type": "regenerate", "message_id": first_id})
    accepted = await receive(ws)
    assert accepted["type"] == "accepted" and accepted["message_id"] != first_id
    assert (await until_final(ws, accepted["message_id"]))[-1]["content"] == "twice"
    await ws.disconnect()


async def test_a_message_flood_is_throttled_then_closed_1008(chat_client):
    ws = await connect(chat_client.key)
    throttled = 0
    for _ in range(200):
        await ws.send_json_to({"type": "ping"})
    while True:
        output = await ws.receive_output(timeout=10)  # a wait, not a speed check: loaded machines are slow
        if output["type"] == "websocket.close":
            assert output["code"] == 1008
            break
        throttled += orjson.loads(output["text"]).get("code") == "throttled"
    assert throttled > 0


async def test_key_without_chat_scope_is_closed(transactional_db, make_user):
    from core.services import api_key_issue

    user = await sync_to_async(make_user)()
    _, reader = await sync_to_async(api_key_issue)(user=user, name="r", scopes=["conversations:read"])
    communicator = socket(reader)
    await communicator.connect()
    assert (await receive(communicator))["code"] == "permission_denied"
    assert (await communicator.receive_output(timeout=2))["code"] == 4401


@pytest.mark.redis
async def test_a_socket_is_told_to_come_back_later_when_the_channel_layer_is_down(chat_client, settings):
    """Found by resilience/tests/test_faults.py (Redis stopped): the handshake failed with
    an HTTP 500 (and sockets already open waited for ever); now: close 1013, try again
    later, when the socket first needs the channel layer (a handshake does not)."""
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": {"hosts": [{"address": "redis://127.0.0.1:1/0", "socket_connect_timeout": 0.2}]},
        }
    }
    conversation = await sync_to_async(Conversation.objects.create)(user=chat_client.user, model_name="echo")
    communicator = await connect(chat_client.key)
    await communicator.send_json_to({"type": "subscribe", "conversation_id": conversation.pk})
    assert await communicator.receive_output(timeout=5) == {"type": "websocket.close", "code": 1013}


async def test_a_channel_whose_first_subscription_fails_on_a_stale_connection_is_retried(chat_client):
    """After a Redis restart the layer's old connection fails one command: the
    socket's first join tries once more instead of closing 1013."""
    conversation = await sync_to_async(Conversation.objects.create)(user=chat_client.user, model_name="echo")
    layer = get_channel_layer()
    real_new_channel, failures = layer.new_channel, [RedisConnectionError("Connection closed by server.")]

    async def new_channel(*args, **kwargs):
        if failures:
            raise failures.pop()
        return await real_new_channel(*args, **kwargs)

    layer.new_channel = new_channel
    try:
        communicator = await connect(chat_client.key)
        await communicator.send_json_to({"type": "subscribe", "conversation_id": conversation.pk})
        assert (await receive(communicator))["type"] == "subscribed"
        assert failures == []
        await communicator.disconnect()
    finally:
        del layer.new_channel


async def test_an_idle_socket_opens_no_channel_until_it_joins_a_conversation(chat_client):
    """The channel layer's channel (a subscription, a queue and a receiving task a
    socket) is opened by the first subscribe, send or resume, not by the handshake."""
    conversation = await sync_to_async(Conversation.objects.create)(user=chat_client.user, model_name="echo")
    layer = get_channel_layer()
    opened = []
    real_new_channel = layer.new_channel

    async def new_channel(*args, **kwargs):
        opened.append(await real_new_channel(*args, **kwargs))
        return opened[-1]

    layer.new_channel = new_channel
    try:
        communicator = await connect(chat_client.key)
        await communicator.send_json_to({"type": "ping"})
        assert (await receive(communicator))["type"] == "pong"
        assert opened == []
        for _ in range(2):
            await communicator.send_json_to({"type": "subscribe", "conversation_id": conversation.pk})
            assert (await receive(communicator))["type"] == "subscribed"
        assert len(opened) == 1
        await communicator.disconnect()
    finally:
        del layer.new_channel


def _deltas(conversation_id: int, message_id: int, seqs) -> list[dict]:
    return [
        {"type": "delta", "seq": seq, "message_id": message_id, "conversation_id": conversation_id, "text": f"{seq} "}
        for seq in seqs
    ]


async def _group_send_packed(conversation_id: int, events: list[dict]) -> None:
    packed = b"\n".join(orjson.dumps(event) for event in events)
    message = {"type": "chat.events", "packed": packed}
    await get_channel_layer().group_send(streaming.conversation_group(conversation_id), message)


async def test_events_a_socket_missed_are_read_from_the_replay_buffer_and_late_copies_dropped(chat_client):
    """A generation in another process publishes only once it has seen this process
    listening, and an outage may lose a batch: a socket that sees a gap in a reply's
    events reads what it missed from the replay buffer first. Copies that arrive
    after the reply's end (Redis's echo of a batch delivered here) are dropped."""
    conversation = await sync_to_async(Conversation.objects.create)(user=chat_client.user, model_name="echo")
    ws = await connect(chat_client.key)
    await ws.send_json_to({"type": "subscribe", "conversation_id": conversation.pk})
    assert (await receive(ws))["type"] == "subscribed"
    message_id = 987_654
    events = _deltas(conversation.pk, message_id, range(1, 6))
    events.append({"type": "done", "seq": 6, "message_id": message_id, "conversation_id": conversation.pk})
    await shared.replay_append(message_id, events)

    await _group_send_packed(conversation.pk, events[:1])  # seq 1
    await _group_send_packed(conversation.pk, events[4:])  # seq 5 and the end: 2-4 were lost
    await _group_send_packed(conversation.pk, events[2:4])  # late copies of 3 and 4

    seen = [await receive(ws) for _ in range(6)]
    assert [event["seq"] for event in seen] == [1, 2, 3, 4, 5, 6]
    assert await ws.receive_nothing(timeout=0.3)
    await ws.disconnect()


async def test_a_socket_leaves_the_local_lane_when_it_unsubscribes_or_closes(chat_client):
    """Generations hand their batches straight to this process's sockets in the
    group: one that left the conversation, or closed, is no longer among them."""
    conversation = await sync_to_async(Conversation.objects.create)(user=chat_client.user, model_name="echo")
    group = streaming.conversation_group(conversation.pk)
    ws = await connect(chat_client.key)
    other = await connect(chat_client.key)
    for communicator in (ws, other):
        await communicator.send_json_to({"type": "subscribe", "conversation_id": conversation.pk})
        assert (await receive(communicator))["type"] == "subscribed"
    assert len(streaming._local_sockets()[group]) == 2

    await ws.send_json_to({"type": "unsubscribe", "conversation_id": conversation.pk})
    await ws.send_json_to({"type": "ping"})
    assert (await receive(ws))["type"] == "pong"
    assert len(streaming._local_sockets()[group]) == 1
    await other.disconnect()
    assert group not in streaming._local_sockets()

    await ws.send_json_to({"type": "subscribe", "conversation_id": conversation.pk})
    assert (await receive(ws))["type"] == "subscribed"
    await ws.disconnect()
    assert group not in streaming._local_sockets()


async def test_the_local_lane_hands_batches_only_to_sockets_of_the_same_event_loop():
    """A socket's queues belong to its event loop and are not thread-safe: a generation
    on another loop (another thread) must not touch them. That socket is another
    subscriber to Redis for it, as a socket in another process is."""

    class Socket:
        def __init__(self) -> None:
            self.taken: list[dict] = []

        def take_local(self, message: dict) -> None:
            self.taken.append(message)

    socket, group, batch = Socket(), "conv.loop-test", {"type": "chat.events", "packed": b"{}"}
    streaming.listen_here(group, socket)
    try:

        async def deliver_on_another_loop() -> None:
            streaming._deliver_locally(group, batch)

        await asyncio.to_thread(asyncio.run, deliver_on_another_loop())
        assert socket.taken == []
        streaming._deliver_locally(group, batch)
        assert socket.taken == [batch]
    finally:
        streaming.stop_listening_here(group, socket)


@pytest.mark.redis
async def test_a_reply_heard_only_here_skips_redis_pub_sub_until_another_process_listens(chat_client, make_model):
    """This process's sockets get a reply's events directly; Redis publishes them only
    while another process (here: a bare subscriber) listens on the conversation, and
    always publishes the end."""
    import redis.asyncio as aioredis
    from django.conf import settings

    async def publishes() -> int:
        return (await client.info("commandstats")).get("cmdstat_publish", {}).get("calls", 0)

    await sync_to_async(make_model)("steady", "tokens-150+tps-50")  # 3 s of tokens
    client = aioredis.from_url(settings.REDIS_URL)
    ws = await connect(chat_client.key)
    await ws.send_json_to({"type": "send", "content": "go", "model": "steady"})
    accepted = await receive(ws)
    channel = streaming._pubsub_channel(get_channel_layer(), streaming.conversation_group(accepted["conversation_id"]))
    here = [await receive(ws) for _ in range(40)]  # 0.8 s: the watch has looked at least twice
    before = await publishes()
    here += [await receive(ws) for _ in range(30)]  # 0.6 s more, heard only here
    assert await publishes() == before

    elsewhere = client.pubsub()
    await elsewhere.subscribe(channel)  # another process's socket joins the conversation
    heard = []
    async with asyncio.timeout(10):  # the reply has 3 s of tokens
        while not heard or heard[-1]["type"] != "done":
            message = await elsewhere.get_message(ignore_subscribe_messages=True, timeout=5)
            if message is not None:
                packed = get_channel_layer().deserialize(message["data"])["packed"]
                heard += [orjson.loads(raw) for raw in packed.split(b"\n")]
    here += await until_final(ws, accepted["message_id"])

    assert [event["seq"] for event in here] == list(range(1, len(here) + 1))  # each once, in order
    assert len(heard) > 20 and [e["seq"] for e in heard] == list(range(heard[0]["seq"], here[-1]["seq"] + 1))
    await elsewhere.aclose()
    await client.aclose()
    await ws.disconnect()
