"""The endpoints that call a model: send, one-shot chat, regenerate, cancel and
resume. Async views, so a reply can stream (SSE) and a waiting request holds no
thread; see chat/http.py for their authentication and errors."""

from __future__ import annotations

import asyncio
import hashlib

import orjson
from django.conf import settings
from django.db import IntegrityError
from django.http import HttpRequest, HttpResponse

from chat import selectors, services, streaming
from chat.http import ApiError, Caller, api_view, json_body, validate
from chat.models import Message
from chat.providers import get_provider
from chat.registry import usable_model
from chat.serializers import ChatSerializer, MessageSerializer, SendSerializer, content_too_long
from chat.services import SendPlan
from chat.sse import EventPump, sse_response
from core import quotas
from core.db import database_sync_to_async
from core.exceptions import error_body, json_response
from core.models import APIKey

CHAT_SCOPES = (APIKey.Scope.CHAT,)

# Database work goes through core.db.database_sync_to_async, which hands the
# connection back to the pool after each call: a request waiting on the model holds none.
CANCEL_WAIT_SECONDS = 2.0
MAX_EVENT_ID = 2**31 - 1  # far more events than any reply has


# --- helpers ------------------------------------------------------------------------


def wants_stream(request: HttpRequest, data: dict) -> bool:
    return bool(data.get("stream")) or "text/event-stream" in request.headers.get("Accept", "")


def idempotency_of(request: HttpRequest, payload: dict) -> tuple[str, str] | None:
    """(key, fingerprint of the request) from an ``Idempotency-Key`` header."""
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    key = key.strip()
    if not 1 <= len(key) <= 255:
        raise ApiError(400, "invalid", "Idempotency-Key must be 1 to 255 characters.")
    canonical = orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)
    return key, hashlib.sha256(request.path.encode() + b"\n" + canonical).hexdigest()


def check_length(content: str) -> None:
    if content_too_long(content):
        raise ApiError(
            413,
            "message_too_long",
            f"The message is {len(content)} characters; the limit is {settings.CHAT_MAX_MESSAGE_CHARS}.",
        )


def _assistant_json(plan: SendPlan, final: dict) -> dict:
    usage = final.get("usage") or {}
    return {
        "id": plan.assistant_message_id,
        "conversation_id": plan.conversation_id,
        "role": "assistant",
        "content": final.get("content", ""),
        "status": final["status"],
        "model_name": final.get("model", plan.model.name),
        "reply_to_id": plan.user_message_id,
        "prompt_tokens": usage.get("prompt_tokens", 0),
        "completion_tokens": usage.get("completion_tokens", 0),
        "latency_ms": final.get("latency_ms"),
        "ttft_ms": final.get("ttft_ms"),
        "error": final.get("message", "") if final["type"] == "error" else "",
        "created_at": plan.created_at,
    }


def _user_json(plan: SendPlan, content: str) -> dict:
    return {
        "id": plan.user_message_id,
        "conversation_id": plan.conversation_id,
        "role": "user",
        "content": content,
        "status": "complete",
        "model_name": plan.model.name,
        "reply_to_id": None,
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "latency_ms": None,
        "ttft_ms": None,
        "error": "",
        "created_at": plan.created_at,
    }


def reply_error_response(final: dict, **ids) -> HttpResponse:
    """A failed reply as the platform's JSON error, with the ids of what was stored."""
    status = final.get("http_status", 502)
    body = error_body(status, final.get("code", "provider_error"), final.get("message", "The model failed."))
    body.update(ids)
    return json_response(body, status=status)


async def final_event(message_id: int) -> dict:
    async for event in streaming.follow(message_id):
        if event["type"] in streaming.TERMINAL:
            return event
    raise ApiError(404, "not_found", "No such message.")


async def stream_reply(reply_id: int, *, after_seq: int = 0, **ids) -> HttpResponse:
    """SSE of a reply; a plain JSON error when it fails before any text."""
    pump = EventPump(streaming.follow(reply_id, after_seq))
    try:
        first = await pump.first_content()
    except BaseException:
        pump.close()
        raise
    if first is not None and first["type"] == "error" and after_seq == 0:
        pump.close()
        return reply_error_response(first, **ids)
    return sse_response(pump.frames())


