"""OpenAPI for the async endpoints (send, chat, cancel, regenerate, stream, /v1).

They are plain Django async views, which drf-spectacular cannot introspect, so
this postprocessing hook adds their operations to the generated schema.
"""

from __future__ import annotations

from django.conf import settings

from core.openapi import _DESCRIPTIONS

_REF = "#/components/schemas/"


def _ref(name: str) -> dict:
    return {"$ref": _REF + name}


def _json(schema: dict) -> dict:
    return {"application/json": {"schema": schema}}


def _errors(*codes: int, schema: str = "Error") -> dict:
    return {str(code): {"description": _DESCRIPTIONS[code], "content": _json(_ref(schema))} for code in codes}


# Events: `start`, `delta` (text), optional `fallback`, then `done` or `error`, each with
# an increasing `id` (reconnect with `Last-Event-ID`). See docs/streaming.md. Before
# OpenAPI 3.2 an event stream's schema describes one event, as its fields.
_SSE = {
    "text/event-stream": {
        "schema": {
            "type": "object",
            "description": "One Server-Sent Event: `data` holds the event as JSON.",
            "properties": {
                "event": {"type": "string"},
                "data": {"type": "string"},
                "id": {"type": "string"},
                "retry": {"type": "integer"},
            },
        }
    }
}

_SCHEMAS = {
    "SendRequest": {
        "type": "object",
        "required": ["content"],
        "properties": {
            "content": {"type": "string", "minLength": 1},
            "model": {"type": "string", "description": "Defaults to the conversation's (or platform's) model."},
            "stream": {"type": "boolean", "default": False, "description": "Reply as Server-Sent Events."},
            "temperature": {"type": "number", "minimum": 0, "maximum": 2},
            "max_tokens": {"type": "integer", "minimum": 1, "maximum": 32768},
        },
    },
    "ChatRequest": {
        "allOf": [
            _ref("SendRequest"),
            {
                "type": "object",
                "properties": {
                    "conversation_id": {"type": "integer", "minimum": 1, "description": "Omit to start one."},
                    "system": {"type": "string", "maxLength": 8000, "description": "A system prompt."},
                },
            },
        ]
    },
    "SendResponse": {
        "type": "object",
        "required": ["conversation_id", "user_message", "message"],
        "properties": {
            "conversation_id": {"type": "integer"},
            "conversation_created": {"type": "boolean"},
            "user_message": _ref("Message"),
            "message": _ref("Message"),
        },
    },
    "RegenerateResponse": {
        "type": "object",
        "required": ["conversation_id", "message"],
        "properties": {"conversation_id": {"type": "integer"}, "message": _ref("Message")},
    },
    "ReplyError": {
        "allOf": [
            _ref("Error"),
            {
                "type": "object",
                "properties": {
                    "conversation_id": {"type": "integer"},
                    "user_message_id": {"type": "integer"},
                    "message_id": {"type": "integer", "description": "The reply, stored with status `error`."},
                },
            },
        ]
    },
    "OpenAIError": {
        "type": "object",
        "properties": {
            "error": {
                "type": "object",
                "properties": {
                    "message": {"type": "string"},
                    "type": {"type": "string"},
                    "param": {"type": "string", "nullable": True},
                    "code": {"type": "string", "nullable": True},
                },
            }
        },
    },
    "ChatCompletionRequest": {
        "type": "object",
        "required": ["model", "messages"],
        "properties": {
            "model": {"type": "string"},
            "messages": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "required": ["role", "content"],
                    "properties": {
                        "role": {"type": "string", "enum": ["system", "developer", "user", "assistant"]},
                        "content": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "object"}}]},
                    },
                },
            },
            "stream": {"type": "boolean"},
            "stream_options": {"type": "object", "properties": {"include_usage": {"type": "boolean"}}},
            "max_tokens": {"type": "integer", "minimum": 1},
            "max_completion_tokens": {"type": "integer", "minimum": 1},
            "temperature": {"type": "number", "minimum": 0, "maximum": 2},
            "stop": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "maxItems": 4}]},
            "n": {"type": "integer", "enum": [1]},
            "user": {"type": "string"},
        },
    },
    "ChatCompletion": {
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "object": {"type": "string", "enum": ["chat.completion"]},
            "created": {"type": "integer"},
            "model": {"type": "string"},
            "choices": {"type": "array", "items": {"type": "object"}},
            "usage": {"type": "object"},
        },
    },
    "ModelObject": {
        "type": "object",
        "required": ["id", "object", "created", "owned_by"],
        "properties": {
            "id": {"type": "string"},
            "object": {"type": "string", "enum": ["model"]},
            "created": {"type": "integer"},
            "owned_by": {"type": "string"},
        },
    },
    "ModelObjectList": {
        "type": "object",
        "properties": {"object": {"type": "string"}, "data": {"type": "array", "items": _ref("ModelObject")}},
    },
    "MessagePage": {
        "type": "object",
        "required": ["results", "next"],
        "properties": {
            "results": {"type": "array", "items": _ref("Message")},
            "next": {"type": "string", "nullable": True},
        },
    },
}

