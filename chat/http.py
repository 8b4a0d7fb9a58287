"""Plumbing for the async views that call models (REST send, SSE, OpenAI API).

They are plain Django async views rather than DRF views so that a reply can
stream and a waiting request holds no thread. This module gives them the same
authentication (API key or session + CSRF), scope checks, JSON parsing and
error shape as the DRF views.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt
from rest_framework.authentication import CSRFCheck
from rest_framework.exceptions import APIException, ValidationError

from chat.providers.base import ProviderError
from core.authentication import INVALID_KEY_MESSAGE, KeyIdentity, authenticate_key, request_key
from core.db import database_sync_to_async
from core.exceptions import _flatten_details, database_error_as_api_exception, error_response
from core.parsers import parse_json_body, read_limited


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, details: dict | None = None, headers=None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.details = status, code, message, details
        self.headers = headers or {}


@dataclass(frozen=True, slots=True)
class Caller:
    user: object
    key: KeyIdentity | None

    @property
    def api_key_id(self) -> int | None:
        return self.key.id if self.key else None


def _csrf_failure(request: HttpRequest) -> str | None:
    """DRF's own check: the reason a session write fails CSRF, or None."""
    check = CSRFCheck(lambda req: None)
    check.process_request(request)
    return check.process_view(request, None, (), {})


async def authenticate(request: HttpRequest, scopes: tuple[str, ...]) -> Caller:
    """The caller, by API key or by session (with CSRF on unsafe methods)."""
    candidate = request_key(request)
    if candidate is not None:
        result = getattr(request, "api_key_auth", None) or await database_sync_to_async(authenticate_key)(candidate)
        if result is None:
            raise ApiError(401, "authentication_failed", INVALID_KEY_MESSAGE, headers={"WWW-Authenticate": "Bearer"})
        user, identity = result
        missing = [scope for scope in scopes if not identity.allows(scope)]
        if missing:
            names = ", ".join(f"'{scope}'" for scope in missing)
            raise ApiError(403, "permission_denied", f"This API key lacks the {names} scope.")
        return Caller(user=user, key=identity)
    user = await request.auser()
    if not user.is_authenticated:
        raise ApiError(
            401,
            "not_authenticated",
            "Authentication credentials were not provided.",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if request.method not in ("GET", "HEAD", "OPTIONS") and (reason := _csrf_failure(request)):
        raise ApiError(403, "permission_denied", f"CSRF Failed: {reason}")
    return Caller(user=user, key=None)


def json_body(request: HttpRequest) -> dict:
    """The request's JSON object body (415 for other media types, 400 for bad JSON)."""
    content_type = request.content_type or ""
    if content_type != "application/json":
        raise ApiError(415, "unsupported_media_type", f'Unsupported media type "{content_type}" in request.')
    body = parse_json_body(read_limited(request, settings.DATA_UPLOAD_MAX_MEMORY_SIZE))
    if not isinstance(body, dict):
        raise ApiError(400, "parse_error", "The request body must be a JSON object.")
    return body


def validate(serializer_class, data: dict) -> dict:
    serializer = serializer_class(data=data)
    if not serializer.is_valid():
        raise ValidationError(serializer.errors)
    return serializer.validated_data


def platform_error(exc: Exception) -> ApiError | None:
    """Any exception the async views may see, as the platform's API error."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, ValidationError):
        return ApiError(400, "invalid", "Invalid input.", _flatten_details(exc.detail))
    if isinstance(exc, APIException):
        code = exc.get_codes() if isinstance(exc.get_codes(), str) else "error"
        retry_after = getattr(exc, "retry_after", None) or getattr(exc, "wait", None)
        headers = {"Retry-After": str(int(retry_after))} if retry_after else None
        return ApiError(exc.status_code, code, str(exc.detail), headers=headers)
    if isinstance(exc, ProviderError):
        return ApiError(exc.status, exc.code, str(exc) or "The model provider failed.")
    mapped = database_error_as_api_exception(exc)
    if mapped is not None:
        return ApiError(mapped.status_code, mapped.default_code, str(mapped.detail), headers={"Retry-After": "2"})
    from django.http import Http404

    if isinstance(exc, Http404):
        return ApiError(404, "not_found", str(exc) or "Not found.")
    return None


def render_platform_error(error: ApiError) -> HttpResponse:
    response = error_response(error.status, error.code, error.message, error.details)
    for name, value in error.headers.items():
        response[name] = value
    return response


def api_view(
    *, methods: tuple[str, ...], scopes: tuple[str, ...] = (), render_error=render_platform_error
) -> Callable[[Callable[..., Awaitable[HttpResponse]]], Callable[..., Awaitable[HttpResponse]]]:
    """Wrap an async view: method check, authentication, scopes and JSON errors.

    The view receives ``(request, caller, **url_kwargs)``.
    """

    def decorate(view):
        @csrf_exempt
        @functools.wraps(view)
        async def wrapper(request: HttpRequest, **kwargs) -> HttpResponse:
            try:
                if request.method not in methods:
                    raise ApiError(405, "method_not_allowed", f'Method "{request.method}" not allowed.')
                caller = await authenticate(request, scopes)
                return await view(request, caller, **kwargs)
            except Exception as exc:
                error = platform_error(exc)
                if error is None:
                    raise
                return render_error(error)

        return wrapper

    return decorate