# --- send --------------------------------------------------------------------------------


def _prepare_send(caller: Caller, conversation_id: int | None, data: dict, idempotency) -> SendPlan:
    user = caller.user
    quotas.check(user)
    conversation = (
        selectors.conversation_get(user=user, conversation_id=conversation_id) if conversation_id is not None else None
    )
    requested = data.get("model") or (conversation.model_name if conversation else None)
    model = usable_model(requested, tier=user.tier)
    return services.message_send_prepare(
        user=user,
        conversation=conversation,
        content=data["content"],
        model=model,
        count_tokens=get_provider(model.provider).count_tokens,
        api_key_id=caller.api_key_id,
        temperature=data.get("temperature"),
        max_tokens=data.get("max_tokens"),
        system_prompt=data.get("system") or None,
        idempotency=idempotency,
    )


async def _replay_idempotent(request: HttpRequest, caller: Caller, idempotency, stream: bool) -> HttpResponse:
    """A retried request gets the first one's result; nothing new is created."""
    record = await database_sync_to_async(selectors.idempotency_record_get)(user=caller.user, key=idempotency[0])
    if record is None:  # the racing first request rolled back
        raise ApiError(409, "conflict", "A request with this Idempotency-Key failed; retry with a new key.")
    if record.fingerprint != idempotency[1]:
        raise ApiError(422, "idempotency_key_reused", "This Idempotency-Key was already used with a different request.")
    message_id = record.response["assistant_message_id"]
    if stream:
        after = _last_event_id(request)
        return await stream_reply(message_id, after_seq=after)
    final = await final_event(message_id)
    reply = await database_sync_to_async(selectors.message_get)(user=caller.user, message_id=message_id)
    ids = {"conversation_id": reply.conversation_id, "user_message_id": reply.reply_to_id, "message_id": reply.pk}
    if final["type"] == "error":
        return reply_error_response(final, **ids)
    user_message = await database_sync_to_async(selectors.message_get)(user=caller.user, message_id=reply.reply_to_id)
    return json_response(
        {
            "conversation_id": reply.conversation_id,
            "user_message": MessageSerializer(user_message).data,
            "message": MessageSerializer(reply).data,
        },
        status=200,
    )


async def send(request: HttpRequest, caller: Caller, *, conversation_id: int | None, one_shot: bool) -> HttpResponse:
    payload = json_body(request)
    data = validate(ChatSerializer if one_shot else SendSerializer, payload)
    check_length(data["content"])
    stream = wants_stream(request, data)
    if one_shot:
        conversation_id = data.get("conversation_id")
    idempotency = idempotency_of(request, payload)
    if idempotency and await database_sync_to_async(selectors.idempotency_record_get)(
        user=caller.user, key=idempotency[0]
    ):
        return await _replay_idempotent(request, caller, idempotency, stream)
    try:
        plan = await database_sync_to_async(_prepare_send)(caller, conversation_id, data, idempotency)
    except IntegrityError:
        if idempotency is None:
            raise
        return await _replay_idempotent(request, caller, idempotency, stream)

    generation = streaming.start(plan)
    ids = {
        "conversation_id": plan.conversation_id,
        "user_message_id": plan.user_message_id,
        "message_id": plan.assistant_message_id,
    }
    if stream:
        return await stream_reply(generation.message_id, **ids)
    final = await final_event(generation.message_id)
    if final["type"] == "error":
        return reply_error_response(final, **ids)
    return json_response(
        {
            "conversation_id": plan.conversation_id,
            "conversation_created": plan.conversation_created,
            "user_message": _user_json(plan, data["content"]),
            "message": _assistant_json(plan, final),
        },
        status=201,
    )


@api_view(methods=("POST",), scopes=CHAT_SCOPES)
async def conversation_send(request: HttpRequest, caller: Caller, conversation_id: int) -> HttpResponse:
    return await send(request, caller, conversation_id=conversation_id, one_shot=False)


