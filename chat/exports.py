"""Conversation exports, streamed message by message so a long conversation is
never held in memory at once."""

from __future__ import annotations

from collections.abc import Iterator

from chat.models import Conversation, Message
from chat.serializers import ConversationSerializer, MessageSerializer
from core.renderers import dumps

CHUNK = 500


def _messages(conversation: Conversation) -> Iterator[Message]:
    return Message.objects.filter(conversation=conversation).order_by("created_at", "id").iterator(chunk_size=CHUNK)


def export_json(conversation: Conversation) -> Iterator[bytes]:
    yield b'{"conversation":' + dumps(ConversationSerializer(conversation).data) + b',"messages":['
    for index, message in enumerate(_messages(conversation)):
        yield (b"," if index else b"") + dumps(MessageSerializer(message).data)
    yield b"]}"


_ROLE_TITLES = {"user": "You", "assistant": "Assistant", "system": "System"}


def export_markdown(conversation: Conversation) -> Iterator[bytes]:
    title = conversation.title or f"Conversation {conversation.pk}"
    started = f"{conversation.created_at:%Y-%m-%d %H:%M} UTC"
    yield f"# {title}\n\n_Model: {conversation.model_name} · started {started}_\n".encode()
    for message in _messages(conversation):
        heading = _ROLE_TITLES.get(message.role, message.role)
        if message.role == "assistant" and message.status != "complete":
            heading += f" ({message.status})"
        yield f"\n## {heading}\n\n{message.content}\n".encode()


FORMATS = {
    "json": ("application/json", "json", export_json),
    "md": ("text/markdown; charset=utf-8", "md", export_markdown),
}
