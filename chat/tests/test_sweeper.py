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
    await shared.mark_alive(alive.pk, ttl=10)  # another worker is producing it

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
