"""The platform's own middleware.

Each class works natively in both modes (sync under WSGI, async under ASGI):
a sync-only middleware costs a thread hop per request under ASGI, which
PERF-NOTES.md measured as one of the larger costs of Django on this machine.
"""

from __future__ import annotations

import logging

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings
from django.http import HttpRequest, HttpResponse

from core.exceptions import database_error_as_api_exception, error_response, is_api_path

logger = logging.getLogger("agentsflow.errors")


class DualModeMiddleware:
    """Subclasses implement ``before`` (may return a response) and/or ``after``."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response) -> None:
        self.get_response = get_response
        self.async_mode = iscoroutinefunction(get_response)
        if self.async_mode:
            markcoroutinefunction(self)

    def before(self, request: HttpRequest) -> HttpResponse | None:
        return None

    def after(self, request: HttpRequest, response: HttpResponse) -> HttpResponse:
        return response

    def __call__(self, request: HttpRequest):
        if self.async_mode:
            return self._acall(request)
        response = self.before(request)
        if response is None:
            response = self.get_response(request)
        return self.after(request, response)

    async def _acall(self, request: HttpRequest):
        response = self.before(request)
        if response is None:
            response = await self.get_response(request)
        return self.after(request, response)


class BodySizeLimitMiddleware(DualModeMiddleware):
    """Refuse a declared body over the limit with a JSON 413 before anything reads it.

    Bodies without a Content-Length (chunked) are capped where they are read
    (core.parsers.read_limited).
    """

    def before(self, request: HttpRequest) -> HttpResponse | None:
        declared = request.META.get("CONTENT_LENGTH")
        if not declared:
            return None
        try:
            length = int(declared)
        except ValueError:
            return error_response(400, "bad_request", "Content-Length must be an integer.")
        if length > settings.DATA_UPLOAD_MAX_MEMORY_SIZE:
            return error_response(
                413,
                "payload_too_large",
                f"The request body is {length} bytes; the limit is {settings.DATA_UPLOAD_MAX_MEMORY_SIZE}.",
            )
        return None


class ApiExceptionMiddleware(DualModeMiddleware):
    """An exception that escapes a view under /api/ or /v1/ becomes JSON, even with DEBUG on."""

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if not is_api_path(request.path):
            return None
        mapped = database_error_as_api_exception(exception)
        if mapped is not None:
            logger.warning("database unavailable on %s: %s", request.path, exception.__class__.__name__)
            response = error_response(mapped.status_code, mapped.default_code, str(mapped.detail))
            if mapped.status_code == 503:
                response["Retry-After"] = "2"
            return response
        logger.exception("unhandled error on %s", request.path)
        return error_response(500, "server_error", "Internal server error.")
