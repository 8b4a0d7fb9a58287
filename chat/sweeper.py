"""Replies whose worker died: a reply stays ``streaming`` only while some process
is producing it (that process renews an "alive" mark every two seconds). A
streaming reply without the mark is interrupted: it is stored with status
``error`` and whatever text its replay buffer still holds."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import timedelta

from asgiref.sync import sync_to_async
from django.utils import timezone

from chat import shared, streaming
from chat.models import Message

logger = logging.getLogger("agentsflow.chat")

INTERRUPTED = "The worker producing this reply stopped before it finished."
MIN_AGE = timedelta(seconds=shared.ALIVE_TTL)  # younger replies may not have marked themselves yet


def _candidates(limit: int) -> list[int]:
    cutoff = timezone.now() - MIN_AGE
    return list(
        Message.objects.filter(status=Message.Status.STREAMING, updated_at__lt=cutoff)
        .order_by("updated_at")
        .values_list("id", flat=True)[:limit]
    )


def mark_interrupted(message_id: int, content: str | None) -> bool:
    fields = {"status": Message.Status.ERROR, "error": INTERRUPTED, "updated_at": timezone.now()}
    if content is not None:
        fields["content"] = content
    return bool(Message.objects.filter(pk=message_id, status=Message.Status.STREAMING).update(**fields))


async def partial_text(message_id: int) -> str | None:
    """The text streamed so far, from the replay buffer (None once it has expired)."""
    return _text(await shared.replay_read(message_id, 0))


def _text(events: list[dict]) -> str | None:
    if not events:
        return None
    return "".join(event.get("text", "") for event in events if event["type"] == "delta")


async def sweep(limit: int = 500) -> int:
    """Mark every interrupted reply; returns how many were marked."""
    marked = 0
    for message_id in await sync_to_async(_candidates)(limit):
        if streaming.running(message_id) is not None or await shared.is_alive(message_id):
            continue
        if await sync_to_async(mark_interrupted)(message_id, await partial_text(message_id)):
            marked += 1
    if marked:
        logger.warning("marked %d interrupted replies", marked)
    return marked


def settle(messages: Iterable[Message]) -> None:
    """Check on read, for sync code (the REST reads): mark the given replies that are
    still ``streaming`` though no process produces them any more, so a client never
    reads ``streaming`` for ever after a worker died. Updates the instances."""
    cutoff = timezone.now() - MIN_AGE
    for message in messages:
        if message.status != Message.Status.STREAMING or message.updated_at >= cutoff or _alive(message.pk):
            continue
        if mark_interrupted(message.pk, _partial_text_now(message.pk)):
            message.refresh_from_db(fields=["status", "error", "content", "updated_at"])


def _alive(message_id: int) -> bool:
    """Whether some process still produces the reply; when Redis cannot say, assume so."""
    return streaming.running(message_id) is not None or shared.is_alive_now(message_id)


def _partial_text_now(message_id: int) -> str | None:
    return _text(shared.replay_read_now(message_id))