_EVENT_ID = {"type": "integer", "minimum": 0, "maximum": 2**31 - 1}
_SECURITY = [{"apiKey": []}, {"cookieAuth": []}]
_ID = {"in": "path", "required": True, "schema": {"type": "integer"}}


def _op(op_id: str, tag: str, summary: str, responses: dict, **extra) -> dict:
    return {
        "operationId": op_id,
        "tags": [tag],
        "summary": summary,
        "security": _SECURITY,
        "responses": responses,
        **extra,
    }


def _send_responses(ok: str) -> dict:
    return {
        "200": {"description": "When streaming: the reply's event stream.", "content": _SSE},
        "201": {"description": "The stored reply.", "content": _json(_ref(ok))},
        **_errors(400, 401, 403, 404, 409, 413, 415, 422, 429),
        **_errors(502, 503, 504, schema="ReplyError"),
    }


def _paths() -> dict:
    conversation_id = [{"name": "conversation_id", **_ID}]
    message_id = [{"name": "message_id", **_ID}]
    idempotency = {
        "name": "Idempotency-Key",
        "in": "header",
        "required": False,
        "schema": {"type": "string", "maxLength": 255},
        "description": "A retried request with the same key returns the first result and creates nothing new.",
    }
    return {
        "/api/conversations/{conversation_id}/messages": {
            "get": _op(
                "messages_list",
                "messages",
                "A conversation's messages, oldest first.",
                {
                    "200": {"description": "A page.", "content": _json(_ref("MessagePage"))},
                    **_errors(400, 401, 403, 404),
                },
                parameters=[
                    *conversation_id,
                    {"name": "cursor", "in": "query", "schema": {"type": "string"}},
                    {"name": "page_size", "in": "query", "schema": {"type": "integer"}},
                ],
            ),
            "post": _op(
                "messages_send",
                "messages",
                "Send a message; the user's message is stored before the model is called.",
                _send_responses("SendResponse"),
                parameters=[*conversation_id, idempotency],
                requestBody={"required": True, "content": _json(_ref("SendRequest"))},
            ),
        },
        "/api/chat": {
            "post": _op(
                "chat",
                "messages",
                "One-shot chat: creates the conversation when none is given.",
                _send_responses("SendResponse"),
                parameters=[idempotency],
                requestBody={"required": True, "content": _json(_ref("ChatRequest"))},
            )
        },
        "/api/messages/{message_id}/regenerate": {
            "post": _op(
                "messages_regenerate",
                "messages",
                "A new reply to the same user message.",
                _send_responses("RegenerateResponse"),
                parameters=message_id,
                requestBody={
                    "required": False,
                    "content": _json(
                        {"type": "object", "properties": {"stream": {"type": "boolean", "default": False}}}
                    ),
                },
            )
        },
        "/api/messages/{message_id}/cancel": {
            "post": _op(
                "messages_cancel",
                "messages",
                "Stop a streaming reply; the partial text is kept as `cancelled`.",
                {
                    "200": {"description": "The reply.", "content": _json(_ref("Message"))},
                    **_errors(400, 401, 403, 404, 409),
                },
                parameters=message_id,
            )
        },
        "/api/messages/{message_id}/stream": {
            "get": _op(
                "messages_stream",
                "messages",
                "Reconnect to a reply's events after `Last-Event-ID` (or `?after=`).",
                {"200": {"description": "The event stream.", "content": _SSE}, **_errors(400, 401, 403, 404)},
                parameters=[
                    *message_id,
                    {"name": "Last-Event-ID", "in": "header", "schema": _EVENT_ID},
                    {"name": "after", "in": "query", "schema": _EVENT_ID},
                ],
            )
        },
        "/v1/chat/completions": {
            "post": _op(
                "openai_chat_completions",
                "openai",
                "OpenAI-compatible chat completion (streaming or not).",
                {
                    "200": {
                        "description": "A completion, or chunks as Server-Sent Events ending in `data: [DONE]`.",
                        "content": {**_json(_ref("ChatCompletion")), **_SSE},
                    },
                    **_errors(400, 401, 403, 404, 413, 415, 429, 502, 503, 504, schema="OpenAIError"),
                },
                requestBody={"required": True, "content": _json(_ref("ChatCompletionRequest"))},
            )
        },
        "/v1/models": {
            "get": _op(
                "openai_models",
                "openai",
                "Models this key may use, in OpenAI's format.",
                {
                    "200": {"description": "The list.", "content": _json(_ref("ModelObjectList"))},
                    **_errors(401, schema="OpenAIError"),
                },
            )
        },
        "/v1/models/{name}": {
            "get": _op(
                "openai_model_retrieve",
                "openai",
                "One model this key may use, in OpenAI's format.",
                {
                    "200": {"description": "The model.", "content": _json(_ref("ModelObject"))},
                    **_errors(401, 404, schema="OpenAIError"),
                },
                parameters=[{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}],
            )
        },
    }


def add_async_endpoints(result: dict, generator, request, public) -> dict:
    result.setdefault("components", {}).setdefault("schemas", {}).update(_SCHEMAS)
    result["components"].setdefault("securitySchemes", {})["cookieAuth"] = {
        "type": "apiKey",
        "in": "cookie",
        "name": settings.SESSION_COOKIE_NAME,
    }
    result.setdefault("paths", {}).update(_paths())
    return result
