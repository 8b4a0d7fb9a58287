"""The OpenAI-compatible API (`/v1`): the official SDKs and the tools built on them
work against the platform with ``base_url=http://host/v1`` and ``api_key=afk_…``.

Same keys, limits and accounting as the REST API; errors in OpenAI's shape.
"""

from __future__ import annotations

import time

import orjson
from django.http import HttpRequest, HttpResponse
from rest_framework import serializers

from chat import registry, services, streaming
from chat.api_send import final_event
from chat.http import ApiError, Caller, api_view, json_body, validate
from chat.providers import get_provider
from chat.providers.base import ChatMessage
from chat.serializers import content_too_long
from chat.sse import EventPump, sse_response
from core import quotas
from core.db import database_sync_to_async
from core.exceptions import json_response
from core.models import APIKey

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}
_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


def openai_error(error: ApiError) -> HttpResponse:
    param = next(iter(error.details), None) if error.details else None
    message = error.message
    if error.details:
        message = "; ".join(f"{field}: {' '.join(msgs)}" for field, msgs in error.details.items())
    body = {
        "error": {
            "message": message,
            "type": _ERROR_TYPES.get(error.status, "api_error"),
            "param": param,
            "code": "invalid_api_key" if error.code == "authentication_failed" else error.code,
        }
    }
    response = json_response(body, status=error.status)
    for name, value in error.headers.items():
        response[name] = value
    return response


def _text(content) -> str:
    """OpenAI message content: a string, or a list of parts of which we take the text ones."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise serializers.ValidationError("Only text content parts are supported.")
            texts.append(part["text"])
        return "".join(texts)
    raise serializers.ValidationError("Message content must be a string or a list of text parts.")


class _MessagesField(serializers.ListField):
    def to_internal_value(self, data):
        items = super().to_internal_value(data)
        messages = []
        for index, item in enumerate(items):
            if not isinstance(item, dict):
                raise serializers.ValidationError(f"messages[{index}] must be an object.")
            role = _ROLES.get(item.get("role")) if isinstance(item.get("role"), str) else None
            if role is None:
                raise serializers.ValidationError(
                    f"messages[{index}].role must be one of system, developer, user, assistant."
                )
            try:
                text = _text(item.get("content"))
            except serializers.ValidationError as exc:
                raise serializers.ValidationError(f"messages[{index}].content: {exc.detail[0]}") from None
            if content_too_long(text):
                raise ApiError(413, "message_too_long", f"messages[{index}] is over the message length limit.")
            messages.append(ChatMessage(role=role, content=text))
        if not any(m.role == "user" and m.content.strip() for m in messages):
            raise serializers.ValidationError("At least one non-empty user message is required.")
        return messages


class _StopField(serializers.Field):
    def to_internal_value(self, data):
        stops = [data] if isinstance(data, str) else data
        if not isinstance(stops, list) or len(stops) > 4 or not all(isinstance(s, str) and s for s in stops):
            raise serializers.ValidationError("stop must be a string or a list of up to 4 strings.")
        return tuple(stops)


class CompletionRequestSerializer(serializers.Serializer):
    model = serializers.CharField(max_length=64)
    messages = _MessagesField(child=serializers.JSONField(), min_length=1, max_length=500)
    stream = serializers.BooleanField(required=False, default=False)
    stream_options = serializers.DictField(required=False, allow_null=True)
    max_tokens = serializers.IntegerField(required=False, allow_null=True, min_value=1)
    max_completion_tokens = serializers.IntegerField(required=False, allow_null=True, min_value=1)
    temperature = serializers.FloatField(required=False, allow_null=True, min_value=0, max_value=2)
    stop = _StopField(required=False, allow_null=True)
    n = serializers.IntegerField(required=False, allow_null=True, min_value=1, max_value=1)
    user = serializers.CharField(required=False, allow_blank=True, max_length=256)


def _prepare(caller: Caller, data: dict) -> services.SendPlan:
    model = registry.usable_model(data["model"], tier=caller.user.tier)
    quotas.check(caller.user)
    return services.completion_prepare(
        user=caller.user,
        messages=data["messages"],
        model=model,
        count_tokens=get_provider(model.provider).count_tokens,
        api_key_id=caller.api_key_id,
        temperature=data.get("temperature"),
        max_tokens=data.get("max_completion_tokens") or data.get("max_tokens"),
        stop=data.get("stop") or (),
    )


def _finish_reason(final: dict) -> str:
    return "length" if final.get("finish_reason") == "length" else "stop"


class _ChunkEncoder:
    """Turns the platform's reply events into OpenAI ``chat.completion.chunk`` frames."""

    def __init__(self, completion_id: str, model: str, include_usage: bool) -> None:
        self.base = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
        }
        self.include_usage = include_usage

    def _frame(self, delta: dict, finish_reason=None, **extra) -> bytes:
        body = {
            **self.base,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
        }
        body.update(extra)
        return b"data: " + orjson.dumps(body) + b"\n\n"

    def __call__(self, event: dict) -> bytes:
        kind = event["type"]
        if kind == "start":
            return self._frame({"role": "assistant", "content": ""})
        if kind == "delta":
            return self._frame({"content": event["text"]})
        if kind == "done":
            frames = self._frame({}, _finish_reason(event))
            if self.include_usage:
                usage = {**self.base, "choices": [], "usage": event["usage"]}
                frames += b"data: " + orjson.dumps(usage) + b"\n\n"
            return frames + b"data: [DONE]\n\n"
        if kind == "error":
            error = {
                "message": event.get("message", "The model failed."),
                "type": "api_error",
                "param": None,
                "code": event.get("code"),
            }
            return b"data: " + orjson.dumps({"error": error}) + b"\n\n"
        return b""


