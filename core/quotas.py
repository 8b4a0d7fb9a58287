"""Daily token quotas per tier, enforced before a model is called.

The day's usage is a counter in the shared cache (Redis in production), started
from the database the first time it is needed each day and incremented when a
reply is stored. A request is refused once the counter reaches the quota;
replies already running may carry a user slightly past it (they are not cut
off mid-stream). With Redis unreachable the check fails open, like the rate limits,
and shares their circuit breaker (core.redis), so a stalled Redis costs one socket
timeout per process rather than one per request.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from datetime import datetime, time, timedelta

from django.conf import settings
from django.core.cache import cache
from django.db.models import Sum
from django.utils import timezone
from rest_framework import status
from rest_framework.exceptions import APIException

from core import redis


class QuotaExceeded(APIException):
    status_code = status.HTTP_429_TOO_MANY_REQUESTS
    default_code = "quota_exceeded"

    def __init__(self, usage: QuotaUsage) -> None:
        super().__init__(
            f"Daily token quota of {usage.limit} for the {usage.tier} tier is used up; it resets in {usage.reset} s."
        )
        self.usage = usage

    @property
    def retry_after(self) -> int:
        return self.usage.reset


@dataclass(frozen=True, slots=True)
class QuotaUsage:
    tier: str
    limit: int
    used: int
    reset: int  # seconds until the day (in TIME_ZONE) ends

    @property
    def remaining(self) -> int:
        return max(0, self.limit - self.used)


def _day_bounds(now: datetime) -> tuple[datetime, datetime]:
    local = timezone.localtime(now)
    start = timezone.make_aware(datetime.combine(local.date(), time.min), local.tzinfo)
    return start, start + timedelta(days=1)


def _key(user_id: int, day_start: datetime) -> str:
    return f"quota:{user_id}:{day_start:%Y%m%d}"


def _used_from_database(user_id: int, since: datetime) -> int:
    from chat.models import Message

    totals = Message.objects.filter(
        conversation__user_id=user_id, role=Message.Role.ASSISTANT, created_at__gte=since
    ).aggregate(prompt=Sum("prompt_tokens"), completion=Sum("completion_tokens"))
    return (totals["prompt"] or 0) + (totals["completion"] or 0)


def usage(user) -> QuotaUsage:
    now = timezone.now()
    day_start, day_end = _day_bounds(now)
    limit = settings.TOKEN_QUOTAS[user.tier]
    reset = int((day_end - now).total_seconds())
    key = _key(user.pk, day_start)
    used = redis.guarded("quota check", None, cache.get, key)
    if used is None and not redis.breaker.open:
        started = _used_from_database(user.pk, day_start)
        redis.guarded("quota check", None, cache.add, key, started, timeout=reset + 3600)
        used = redis.guarded("quota check", None, cache.get, key)
    return QuotaUsage(tier=user.tier, limit=limit, used=int(used or 0), reset=reset)


def check(user) -> QuotaUsage:
    """Raise QuotaExceeded (429) when the user's tokens for today are used up."""
    current = usage(user)
    if current.used >= current.limit:
        raise QuotaExceeded(current)
    return current


def charge(user_id: int, tokens: int) -> None:
    """Add a stored reply's tokens to today's counter (if the counter exists yet)."""
    if tokens <= 0:
        return
    day_start, _ = _day_bounds(timezone.now())
    redis.guarded("quota charge", None, _add_to_counter, _key(user_id, day_start), tokens)


def _add_to_counter(key: str, tokens: int) -> None:
    with contextlib.suppress(ValueError):  # no counter yet: the day's first check starts it from the database
        cache.incr(key, tokens)
