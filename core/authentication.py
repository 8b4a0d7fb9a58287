"""API-key authentication, shared by DRF views, async views and WebSocket consumers.

A key is checked in three steps: its format and checksum (no I/O), a cached
lookup by its public prefix, and a constant-time comparison of SHA-256 digests.
Every failure answers the same way, so a caller learns nothing about which step
failed.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.db import DatabaseError
from django.utils import timezone
from rest_framework import authentication, exceptions

from core import keys
from core.cache import two_tier
from core.exceptions import describe_database_error
from core.models import APIKey, User

logger = logging.getLogger("agentsflow.errors")

INVALID_KEY_MESSAGE = "Invalid API key."
ALL_SCOPES = frozenset(APIKey.Scope.values)


@dataclass(frozen=True, slots=True)
class KeyIdentity:
    """What ``request.auth`` holds for a request authenticated by an API key."""

    id: int
    prefix: str
    user_id: int
    scopes: frozenset[str]
    rate_limit_per_minute: int | None

    def allows(self, scope: str) -> bool:
        return scope in self.scopes or APIKey.Scope.ADMIN in self.scopes


@dataclass(frozen=True, slots=True)
class _CachedKey:
    secret_hash: str
    identity: KeyIdentity
    user: User
    expires_at: datetime | None
    revoked: bool


def _load_key(prefix: str) -> _CachedKey | None:
    key = APIKey.objects.select_related("user").filter(prefix=prefix).first()
    if key is None:
        return None
    identity = KeyIdentity(
        id=key.pk,
        prefix=key.prefix,
        user_id=key.user_id,
        scopes=frozenset(key.scopes),
        rate_limit_per_minute=key.rate_limit_per_minute,
    )
    return _CachedKey(
        secret_hash=key.secret_hash,
        identity=identity,
        user=key.user,
        expires_at=key.expires_at,
        revoked=key.revoked_at is not None,
    )


def invalidate_key(prefix: str) -> None:
    two_tier.delete("apikey", prefix)


def authenticate_key(candidate: str) -> tuple[User, KeyIdentity] | None:
    """The user and key identity for a valid, live key; None for anything else."""
    prefix = keys.prefix_of(candidate)
    if prefix is None:
        return None
    cached = two_tier.get_or_compute(
        "apikey",
        prefix,
        lambda: _load_key(prefix),
        ttl=settings.API_KEY_CACHE_SECONDS,
        cache_none=True,
    )
    if cached is None or not keys.matches(candidate, cached.secret_hash):
        return None
    if cached.revoked or (cached.expires_at is not None and cached.expires_at <= timezone.now()):
        return None
    if not cached.user.is_active:
        return None
    _touch_last_used(cached.identity)
    return cached.user, cached.identity


_last_touched: dict[str, float] = {}


def _touch_last_used(identity: KeyIdentity) -> None:
    """Write ``last_used_at`` at most once a minute per key, across all processes:
    a memory check first (free), then an atomic claim in the shared cache."""
    interval = settings.API_KEY_LAST_USED_INTERVAL
    now = time.monotonic()
    if now - _last_touched.get(identity.prefix, float("-inf")) < interval:
        return
    if len(_last_touched) > 10_000:
        _last_touched.clear()
    _last_touched[identity.prefix] = now
    if two_tier.claim(f"apikey-used:{identity.prefix}", interval):
        try:
            APIKey.objects.filter(pk=identity.id).update(last_used_at=timezone.now())
        except DatabaseError as exc:
            # Bookkeeping only: a key the cache vouches for keeps working while the
            # database is down or its pool exhausted (a cached read needs no database).
            logger.warning("API key last_used_at not written: %s", describe_database_error(exc))


def key_from_headers(get_header) -> str | None:
    """The API key a request carries, from ``Authorization: Bearer`` or ``X-API-Key``.

    ``get_header`` maps a lower-case header name to its value (or None), so the
    same code serves Django requests and ASGI scopes.
    """
    api_key = get_header("x-api-key")
    if api_key:
        return api_key.strip()
    authorization = get_header("authorization")
    if authorization:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() == "bearer":
            return token.strip()
    return None


def request_key(request) -> str | None:
    return key_from_headers(lambda name: request.headers.get(name))


_NOT_CHECKED = object()


def request_key_auth(request, candidate: str):
    """The key check's result, reusing the one the rate-limit middleware already made."""
    django_request = getattr(request, "_request", request)
    result = getattr(django_request, "api_key_auth", _NOT_CHECKED)
    return authenticate_key(candidate) if result is _NOT_CHECKED else result


class APIKeyAuthentication(authentication.BaseAuthentication):
    def authenticate(self, request):
        candidate = request_key(request)
        if candidate is None:
            return None
        result = request_key_auth(request, candidate)
        if result is None:
            raise exceptions.AuthenticationFailed(INVALID_KEY_MESSAGE)
        return result

    def authenticate_header(self, request) -> str:
        return 'Bearer realm="api"'
