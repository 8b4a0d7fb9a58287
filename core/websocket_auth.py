"""WebSocket handshake authentication: an API key from a header (programs) or the
session cookie (browsers).

A key is never read from the query string, since URLs end up in logs. A
cookie-authenticated handshake must carry an Origin naming one of our hosts
(otherwise any page could open a socket with the visitor's cookie); a foreign
Origin is refused whatever the credentials. The consumer closes unauthenticated
sockets itself, with code 4401, before any model call. When the database cannot
say who the caller is (down, its pool exhausted), the socket is accepted and
closed with 1013 (try again later) instead of failing the handshake with a 500.
"""

from __future__ import annotations

import logging
from urllib.parse import urlparse

from channels.auth import get_user
from channels.security.websocket import OriginValidator, WebsocketDenier
from channels.sessions import CookieMiddleware, SessionMiddleware
from django.conf import settings
from django.contrib.auth.models import AnonymousUser

from core.asgi import CLOSE_TRY_AGAIN, accept_and_close
from core.authentication import authenticate_key, key_from_headers
from core.db import database_sync_to_async
from core.exceptions import database_error_as_api_exception, describe_database_error

logger = logging.getLogger("agentsflow.errors")


def _allowed_origins() -> list[str]:
    hosts = list(settings.ALLOWED_HOSTS)
    if settings.DEBUG:
        hosts += ["localhost", "127.0.0.1", "[::1]"]
    return hosts


class APIKeyOrSessionAuthMiddleware:
    def __init__(self, inner) -> None:
        self.inner = inner
        self.with_session = CookieMiddleware(SessionMiddleware(self._as_caller))
        self.origins = OriginValidator(None, _allowed_origins())

    async def __call__(self, scope, receive, send):
        origin, candidate = _origin_and_key(scope)
        if origin is not None and not self.origins.valid_origin(urlparse(origin)):
            return await WebsocketDenier()(scope, receive, send)

        if candidate is not None:
            return await self._as_caller(scope, receive, send, candidate)

        if origin is None:
            return await WebsocketDenier()(scope, receive, send)
        return await self.with_session(scope, receive, send)

    async def _as_caller(self, scope, receive, send, candidate: str | None = None):
        """Run the consumer as the API key's owner (the session's user without a key),
        or close 1013 when the database needed to find them is unavailable."""
        try:
            user, identity = await _caller(scope, candidate)
        except Exception as exc:
            if database_error_as_api_exception(exc) is None:
                raise
            logger.warning("websocket refused, database unavailable: %s", describe_database_error(exc))
            return await accept_and_close(receive, send, CLOSE_TRY_AGAIN)
        return await self.inner({**scope, "user": user, "auth": identity}, receive, send)


def _origin_and_key(scope) -> tuple[str | None, str | None]:
    """The handshake's Origin and API key. (A function of its own: the decoded
    headers are not kept alive by ``__call__``'s frame, which lasts as long as the socket.)"""
    headers = {name.decode("latin1").lower(): value.decode("latin1") for name, value in scope.get("headers", [])}
    return headers.get("origin"), key_from_headers(headers.get)


async def _caller(scope, candidate: str | None):
    """(user, key identity): AnonymousUser and None when the credentials are not valid."""
    if candidate is None:
        return await get_user(scope), None
    result = await database_sync_to_async(authenticate_key)(candidate)
    return result or (AnonymousUser(), None)
