"""Writes for conversations and messages.

Sending a message is split at the model call: ``message_send_prepare`` stores
and commits the user's message (and a ``streaming`` placeholder for the reply)
before any model is contacted, so nothing the user typed is lost whatever the
model does; ``assistant_finish`` stores the outcome afterwards.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime

from django.db import transaction
from django.utils import timezone
from rest_framework.exceptions import ValidationError

from chat.models import Conversation, IdempotencyRecord, Message
from chat.providers.base import ChatMessage, CompletionRequest, Usage
from chat.registry import ModelInfo
from chat.selectors import recent_conversations_changed

HISTORY_LIMIT = 200  # messages read back for context; the token budget usually binds first
TITLE_LENGTH = 60


class ContextTooLong(ValidationError):
    default_code = "context_length_exceeded"


@dataclass(frozen=True, slots=True)
class SendPlan:
    """Everything a generation needs, computed in one database round."""

    conversation_id: int
    user_message_id: int
    assistant_message_id: int
    model: ModelInfo
    request: CompletionRequest
    conversation_created: bool
    created_at: datetime
    user_id: int
    tier: str


def conversation_create(*, user, model_name: str, title: str = "") -> Conversation:
    return Conversation.objects.create(user=user, model_name=model_name, title=title.strip()[:200])


def conversation_rename(*, conversation: Conversation, title: str) -> Conversation:
    conversation.title = title.strip()[:200]
    conversation.updated_at = timezone.now()
    conversation.save(update_fields=["title", "updated_at"])
    return conversation


def conversation_delete(*, conversation: Conversation) -> None:
    conversation.delete()


def _title_from(content: str) -> str:
    line = " ".join(content.split())
    return line if len(line) <= TITLE_LENGTH else line[: TITLE_LENGTH - 1].rstrip() + "…"


def fit_to_context(
    messages: list[ChatMessage], *, model: ModelInfo, count_tokens: Callable[[str], int]
) -> tuple[ChatMessage, ...]:
    """``messages`` (oldest first) trimmed to the model's context window less its
    output budget: system messages always, then the newest others that fit.

    Raises ContextTooLong (400) when even the newest message does not fit.
    """
    budget = model.context_window - model.max_output_tokens - 16  # room for the chat template's own tokens
    system = [m for m in messages if m.role == "system"]
    budget -= sum(count_tokens(m.content) + 4 for m in system)
    kept: list[ChatMessage] = []
    for message in reversed([m for m in messages if m.role != "system"]):
        cost = count_tokens(message.content) + 4
        if cost > budget:
            if not kept:
                raise ContextTooLong(
                    {"content": [f"The message is about {cost} tokens; {model.name} accepts at most {max(budget, 0)}."]}
                )
            break
        budget -= cost
        kept.append(message)
    return (*system, *reversed(kept))


def build_history(
    conversation_id: int,
    *,
    upto_message_id: int,
    model: ModelInfo,
    count_tokens: Callable[[str], int],
) -> tuple[ChatMessage, ...]:
    """The conversation as the model should see it, trimmed to its context window.

    Only complete and cancelled replies count as history (errors and replies
    still streaming are left out), and when a reply was regenerated only the
    newest answer to each user message is kept.
    """
    rows = (
        Message.objects.filter(conversation_id=conversation_id, id__lte=upto_message_id)
        .exclude(role=Message.Role.ASSISTANT, status__in=[Message.Status.STREAMING, Message.Status.ERROR])
        .order_by("-created_at", "-id")
        .values_list("role", "content", "reply_to_id")[:HISTORY_LIMIT]
    )
    newest_first: list[ChatMessage] = []
    answered: set[int] = set()
    for role, content, reply_to in rows:
        if role == Message.Role.ASSISTANT:
            if reply_to in answered or not content:
                continue
            answered.add(reply_to)
        newest_first.append(ChatMessage(role=role, content=content))
    return fit_to_context(newest_first[::-1], model=model, count_tokens=count_tokens)


def _completion_request(
    model: ModelInfo, history: tuple[ChatMessage, ...], *, temperature: float | None, max_tokens: int | None
) -> CompletionRequest:
    return CompletionRequest(
        model=model.upstream_model,
        messages=history,
        max_tokens=min(max_tokens or model.max_output_tokens, model.max_output_tokens),
        temperature=model.default_temperature if temperature is None else temperature,
    )


@transaction.atomic
def message_send_prepare(
    *,
    user,
    conversation: Conversation | None,
    content: str,
    model: ModelInfo,
    count_tokens: Callable[[str], int],
    api_key_id: int | None = None,
    temperature: float | None = None,
    max_tokens: int | None = None,
    system_prompt: str | None = None,
    idempotency: tuple[str, str] | None = None,
) -> SendPlan:
    """Store the user's message and a streaming placeholder for the reply (committed
    together, before any model call) and build the model request.

    Creates the conversation when none is given. Raises ContextTooLong (400)
    when the message alone does not fit the model's context window. With
    ``idempotency`` (key, request fingerprint) the key is recorded in the same
    transaction, so a concurrent duplicate fails with IntegrityError and stores nothing.
    """
    created = conversation is None
    now = timezone.now()
    if conversation is None:
        conversation = Conversation.objects.create(
            user=user, model_name=model.name, title=_title_from(content), created_at=now, updated_at=now
        )
    if system_prompt:
        Message.objects.create(
            conversation=conversation,
            role=Message.Role.SYSTEM,
            content=system_prompt,
            created_at=now,
            api_key_id=api_key_id,
        )
    user_message = Message.objects.create(
        conversation=conversation,
        role=Message.Role.USER,
        content=content,
        model_name=model.name,
        api_key_id=api_key_id,
        created_at=now,
    )
    if created:  # nothing to read back: the history is what this request brings
        opening = [ChatMessage(role=Message.Role.SYSTEM.value, content=system_prompt)] if system_prompt else []
        history = fit_to_context(
            [*opening, ChatMessage(role=Message.Role.USER.value, content=content)],
            model=model,
            count_tokens=count_tokens,
        )
    else:
        history = build_history(
            conversation.pk, upto_message_id=user_message.pk, model=model, count_tokens=count_tokens
        )
    assistant = Message.objects.create(
        conversation=conversation,
        role=Message.Role.ASSISTANT,
        status=Message.Status.STREAMING,
        model_name=model.name,
        reply_to=user_message,
        api_key_id=api_key_id,
    )
    if not created:
        Conversation.objects.filter(pk=conversation.pk).update(updated_at=now)
    recent_conversations_changed(user.pk)
    if idempotency is not None:
        IdempotencyRecord.objects.create(
            user=user,
            key=idempotency[0],
            fingerprint=idempotency[1],
            response={"assistant_message_id": assistant.pk},
        )
    return SendPlan(
        conversation_id=conversation.pk,
        user_message_id=user_message.pk,
        assistant_message_id=assistant.pk,
        model=model,
        request=_completion_request(model, history, temperature=temperature, max_tokens=max_tokens),
        conversation_created=created,
        created_at=now,
        user_id=user.pk,
        tier=user.tier,
    )


@transaction.atomic
def completion_prepare(
    *,
    user,
    messages: list[ChatMessage],
    model: ModelInfo,
    count_tokens: Callable[[str], int],
    api_key_id: int | None,
    temperature: float | None,
    max_tokens: int | None,
    stop: tuple[str, ...] = (),
) -> SendPlan:
    """An OpenAI-style completion: the caller sends the whole history, which is used
    as given (trimmed to the context window). Like a REST send, it is stored as a
    conversation with the last user message and the reply, so it is counted the same way.
    """
    history = fit_to_context(messages, model=model, count_tokens=count_tokens)
    last_user = next((m.content for m in reversed(messages) if m.role == "user"), messages[-1].content)
    now = timezone.now()
    conversation = Conversation.objects.create(
        user=user, model_name=model.name, title=_title_from(last_user), created_at=now, updated_at=now
    )
    user_message = Message.objects.create(
        conversation=conversation,
        role=Message.Role.USER,
        content=last_user,
        model_name=model.name,
        api_key_id=api_key_id,
        created_at=now,
    )
    assistant = Message.objects.create(
        conversation=conversation,
        role=Message.Role.ASSISTANT,
        status=Message.Status.STREAMING,
        model_name=model.name,
        reply_to=user_message,
        api_key_id=api_key_id,
    )
    request = _completion_request(model, history, temperature=temperature, max_tokens=max_tokens)
    return SendPlan(
        conversation_id=conversation.pk,
        user_message_id=user_message.pk,
        assistant_message_id=assistant.pk,
        model=model,
        request=replace(request, stop=stop),
        conversation_created=True,
        created_at=now,
        user_id=user.pk,
        tier=user.tier,
    )


@transaction.atomic
def message_regenerate_prepare(
    *, user, reply: Message, model: ModelInfo, count_tokens: Callable[[str], int], api_key_id: int | None = None
) -> SendPlan:
    """A new reply to the user message that ``reply`` answered; the old reply stays
    (history uses the newest). Only a finished reply can be regenerated."""
    if reply.role != Message.Role.ASSISTANT or reply.reply_to_id is None:
        raise ValidationError({"message_id": ["Only an assistant reply can be regenerated."]})
    if reply.status == Message.Status.STREAMING:
        raise ValidationError({"message_id": ["This reply is still streaming; cancel it first."]})
    history = build_history(
        reply.conversation_id, upto_message_id=reply.reply_to_id, model=model, count_tokens=count_tokens
    )
    assistant = Message.objects.create(
        conversation_id=reply.conversation_id,
        role=Message.Role.ASSISTANT,
        status=Message.Status.STREAMING,
        model_name=model.name,
        reply_to_id=reply.reply_to_id,
        api_key_id=api_key_id,
    )
    Conversation.objects.filter(pk=reply.conversation_id).update(updated_at=timezone.now())
    recent_conversations_changed(user.pk)
    return SendPlan(
        conversation_id=reply.conversation_id,
        user_message_id=reply.reply_to_id,
        assistant_message_id=assistant.pk,
        model=model,
        request=_completion_request(model, history, temperature=None, max_tokens=None),
        conversation_created=False,
        created_at=assistant.created_at,
        user_id=user.pk,
        tier=user.tier,
    )


def assistant_finish(
    *,
    message_id: int,
    content: str,
    status: str,
    usage: Usage,
    latency_ms: int,
    ttft_ms: int | None,
    model_name: str,
    error: str = "",
) -> bool:
    """Store a reply's outcome. Only a reply still ``streaming`` changes, so a
    late writer never overwrites a final state (e.g. one the sweeper set).
    Returns whether the row changed."""
    changed = Message.objects.filter(pk=message_id, status=Message.Status.STREAMING).update(
        content=content,
        status=status,
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        latency_ms=latency_ms,
        ttft_ms=ttft_ms,
        model_name=model_name,
        error=error[:2000],
        updated_at=timezone.now(),
    )
    return bool(changed)


def feedback_set(*, message: Message, user, rating: str, comment: str = ""):
    from chat.models import MessageFeedback

    feedback, _ = MessageFeedback.objects.update_or_create(
        message=message, user=user, defaults={"rating": rating, "comment": comment}
    )
    return feedback