@api_view(methods=("POST",), scopes=(APIKey.Scope.CHAT,), render_error=openai_error)
async def chat_completions(request: HttpRequest, caller: Caller) -> HttpResponse:
    data = validate(CompletionRequestSerializer, json_body(request))
    plan = await database_sync_to_async(_prepare)(caller, data)
    generation = streaming.start(plan)
    completion_id = f"chatcmpl-{plan.assistant_message_id}"
    if data["stream"]:
        pump = EventPump(streaming.follow(generation.message_id))
        try:
            first = await pump.first_content()
        except BaseException:
            pump.close()
            raise
        if first is not None and first["type"] == "error":
            pump.close()
            raise ApiError(first.get("http_status", 502), first.get("code", "provider_error"), first.get("message", ""))
        include_usage = bool((data.get("stream_options") or {}).get("include_usage"))
        return sse_response(pump.frames(_ChunkEncoder(completion_id, plan.model.name, include_usage)))

    final = await final_event(generation.message_id)
    if final["type"] == "error":
        raise ApiError(final.get("http_status", 502), final.get("code", "provider_error"), final.get("message", ""))
    return json_response(
        {
            "id": completion_id,
            "object": "chat.completion",
            "created": int(plan.created_at.timestamp()),
            "model": final.get("model", plan.model.name),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": final.get("content", ""), "refusal": None},
                    "logprobs": None,
                    "finish_reason": _finish_reason(final),
                }
            ],
            "usage": final["usage"],
        }
    )


def _model_object(model: registry.ModelInfo) -> dict:
    return {"id": model.name, "object": "model", "created": 0, "owned_by": model.provider}


@api_view(methods=("GET",), scopes=(), render_error=openai_error)
async def models(request: HttpRequest, caller: Caller) -> HttpResponse:
    available = await database_sync_to_async(registry.enabled_models)()
    tier = caller.user.tier
    return json_response({"object": "list", "data": [_model_object(m) for m in available if m.allows_tier(tier)]})


@api_view(methods=("GET",), scopes=(), render_error=openai_error)
async def model_detail(request: HttpRequest, caller: Caller, name: str) -> HttpResponse:
    model = await database_sync_to_async(registry.find_model)(name)
    if model is None or not model.enabled or not model.allows_tier(caller.user.tier):
        raise ApiError(404, "model_not_found", f"The model '{name}' does not exist or you do not have access to it.")
    return json_response(_model_object(model))
