"""WebSocket handshake authentication: an API key from a header (programs) or the
session cookie (browsers).

A key is never read from the query string, since URLs end up in logs. A
cookie-authenticated handshake must carry an Origin naming one of our hosts
(otherwise any page could open a socket with the visitor's cookie); a foreign
Origin is refused whatever the credentials. The consumer closes unauthenticated
sockets itself, with code 4401, before any model call.
"""

from __future__ import annotations

from urllib.parse import urlparse

from channels.auth import AuthMiddlewareStack
from channels.db import database_sync_to_async
from channels.security.websocket import OriginValidator, WebsocketDenier
from django.conf import settings
from django.contrib.auth.models import AnonymousUser

from core.authentication import authenticate_key, key_from_headers


def _allowed_origins() -> list[str]:
    hosts = list(settings.ALLOWED_HOSTS)
    if settings.DEBUG:
        hosts += ["localhost", "127.0.0.1", "[::1]"]
    return hosts


class APIKeyOrSessionAuthMiddleware:
    def __init__(self, inner) -> None:
        self.inner = inner
        self.session_stack = AuthMiddlewareStack(inner)
        self.origins = OriginValidator(None, _allowed_origins())

    async def __call__(self, scope, receive, send):
        headers = {name.decode("latin1").lower(): value.decode("latin1") for name, value in scope.get("headers", [])}
        origin = headers.get("origin")
        if origin is not None and not self.origins.valid_origin(urlparse(origin)):
            return await WebsocketDenier()(scope, receive, send)

        candidate = key_from_headers(headers.get)
        if candidate is not None:
            result = await database_sync_to_async(authenticate_key)(candidate)
            user, identity = result if result else (AnonymousUser(), None)
            return await self.inner({**scope, "user": user, "auth": identity}, receive, send)

        if origin is None:
            return await WebsocketDenier()(scope, receive, send)
        return await self.session_stack({**scope, "auth": None}, receive, send)
