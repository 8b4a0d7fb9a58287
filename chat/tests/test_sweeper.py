"""Replies whose worker died do not stay `streaming` forever."""

from datetime import timedelta

import pytest
from asgiref.sync import sync_to_async
from django.utils import timezone

from chat import shared, sweeper
from chat.models import Conversation, Message
from chat.tests.conftest import sse_events

pytestmark = pytest.mark.django_db(transaction=True)


def _orphan(user, age_seconds: float = 30) -> Message:
    """A reply a dead worker left behind: streaming, silent for ``age_seconds``."""
    conversation = Conversation.objects.create(user=user, model_name="echo")
    question = Message.objects.create(conversation=conversation, role="user", content="hello?")
    reply = Message.objects.create(
        conversation=conversation, role="assistant", status="streaming", reply_to=question, model_name="echo"
    )
    Message.objects.filter(pk=reply.pk).update(updated_at=timezone.now() - timedelta(seconds=age_seconds))
    return reply


async def _buffer(reply: Message, *texts: str) -> None:
    events = [{"type": "start", "seq": 1, "message_id": reply.pk, "conversation_id": reply.conversation_id}]
    events += [
        {"type": "delta", "seq": n, "message_id": reply.pk, "conversation_id": reply.conversation_id, "text": text}
        for n, text in enumerate(texts, start=2)
    ]
    await shared.replay_append(reply.pk, events)


async def test_sweep_marks_orphans_with_their_partial_text(chat_client):
    orphan = await sync_to_async(_orphan)(chat_client.user)
    await _buffer(orphan, "Hel", "lo")
    fresh = await sync_to_async(_orphan)(chat_client.user, age_seconds=0)  # may still be starting up
    alive = await sync_to_async(_orphan)(chat_client.user)
    await shared.mark_alive([alive.pk], ttl=10)  # another worker is producing it

    assert await sweeper.sweep() == 1
    orphan = await sync_to_async(Message.objects.get)(pk=orphan.pk)
    assert orphan.status == "error" and orphan.content == "Hello" and orphan.error == sweeper.INTERRUPTED
    for other in (fresh, alive):
        assert (await sync_to_async(Message.objects.get)(pk=other.pk)).status == "streaming"
    assert await sweeper.sweep() == 0  # idempotent


async def test_following_an_orphan_ends_it_instead_of_waiting(chat_client):
    orphan = await sync_to_async(_orphan)(chat_client.user)
    await _buffer(orphan, "partial")
    response = await chat_client.get(f"/api/messages/{orphan.pk}/stream")
    events = await sse_events(response)
    assert [e["type"] for e in events] == ["start", "delta", "error"]
    assert events[-1]["content"] == "partial"
    assert (await sync_to_async(Message.objects.get)(pk=orphan.pk)).status == "error"


def test_sweep_replies_command(user, django_db_blocker):
    from io import StringIO

    from django.core.management import call_command

    _orphan(user)
    out = StringIO()
    call_command("sweep_replies", stdout=out)
    assert "marked 1" in out.getvalue()


# Found by resilience/tests/test_faults.py (a worker killed mid-stream): only the SSE
# stream checked on read; the REST reads and a WebSocket resume showed `streaming` for ever.


async def test_reading_an_orphan_over_rest_marks_it(chat_client):
    orphan = await sync_to_async(_orphan)(chat_client.user)
    await _buffer(orphan, "Hel", "lo")
    detail = (await chat_client.get(f"/api/messages/{orphan.pk}")).json()
    assert detail["status"] == "error" and detail["content"] == "Hello"
    listed = (await chat_client.get(f"/api/conversations/{orphan.conversation_id}/messages")).json()["results"]
    assert [m["status"] for m in listed] == ["complete", "error"]
    assert (await sync_to_async(Message.objects.get)(pk=orphan.pk)).error == sweeper.INTERRUPTED


async def test_rest_reads_leave_live_and_young_replies_alone(chat_client):
    alive = await sync_to_async(_orphan)(chat_client.user)
    await shared.mark_alive([alive.pk], ttl=10)
    young = await sync_to_async(_orphan)(chat_client.user, age_seconds=0)
    for reply in (alive, young):
        assert (await chat_client.get(f"/api/messages/{reply.pk}")).json()["status"] == "streaming"


async def test_resuming_an_orphan_over_a_websocket_ends_it(chat_client):
    from chat.tests.test_websocket import connect, until_final

    orphan = await sync_to_async(_orphan)(chat_client.user)
    await _buffer(orphan, "par", "tial")
    ws = await connect(chat_client.key)
    await ws.send_json_to({"type": "resume", "message_id": orphan.pk, "last_seq": 1})
    events = await until_final(ws, orphan.pk)
    assert [e["type"] for e in events] == ["delta", "delta", "error"]
    assert events[-1]["seq"] == 4 and events[-1]["status"] == "error"
    await ws.disconnect()


@pytest.mark.redis
async def test_a_reply_counts_as_alive_while_redis_cannot_say(chat_client):
    """A sweep during a Redis outage must not take every streaming reply for an orphan."""
    from core import redis

    orphan = await sync_to_async(_orphan)(chat_client.user)
    redis.breaker.trip("test", ConnectionError("down"))
    assert await shared.is_alive(orphan.pk)
    assert await sweeper.sweep() == 0
    redis.breaker.reset()
    assert not await shared.is_alive(orphan.pk)
    assert await sweeper.sweep() == 1


@pytest.mark.redis
async def test_a_reply_counts_as_alive_while_a_restarted_redis_lacks_its_mark(chat_client, settings, tmp_path):
    """Found by resilience/tests/test_faults.py (F1): Redis came back empty, and a resume
    reaching the other worker before the live reply renewed its mark took it for an
    orphan and stored it as failed."""
    from resilience.tools import PrivateRedis

    orphan = await sync_to_async(_orphan)(chat_client.user)
    with PrivateRedis(tmp_path / "redis.log") as restarted:
        settings.REDIS_URL = restarted.url()  # this test's event loop gets a client for it
        assert await shared.is_alive(orphan.pk)
        assert await shared.store().started_within(shared.MARKS_BACK_WITHIN)
        assert not await shared.store().started_within(0)
        assert await sweeper.sweep() == 0
