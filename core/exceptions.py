"""One JSON error shape for everything under /api/:

    {"status": 404, "code": "not_found", "message": "Not found.", "details": {...}}

``details`` maps field names to lists of messages (only for validation errors).
"""

from __future__ import annotations

import logging
import sys

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import RequestDataTooBig
from django.db import DatabaseError, InterfaceError, OperationalError
from django.http import Http404, HttpResponse
from rest_framework import exceptions, status
from rest_framework.response import Response

logger = logging.getLogger("agentsflow.errors")


class PayloadTooLarge(exceptions.APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_detail = "The request body is too large."
    default_code = "payload_too_large"


class ServiceUnavailable(exceptions.APIException):
    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_detail = "The service is temporarily unavailable; retry shortly."
    default_code = "service_unavailable"


class GatewayTimeout(exceptions.APIException):
    status_code = status.HTTP_504_GATEWAY_TIMEOUT
    default_detail = "The operation took too long and was cancelled."
    default_code = "timeout"


def error_body(status_code: int, code: str, message: str, details: dict | None = None) -> dict:
    body = {"status": status_code, "code": code, "message": message}
    if details:
        body["details"] = details
    return body


def json_response(data, status: int = 200) -> HttpResponse:
    """A JSON response serialised with orjson, like every DRF response."""
    from core.renderers import dumps

    return HttpResponse(dumps(data), status=status, content_type="application/json")


def error_response(status_code: int, code: str, message: str, details: dict | None = None) -> HttpResponse:
    return json_response(error_body(status_code, code, message, details), status=status_code)


def _flatten_details(detail) -> dict:
    """DRF validation details as {field: [messages]}, nested fields joined with dots."""
    if isinstance(detail, list):
        return {"non_field_errors": [str(item) for item in detail]}
    flat: dict[str, list[str]] = {}
    for field, value in detail.items():
        if isinstance(value, dict):
            for sub_field, messages in _flatten_details(value).items():
                flat[f"{field}.{sub_field}"] = messages
        elif isinstance(value, list):
            flat[field] = [str(item) for item in value]
        else:
            flat[field] = [str(value)]
    return flat


def describe_database_error(exc: BaseException) -> str:
    """The error's class and the first line of its message (at most 200 characters):
    enough to tell a refused connection from a pool timeout in the log."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:200]}" if lines else type(exc).__name__


def database_error_as_api_exception(exc: Exception) -> exceptions.APIException | None:
    """Turn a database outage or statement timeout into 503/504 instead of a 500."""
    try:
        from psycopg.errors import QueryCanceled
        from psycopg_pool import PoolTimeout
    except ImportError:  # SQLite-only installs
        QueryCanceled = PoolTimeout = ()  # type: ignore[assignment]  # noqa: N806
    cause = exc.__cause__ or exc
    if isinstance(exc, PoolTimeout) or isinstance(cause, PoolTimeout):
        return ServiceUnavailable("The database is busy or unreachable; retry shortly.")
    if isinstance(cause, QueryCanceled):
        return GatewayTimeout("The database query took too long and was cancelled.")
    if isinstance(exc, (OperationalError, InterfaceError)):
        return ServiceUnavailable("The database is unreachable; retry shortly.")
    return None


def api_exception_handler(exc, context):
    from rest_framework.views import exception_handler as drf_exception_handler  # imports settings: keep lazy

    if isinstance(exc, Http404):
        exc = exceptions.NotFound(*exc.args[:1])
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied()
    elif isinstance(exc, RequestDataTooBig):
        exc = PayloadTooLarge()
    elif isinstance(exc, DatabaseError) or type(exc).__name__ == "PoolTimeout":
        mapped = database_error_as_api_exception(exc)
        if mapped is None:
            return None
        logger.warning("database unavailable: %s", describe_database_error(exc))
        exc = mapped

    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, exceptions.ValidationError):
        body = error_body(response.status_code, "invalid", "Invalid input.", _flatten_details(exc.detail))
    else:
        detail = exc.detail if isinstance(exc, exceptions.APIException) else str(exc)
        codes = exc.get_codes() if isinstance(exc, exceptions.APIException) else "error"
        code = codes if isinstance(codes, str) else "error"
        body = error_body(response.status_code, code, str(detail))
    if response.status_code == 503:
        response.headers.setdefault("Retry-After", "2")
    return Response(body, status=response.status_code, headers=dict(response.headers))


# --- Django-level handlers (for errors that never reach a DRF view) -------------


def is_api_path(path: str) -> bool:
    return path.startswith("/api/") or path.startswith("/v1/")


def api_not_found(request, *args, **kwargs) -> HttpResponse:
    return error_response(404, "not_found", f"No API endpoint at {request.path}.")


def handler404(request, exception=None):
    if is_api_path(request.path):
        return api_not_found(request)
    from django.views.defaults import page_not_found

    return page_not_found(request, exception)


def handler500(request):
    # Django calls this while handling the exception, so it can still be looked at: a
    # database outage raised outside a view (a middleware authenticating an API key
    # that is not cached yet) is a 503 like one raised inside, not a server error.
    exc = sys.exc_info()[1]
    mapped = database_error_as_api_exception(exc) if exc is not None else None
    if mapped is not None:
        if is_api_path(request.path):
            response = error_response(mapped.status_code, mapped.default_code, str(mapped.detail))
        else:
            response = HttpResponse(str(mapped.detail), status=mapped.status_code, content_type="text/plain")
        if mapped.status_code == 503:
            response["Retry-After"] = "2"
        return response
    if is_api_path(request.path):
        return error_response(500, "server_error", "Internal server error.")
    from django.views.defaults import server_error

    return server_error(request)


def handler400(request, exception=None):
    if is_api_path(request.path):
        return error_response(400, "bad_request", "Bad request.")
    from django.views.defaults import bad_request

    return bad_request(request, exception)


def handler403(request, exception=None):
    if is_api_path(request.path):
        return error_response(403, "permission_denied", "You do not have permission to perform this action.")
    from django.views.defaults import permission_denied

    return permission_denied(request, exception)


def csrf_failure(request, reason: str = ""):
    if is_api_path(request.path):
        return error_response(403, "csrf_failed", f"CSRF check failed: {reason}")
    from django.views.csrf import csrf_failure as default_csrf_failure

    return default_csrf_failure(request, reason)
