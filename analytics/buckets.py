"""Bucket arithmetic. Hours are whole UTC hours (every hour is 3,600 s, with no
daylight-saving ambiguity); days are calendar days in ``settings.TIME_ZONE``.
In a zone with a whole-hour offset a local day is exactly a run of hour buckets;
in one with a half-hour offset (e.g. Asia/Kolkata) it is not, which is why days
are rolled up from the raw rows, never from hours."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, time, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

from django.utils import timezone

Granularity = Literal["hour", "day"]
GRANULARITIES: tuple[Granularity, ...] = ("hour", "day")


def local_zone() -> ZoneInfo:
    return timezone.get_default_timezone()


def day_start(day) -> datetime:
    """The first instant of a local calendar day (where midnight does not exist, the instant the day begins)."""
    return datetime.combine(day, time.min, tzinfo=local_zone()).astimezone(UTC)


def floor(granularity: Granularity, moment: datetime) -> datetime:
    """Start of the bucket that contains ``moment``."""
    if granularity == "hour":
        return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    return day_start(moment.astimezone(local_zone()).date())


def following(granularity: Granularity, start: datetime) -> datetime:
    """Start of the bucket after the one that starts at ``start``."""
    if granularity == "hour":
        return start + timedelta(hours=1)
    return day_start(start.astimezone(local_zone()).date() + timedelta(days=1))


def ceil(granularity: Granularity, moment: datetime) -> datetime:
    """``moment`` itself when it starts a bucket, else the start of the next one."""
    start = floor(granularity, moment)
    return start if start == moment else following(granularity, start)


def starts(granularity: Granularity, start: datetime, end: datetime) -> Iterator[datetime]:
    """Every bucket start in ``[start, end)`` (``start`` must be a bucket start)."""
    current = start
    while current < end:
        yield current
        current = following(granularity, current)


def advance(granularity: Granularity, start: datetime, count: int) -> datetime:
    for _ in range(count):
        start = following(granularity, start)
    return start