@api_view(methods=("POST",), scopes=CHAT_SCOPES)
async def chat(request: HttpRequest, caller: Caller) -> HttpResponse:
    """The guide's one-shot chat API: creates the conversation when none is given."""
    return await send(request, caller, conversation_id=None, one_shot=True)


# --- regenerate, cancel, resume -------------------------------------------------------------


def _prepare_regenerate(caller: Caller, message_id: int) -> SendPlan:
    reply = selectors.message_get(user=caller.user, message_id=message_id)
    model = usable_model(reply.model_name, tier=caller.user.tier)
    quotas.check(caller.user)
    return services.message_regenerate_prepare(
        user=caller.user,
        reply=reply,
        model=model,
        count_tokens=get_provider(model.provider).count_tokens,
        api_key_id=caller.api_key_id,
    )


@api_view(methods=("POST",), scopes=CHAT_SCOPES)
async def message_regenerate(request: HttpRequest, caller: Caller, message_id: int) -> HttpResponse:
    # The body is optional: {"stream": true} (or the Accept header) asks for events.
    payload = json_body(request) if request.content_type == "application/json" and request.body else {}
    stream = wants_stream(request, payload)
    plan = await database_sync_to_async(_prepare_regenerate)(caller, message_id)
    generation = streaming.start(plan)
    ids = {"conversation_id": plan.conversation_id, "message_id": plan.assistant_message_id}
    if stream:
        return await stream_reply(generation.message_id, **ids)
    final = await final_event(generation.message_id)
    if final["type"] == "error":
        return reply_error_response(final, **ids)
    return json_response({"conversation_id": plan.conversation_id, "message": _assistant_json(plan, final)}, 201)


@api_view(methods=("POST",), scopes=CHAT_SCOPES)
async def message_cancel(request: HttpRequest, caller: Caller, message_id: int) -> HttpResponse:
    """Stop a streaming reply (within a second, from any worker); the partial text is kept."""
    message = await database_sync_to_async(selectors.message_get)(user=caller.user, message_id=message_id)
    if message.role != Message.Role.ASSISTANT:
        raise ApiError(400, "invalid", "Only an assistant reply can be cancelled.")
    if message.status == Message.Status.STREAMING:
        await streaming.cancel(message_id)
        message = await _wait_until_final(caller, message_id)
    elif message.status != Message.Status.CANCELLED:
        raise ApiError(409, "not_streaming", f"The reply is already {message.status}.")
    return json_response(MessageSerializer(message).data)


async def _wait_until_final(caller: Caller, message_id: int) -> Message:
    deadline = asyncio.get_running_loop().time() + CANCEL_WAIT_SECONDS
    while True:
        message = await database_sync_to_async(selectors.message_get)(user=caller.user, message_id=message_id)
        if message.status != Message.Status.STREAMING or asyncio.get_running_loop().time() > deadline:
            return message
        await asyncio.sleep(0.05)


def _last_event_id(request: HttpRequest) -> int:
    raw = request.headers.get("Last-Event-ID") or request.GET.get("after") or "0"
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, "invalid", "Last-Event-ID (or ?after=) must be an integer.") from None
    if value < 0:
        raise ApiError(400, "invalid", "Last-Event-ID (or ?after=) must not be negative.")
    if value > MAX_EVENT_ID:  # larger ones broke the stream after its headers (Redis, orjson)
        raise ApiError(400, "invalid", f"Last-Event-ID (or ?after=) must be at most {MAX_EVENT_ID}.")
    return value


@api_view(methods=("GET",), scopes=CHAT_SCOPES)
async def message_stream(request: HttpRequest, caller: Caller, message_id: int) -> HttpResponse:
    """Reconnect to a reply's event stream: events after ``Last-Event-ID`` (or ``?after=``)."""
    after = _last_event_id(request)
    message = await database_sync_to_async(selectors.message_get)(user=caller.user, message_id=message_id)
    if message.role != Message.Role.ASSISTANT:
        raise ApiError(400, "invalid", "Only an assistant reply has an event stream.")
    return sse_response(EventPump(streaming.follow(message_id, after)).frames())
