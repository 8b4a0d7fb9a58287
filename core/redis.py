"""Redis clients for code that talks to Redis directly (rate limits, replay buffers,
quotas), with the same short timeouts as the cache and a circuit breaker.

Sync code uses django-redis's pooled client; async code gets a redis.asyncio
client per event loop (a client cannot cross loops), so the loop never blocks
on Redis.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from typing import Any

from django.conf import settings

logger = logging.getLogger("agentsflow.redis")

BREAKER_SECONDS = 2.0  # after an error, skip Redis this long instead of timing out again


class Breaker:
    """Fail fast while Redis is known to be down, and log the outage once."""

    def __init__(self) -> None:
        self.down_until = 0.0
        self.listeners: list = []

    @property
    def open(self) -> bool:
        return time.monotonic() < self.down_until

    def trip(self, operation: str, exc: Exception) -> None:
        if not self.open:
            logger.warning("redis unavailable (%s): %s", operation, exc.__class__.__name__)
        self.down_until = time.monotonic() + BREAKER_SECONDS
        for listener in self.listeners:
            listener(operation)

    def reset(self) -> None:
        self.down_until = 0.0


breaker = Breaker()
_async_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = weakref.WeakKeyDictionary()


def configured() -> bool:
    return bool(settings.REDIS_URL)


def sync_client():
    from django_redis import get_redis_connection

    return get_redis_connection("default")


def async_client():
    import redis.asyncio as aioredis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
    from redis.exceptions import ConnectionError

    loop = asyncio.get_running_loop()
    client = _async_clients.get(loop)
    if client is None:
        # Blocking: with all connections busy (a burst of streams), an operation waits
        # up to a socket timeout for one instead of failing "Too many connections",
        # which tripped the breaker and sent the whole process to its fallbacks.
        pool = aioredis.BlockingConnectionPool.from_url(
            settings.REDIS_URL,
            timeout=settings.REDIS_SOCKET_TIMEOUT,
            socket_timeout=settings.REDIS_SOCKET_TIMEOUT,
            socket_connect_timeout=settings.REDIS_SOCKET_TIMEOUT,
            max_connections=settings.REDIS_MAX_CONNECTIONS,
            retry_on_timeout=False,
            # Once, at once, on a fresh connection, and only when the connection was
            # closed (never a timeout): see agentsflow/settings.py.
            retry=Retry(NoBackoff(), 1, supported_errors=(ConnectionError,)),
        )
        client = _async_clients[loop] = aioredis.Redis(connection_pool=pool)
    return client


def guarded(operation: str, fallback: Any, call, *args: Any, **kwargs: Any) -> Any:
    """``call(*args, **kwargs)``, a sync use of Redis (through any client or cache);
    ``fallback`` if Redis is down: skipped while the breaker is open, which an
    error trips."""
    if breaker.open:
        return fallback
    try:
        return call(*args, **kwargs)
    except Exception as exc:
        breaker.trip(operation, exc)
        return fallback


def run(operation: str, fallback: Any, call) -> Any:
    """``call(client)`` on the sync client; ``fallback`` if Redis is down."""
    return guarded(operation, fallback, lambda: call(sync_client()))


async def arun(operation: str, fallback: Any, call, *, attempts: int = 1) -> Any:
    """``await call(client)`` on this loop's async client; ``fallback`` if Redis is down.

    ``attempts`` > 1 is for the few writes that must not be lost to one slow
    moment (a cancel request): they try again, and ignore an open breaker.
    """
    if breaker.open and attempts == 1:
        return fallback
    for attempt in range(attempts):
        try:
            return await call(async_client())
        except Exception as exc:
            if attempt == attempts - 1:
                breaker.trip(operation, exc)
    return fallback
