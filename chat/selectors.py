"""Reads for conversations and messages, always scoped to the requesting user."""

from __future__ import annotations

from django.db.models import QuerySet
from django.http import Http404

from chat.models import Conversation, Message

CONVERSATION_LIST_FIELDS = ("id", "title", "model_name", "created_at", "updated_at")


def conversation_list(*, user) -> QuerySet[Conversation]:
    """The guide's query: a user's conversations, newest updated first
    (served by idx_conversations_user_updated)."""
    return Conversation.objects.filter(user=user).only(*CONVERSATION_LIST_FIELDS).order_by("-updated_at", "-id")


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
