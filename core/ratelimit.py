"""Tiered rate limits for the API (and WebSocket messages).

Limits per minute: premium 200, regular 100, anonymous 50 (RATE_LIMIT_* env), or
the key's own ``rate_limit_per_minute``. A caller is counted by API key, else by
user, else by client IP (core.net.client_ip, so a forged X-Forwarded-For cannot
dodge it).

Counting is a sliding window over two fixed one-minute windows in Redis (one
round trip, a Lua script: INCRBY this window, read the last), so a burst across a
window boundary cannot double the limit and every worker process shares the
count. When Redis is unreachable the limiter fails open to a per-process counter
of the same shape (each process then allows the full limit) and counts the
fallback in the ``agentsflow_ratelimit_fallback_total`` metric so it can alert.
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from dataclasses import dataclass

from django.conf import settings
from redis.exceptions import NoScriptError

from core import redis
from core.authentication import KeyIdentity

WINDOW = 60


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    reset: int  # seconds until the current window ends
    tier: str

    @property
    def retry_after(self) -> int:
        return max(1, self.reset)

    def headers(self) -> dict[str, str]:
        return {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(self.reset),
        }


@dataclass(frozen=True, slots=True)
class Caller:
    bucket: str
    tier: str
    limit: int


def caller_for(user, key: KeyIdentity | None, ip: str) -> Caller:
    if key is not None:
        tier = getattr(user, "tier", "regular")
        return Caller(f"key:{key.prefix}", tier, key.rate_limit_per_minute or settings.RATE_LIMITS[tier])
    if user is not None and user.is_authenticated:
        return Caller(f"user:{user.pk}", user.tier, settings.RATE_LIMITS[user.tier])
    return Caller(f"ip:{ip}", "anonymous", settings.RATE_LIMITS["anonymous"])


def _estimate(current: int, previous: int, now: float) -> int:
    """The sliding-window count: this window's hits plus the last window's, weighted
    by how much of it still lies within the last 60 seconds."""
    elapsed = (now % WINDOW) / WINDOW
    return current + math.floor(previous * (1 - elapsed))


def _decide(caller: Caller, current: int, previous: int, now: float) -> Decision:
    count = _estimate(current, previous, now)
    return Decision(
        allowed=count <= caller.limit,
        limit=caller.limit,
        remaining=max(0, caller.limit - count),
        reset=WINDOW - int(now % WINDOW),
        tier=caller.tier,
    )


def _keys(bucket: str, now: float) -> tuple[str, str]:
    window = int(now // WINDOW)
    return f"rl:{bucket}:{window}", f"rl:{bucket}:{window - 1}"


class _LocalCounter:
    """The per-process fallback, same windows as Redis."""

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def hit(self, current_key: str, previous_key: str, increment: int) -> tuple[int, int]:
        with self._lock:
            if len(self._counts) > 50_000:
                self._counts.clear()
            self._counts[current_key] = self._counts.get(current_key, 0) + increment
            return self._counts[current_key], self._counts.get(previous_key, 0)

    def clear(self) -> None:
        with self._lock:
            self._counts.clear()


local_counter = _LocalCounter()
_fallback_listeners: list = []


def _fallback(caller: Caller, current_key: str, previous_key: str, increment: int, now: float) -> Decision:
    for listener in _fallback_listeners:
        listener(caller.tier)
    return _decide(caller, *local_counter.hit(current_key, previous_key, increment), now)


# (this window's count, the last window's) in one command with one reply: a quarter
# less client CPU than a pipeline of INCRBY, EXPIRE and GET. Atomic, so a new
# counter never lives without its expiry. ARGV: the increment (0 only looks), the TTL.
_COUNT_SCRIPT = """
local current
if tonumber(ARGV[1]) > 0 then
  current = redis.call('INCRBY', KEYS[1], ARGV[1])
  if current == tonumber(ARGV[1]) then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
else
  current = tonumber(redis.call('GET', KEYS[1]) or '0')
end
return {current, tonumber(redis.call('GET', KEYS[2]) or '0')}
"""
_COUNT_SHA = hashlib.sha1(_COUNT_SCRIPT.encode(), usedforsecurity=False).hexdigest()


def _count_args(current_key: str, previous_key: str, increment: int) -> tuple:
    return 2, current_key, previous_key, increment, 2 * WINDOW


# execute_command, not evalsha(): redis-py wraps that in a decorator that inspects
# its arguments on every call.
def _count(client, *keys_and_increment) -> list:
    args = _count_args(*keys_and_increment)
    try:
        return client.execute_command("EVALSHA", _COUNT_SHA, *args)
    except NoScriptError:  # a new or restarted Redis: send the script itself once
        return client.execute_command("EVAL", _COUNT_SCRIPT, *args)


async def _acount(client, *keys_and_increment) -> list:
    args = _count_args(*keys_and_increment)
    try:
        return await client.execute_command("EVALSHA", _COUNT_SHA, *args)
    except NoScriptError:
        return await client.execute_command("EVAL", _COUNT_SCRIPT, *args)


def hit(caller: Caller, *, increment: int = 1) -> Decision:
    """Count one request (``increment=0`` only looks) and decide."""
    now = time.time()
    current_key, previous_key = _keys(caller.bucket, now)
    if not redis.configured():
        return _decide(caller, *local_counter.hit(current_key, previous_key, increment), now)
    counts = redis.run("rate limit", None, lambda client: _count(client, current_key, previous_key, increment))
    if counts is None:
        return _fallback(caller, current_key, previous_key, increment, now)
    return _decide(caller, *counts, now)


async def ahit(caller: Caller, *, increment: int = 1) -> Decision:
    """``hit`` for async code: never blocks the event loop on Redis."""
    now = time.time()
    current_key, previous_key = _keys(caller.bucket, now)
    if not redis.configured():
        return _decide(caller, *local_counter.hit(current_key, previous_key, increment), now)

    counts = await redis.arun("rate limit", None, lambda client: _acount(client, current_key, previous_key, increment))
    if counts is None:
        return _fallback(caller, current_key, previous_key, increment, now)
    return _decide(caller, *counts, now)
