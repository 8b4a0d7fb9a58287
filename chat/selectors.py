"""Reads for conversations and messages, always scoped to the requesting user."""

from __future__ import annotations

from django.db import transaction
from django.db.models import QuerySet
from django.http import Http404

from chat.models import Conversation, Message
from core.cache import two_tier

CONVERSATION_LIST_FIELDS = ("id", "title", "model_name", "created_at", "updated_at")


def conversation_list(*, user) -> QuerySet:
    """The guide's query: a user's conversations, newest updated first (served by
    idx_conversations_user_updated), as dicts of the list's fields: building model
    instances and serializing them with DRF was half of a page's CPU."""
    return Conversation.objects.filter(user=user).order_by("-updated_at", "-id").values(*CONVERSATION_LIST_FIELDS)


RECENT_CACHE_FAMILY = "conversations"
RECENT_CACHE_TTL = 300  # the guide's five minutes; any change drops it sooner


def recent_conversations_page(*, user, compute) -> dict:
    """The first page of a user's conversation list (the guide's
    get_user_conversations), from the two-tier cache."""
    return two_tier.get_or_compute(RECENT_CACHE_FAMILY, str(user.pk), compute, ttl=RECENT_CACHE_TTL)


def recent_conversations_changed(user_id: int) -> None:
    """Drop the cached first page now and again after commit (see core.signals)."""

    def drop() -> None:
        two_tier.delete(RECENT_CACHE_FAMILY, str(user_id))

    drop()
    transaction.on_commit(drop)


def conversation_get(*, user, conversation_id: int) -> Conversation:
    """The user's own conversation; anyone else's (or a missing one) is a 404."""
    conversation = Conversation.objects.filter(user=user, pk=conversation_id).first()
    if conversation is None:
        raise Http404("No such conversation.")
    return conversation


def message_list(*, conversation: Conversation) -> QuerySet[Message]:
    """A conversation's messages in time order (served by idx_messages_conv_created)."""
    return Message.objects.filter(conversation=conversation).order_by("created_at", "id")


def message_get(*, user, message_id: int) -> Message:
    """The user's own message (through its conversation); anyone else's is a 404."""
    message = Message.objects.filter(pk=message_id, conversation__user=user).first()
    if message is None:
        raise Http404("No such message.")
    return message


def idempotency_record_get(*, user, key: str):
    from chat.models import IdempotencyRecord

    return IdempotencyRecord.objects.filter(user=user, key=key).first()
