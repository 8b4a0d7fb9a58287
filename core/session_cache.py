"""The sessions' cache: django-redis behind core.redis's breaker.

Sessions are stored in the database and cached in Redis (``cached_db``), so a
Redis that cannot answer only costs the cache. With django-redis's
IGNORE_EXCEPTIONS every read still waited for the socket timeout first: with
Redis stalled, each page a signed-in user opened paid it. Here an error trips
the breaker that the rate limits, quotas and the two-tier cache share, and
while it is open the session store goes straight to the database.
"""

from __future__ import annotations

from django_redis.cache import RedisCache

from core import redis


class BreakerRedisCache(RedisCache):
    """Never raises: a failed or skipped read is a miss, a failed or skipped write
    did not happen (the session is in the database either way)."""

    def get(self, key, default=None, version=None, client=None):
        return redis.guarded("sessions", default, super().get, key, default=default, version=version, client=client)

    def set(self, *args, **kwargs):
        return redis.guarded("sessions", False, super().set, *args, **kwargs)

    def add(self, *args, **kwargs):
        return redis.guarded("sessions", False, super().add, *args, **kwargs)

    def delete(self, *args, **kwargs):
        return redis.guarded("sessions", False, super().delete, *args, **kwargs)

    def has_key(self, *args, **kwargs):
        return redis.guarded("sessions", False, super().has_key, *args, **kwargs)

    def touch(self, *args, **kwargs):
        return redis.guarded("sessions", False, super().touch, *args, **kwargs)
