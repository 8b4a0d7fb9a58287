"""The platform's middleware, and async-native versions of Django's own.

Every class here works natively in both modes (sync under WSGI, async under
ASGI). Under ASGI a sync-only middleware costs a thread hop per request, which
PERF-NOTES.md measured as one of the larger costs of Django on this machine; so
Django's built-in middleware whose hooks do no I/O is run inline (``inline``),
and the session middleware hops to a thread only when it must save.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import time
from dataclasses import dataclass, field

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from csp.constants import HEADER as CSP_HEADER
from csp.constants import HEADER_REPORT_ONLY as CSP_HEADER_REPORT_ONLY
from csp.middleware import CheckableLazyObject
from csp.middleware import CSPMiddleware as _CSPMiddleware
from csp.utils import build_policy as build_csp_policy
from django.conf import settings
from django.contrib.auth.middleware import AuthenticationMiddleware as _AuthenticationMiddleware
from django.contrib.messages.middleware import MessageMiddleware as _MessageMiddleware
from django.contrib.messages.storage import default_storage
from django.contrib.sessions.middleware import SessionMiddleware as _SessionMiddleware
from django.core.signals import setting_changed
from django.db.backends.signals import connection_created
from django.dispatch import receiver
from django.http import HttpRequest, HttpResponse
from django.middleware.clickjacking import XFrameOptionsMiddleware as _XFrameOptionsMiddleware
from django.middleware.common import CommonMiddleware as _CommonMiddleware
from django.middleware.csrf import CsrfViewMiddleware as _CsrfViewMiddleware
from django.middleware.gzip import GZipMiddleware as _GZipMiddleware
from django.middleware.security import SecurityMiddleware as _SecurityMiddleware
from django.utils.functional import SimpleLazyObject, empty
from django_prometheus.middleware import PrometheusAfterMiddleware as _PrometheusAfterMiddleware
from django_prometheus.middleware import PrometheusBeforeMiddleware as _PrometheusBeforeMiddleware

from core import metrics, ratelimit
from core.authentication import authenticate_key, request_key
from core.db import database_sync_to_async
from core.exceptions import (
    database_error_as_api_exception,
    describe_database_error,
    error_body,
    error_response,
    is_api_path,
    json_response,
)
from core.net import client_ip

logger = logging.getLogger("agentsflow.errors")
access_logger = logging.getLogger("agentsflow.access")
slow_query_logger = logging.getLogger("agentsflow.slow_query")


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


def inline(middleware_class):
    """A MiddlewareMixin class whose hooks do no I/O, run inline under ASGI
    (Django would run each hook in a thread, in case it blocked)."""

    class Inline(middleware_class):
        def __init__(self, get_response) -> None:
            super().__init__(get_response)
            if self.async_mode and hasattr(self, "process_view"):
                sync_process_view = self.process_view

                async def process_view(*args):
                    return sync_process_view(*args)

                self.process_view = process_view

        async def __acall__(self, request):
            response = None
            if hasattr(self, "process_request"):
                response = self.process_request(request)
            response = response or await self.get_response(request)
            if hasattr(self, "process_response"):
                response = self.process_response(request, response)
            return response

    Inline.__name__ = Inline.__qualname__ = middleware_class.__name__
    Inline.__doc__ = f"Django's {middleware_class.__name__}, with its hooks run inline under ASGI."
    return Inline


SecurityMiddleware = inline(_SecurityMiddleware)
CommonMiddleware = inline(_CommonMiddleware)
CsrfViewMiddleware = inline(_CsrfViewMiddleware)
AuthenticationMiddleware = inline(_AuthenticationMiddleware)
XFrameOptionsMiddleware = inline(_XFrameOptionsMiddleware)
PrometheusBeforeMiddleware = inline(_PrometheusBeforeMiddleware)
PrometheusAfterMiddleware = inline(_PrometheusAfterMiddleware)


class SessionMiddleware(_SessionMiddleware):
    """Inline under ASGI, except the save of a modified session (I/O), which hops to a thread."""

    async def __acall__(self, request):
        self.process_request(request)
        response = await self.get_response(request)
        if request.session.modified or settings.SESSION_SAVE_EVERY_REQUEST:
            return await sync_to_async(self.process_response)(request, response)
        return self.process_response(request, response)


class MessageMiddleware(inline(_MessageMiddleware)):
    """Django's, with the message storage built on first use: API requests never use
    it, and building it (a cookie signer, a session lookup) was 5 % of a cached read."""

    def process_request(self, request):
        request._messages = SimpleLazyObject(lambda: default_storage(request))

    def process_response(self, request, response):
        messages = getattr(request, "_messages", None)
        if isinstance(messages, SimpleLazyObject) and messages._wrapped is empty:
            return response  # never used: nothing to store
        return super().process_response(request, response)


_OWN_POLICY_ATTRIBUTES = tuple(f"_csp_{kind}{ro}" for kind in ("config", "update", "replace") for ro in ("", "_ro"))
_PLAIN_POLICIES = (  # header, the attribute that exempts a response, report-only
    (CSP_HEADER, "_csp_exempt", False),
    (CSP_HEADER_REPORT_ONLY, "_csp_exempt_ro", True),
)


@functools.cache
def _plain_policy(report_only: bool) -> tuple[str, tuple[str, ...]]:
    """The policy, and the path prefixes it is not sent on."""
    setting = "CONTENT_SECURITY_POLICY_REPORT_ONLY" if report_only else "CONTENT_SECURITY_POLICY"
    excluded = tuple((getattr(settings, setting, None) or {}).get("EXCLUDE_URL_PREFIXES") or ())
    return build_csp_policy(report_only=report_only), excluded


@receiver(setting_changed)
def _forget_plain_policies(setting, **kwargs) -> None:
    if setting.startswith("CONTENT_SECURITY_POLICY"):
        _plain_policy.cache_clear()


class CSPMiddleware(inline(_CSPMiddleware)):
    """django-csp. A response without a nonce or a policy of its own (every JSON
    response) gets policies built once per process: django-csp builds both on every
    response, 8 % of a cached read. Anything else goes through django-csp itself."""

    def process_response(self, request, response):
        own_policy = any(getattr(response, name, None) is not None for name in _OWN_POLICY_ATTRIBUTES)
        if own_policy or settings.DEBUG or getattr(request, "_csp_nonce", None) is not None:
            return super().process_response(request, response)
        for header, exempt, report_only in _PLAIN_POLICIES:
            policy, excluded = _plain_policy(report_only)
            wanted = header not in response and not getattr(response, exempt, False)
            if policy and wanted and not request.path_info.startswith(excluded):
                response[header] = policy
        # As django-csp does: a nonce asked for after the header is written is an error.
        request.csp_nonce = CheckableLazyObject(self._csp_nonce_post_response)
        return response


class GZipMiddleware(inline(_GZipMiddleware)):
    """GZip for bodies of at least GZIP_MIN_BYTES, never for streams (SSE must flush each event)."""

    def process_response(self, request, response):
        if response.streaming or len(response.content) < settings.GZIP_MIN_BYTES:
            return response
        return super().process_response(request, response)


class SecurityHeadersMiddleware(DualModeMiddleware):
    """The headers Django does not set itself (CSP comes from django-csp)."""

    def after(self, request, response):
        response.headers.setdefault("Permissions-Policy", settings.PERMISSIONS_POLICY)
        response.headers.setdefault("Cross-Origin-Opener-Policy", "same-origin")
        return response


# --- Request timing, access log and database time -------------------------------------


@dataclass
class RequestStats:
    path: str
    queries: int = 0
    db_seconds: float = 0.0
    slow: list = field(default_factory=list)


_current = contextvars.ContextVar[RequestStats | None]("agentsflow_request_stats", default=None)


def _timed_execute(execute, sql, params, many, context):
    """Installed on every database connection: counts each query against the current
    request (the context variable follows the request into sync_to_async threads)
    and logs the slow ones with their SQL, never their parameter values."""
    started = time.perf_counter()
    try:
        return execute(sql, params, many, context)
    finally:
        elapsed = time.perf_counter() - started
        stats = _current.get()
        if stats is not None:
            stats.queries += 1
            stats.db_seconds += elapsed
        if elapsed * 1000 >= settings.SLOW_QUERY_MS:
            metrics.SLOW_QUERIES.inc()
            slow_query_logger.warning(
                "slow query",
                extra={
                    "duration_ms": round(elapsed * 1000, 1),
                    "sql": sql[:4000],
                    "params": "<redacted>" if params else None,
                    "path": stats.path if stats else None,
                },
            )


@receiver(connection_created)
def _instrument_connection(sender, connection, **kwargs) -> None:
    if _timed_execute not in connection.execute_wrappers:
        connection.execute_wrappers.append(_timed_execute)


class RequestTimingMiddleware(DualModeMiddleware):
    """Outermost: ``X-Process-Time``, one JSON access-log line and the latency
    metrics for every request, including the ones answered by middleware
    (413, 429)."""

    def before(self, request):
        request._timing = (time.perf_counter(), _current.set(RequestStats(path=request.path)))
        return None

    def after(self, request, response):
        started, token = request._timing
        stats = _current.get()
        _current.reset(token)
        elapsed = time.perf_counter() - started
        response["X-Process-Time"] = f"{elapsed:.4f}"
        metrics.REQUEST_LATENCY.labels(request.method, f"{response.status_code // 100}xx").observe(elapsed)
        metrics.REQUEST_DB_TIME.observe(stats.db_seconds if stats else 0.0)
        if stats and stats.queries:
            metrics.DB_QUERIES.inc(stats.queries)
        metrics.sample_process_memory()
        if settings.ACCESS_LOG:
            access_logger.info(
                "request",
                extra={
                    "method": request.method,
                    "path": request.path,
                    "status": response.status_code,
                    "duration_ms": round(elapsed * 1000, 2),
                    "db_ms": round(stats.db_seconds * 1000, 2) if stats else 0,
                    "db_queries": stats.queries if stats else 0,
                    "caller": _caller_label(request),
                    "client_ip": client_ip(request.META),
                },
            )
        return response


def _caller_label(request) -> str | None:
    auth = getattr(request, "api_key_auth", None)
    if auth:
        return f"key:{auth[1].prefix}"
    user = getattr(request, "_cached_user", None)  # set only if something already loaded it
    return f"user:{user.pk}" if user is not None and user.is_authenticated else None


# --- Body size, timeouts, rate limits, errors -------------------------------------------


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


class QueryStringMiddleware(DualModeMiddleware):
    """Refuse an API query string holding a NUL character with a JSON 400: PostgreSQL
    text cannot hold one, so a filter on it would fail as a 500 (JSON bodies are
    refused the same way by core.parsers)."""

    def before(self, request: HttpRequest) -> HttpResponse | None:
        query = request.META.get("QUERY_STRING", "")
        if ("%00" not in query and "\x00" not in query) or not is_api_path(request.path):
            return None
        if any("\x00" in key or any("\x00" in value for value in values) for key, values in request.GET.lists()):
            return error_response(400, "bad_request", "NUL characters are not allowed in the query string.")
        return None


class RequestTimeoutMiddleware(DualModeMiddleware):
    """Under ASGI, a request that has not produced its response after
    REQUEST_TIMEOUT_SECONDS is cancelled and answered 504 (a stream counts from its
    first byte, which the model call itself bounds). Under WSGI a thread cannot be
    interrupted; there the database statement timeout and the provider timeouts
    bound the work instead."""

    async def _acall(self, request):
        try:
            return await asyncio.wait_for(self.get_response(request), settings.REQUEST_TIMEOUT_SECONDS)
        except TimeoutError:
            logger.warning("request timed out after %ss: %s", settings.REQUEST_TIMEOUT_SECONDS, request.path)
            return error_response(504, "timeout", "The request took too long and was cancelled.")


def _rate_limited(request, decision: ratelimit.Decision) -> HttpResponse:
    message = (
        f"Rate limit of {decision.limit} requests per minute exceeded ({decision.tier} tier); "
        f"retry in {decision.retry_after} s."
    )
    if request.path.startswith("/v1/"):
        body = {"error": {"message": message, "type": "rate_limit_error", "param": None, "code": "rate_limited"}}
        response = json_response(body, status=429)
    else:
        response = json_response(error_body(429, "rate_limited", message), status=429)
    response["Retry-After"] = str(decision.retry_after)
    return response


class RateLimitMiddleware(DualModeMiddleware):
    """Tiered limits on /api/ and /v1/ (core.ratelimit); RateLimit-* headers on every
    API response, a JSON 429 with Retry-After over the limit.

    It authenticates an API key itself (the lookup is cached) and leaves the
    result on the request, where the views' authentication picks it up.
    """

    def __call__(self, request):
        if not is_api_path(request.path):
            return self.get_response(request)
        if self.async_mode:
            return self._acall(request)
        user, key = self._identify(request)
        decision = ratelimit.hit(ratelimit.caller_for(user, key, client_ip(request.META)))
        return self._respond(request, decision, None if decision.allowed else _rate_limited(request, decision))

    async def _acall(self, request):
        candidate = request_key(request)
        if candidate is not None:
            request.api_key_auth = await database_sync_to_async(authenticate_key)(candidate)
            user, key = request.api_key_auth or (None, None)
        else:
            user, key = await request.auser(), None
        decision = await ratelimit.ahit(ratelimit.caller_for(user, key, client_ip(request.META)))
        rejected = None if decision.allowed else _rate_limited(request, decision)
        response = rejected or await self.get_response(request)
        return self._headers(response, decision)

    def _identify(self, request):
        candidate = request_key(request)
        if candidate is not None:
            request.api_key_auth = authenticate_key(candidate)
            return request.api_key_auth or (None, None)
        return request.user, None

    def _respond(self, request, decision, rejected):
        response = rejected or self.get_response(request)
        return self._headers(response, decision)

    @staticmethod
    def _headers(response, decision):
        if not decision.allowed:
            metrics.RATE_LIMITED.labels(decision.tier).inc()
        for name, value in decision.headers().items():
            response.headers.setdefault(name, value)
        return response


class ApiExceptionMiddleware(DualModeMiddleware):
    """An exception that escapes a view under /api/ or /v1/ becomes JSON, even with DEBUG on."""

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if not is_api_path(request.path):
            return None
        mapped = database_error_as_api_exception(exception)
        if mapped is not None:
            logger.warning("database unavailable on %s: %s", request.path, describe_database_error(exception))
            response = error_response(mapped.status_code, mapped.default_code, str(mapped.detail))
            if mapped.status_code == 503:
                response["Retry-After"] = "2"
            return response
        logger.exception("unhandled error on %s", request.path)
        return error_response(500, "server_error", "Internal server error.")
