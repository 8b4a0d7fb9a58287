"""Query parameters of the analytics API, checked: anything wrong is a 400 whose
``details`` name the parameter; another user's usage is a 404 for non-staff."""

from __future__ import annotations

import re
from datetime import datetime, timedelta

from django.conf import settings
from django.http import Http404
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime
from rest_framework.exceptions import ValidationError

from analytics import buckets
from analytics.buckets import GRANULARITIES, Granularity
from analytics.selectors import Scope
from core.models import User

DEFAULT_SPAN = {"hour": timedelta(hours=24), "day": timedelta(days=30)}
MAX_ID = 2**63 - 1
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_SPACED_OFFSET = re.compile(r"(T[\d:.]+) (\d{2}:?\d{2})$")  # "+01:00" arrives as " 01:00" when not URL-encoded


def _invalid(field: str, message: str) -> ValidationError:
    return ValidationError({field: [message]})


def choice(params, name: str, choices: tuple[str, ...], default: str | None) -> str | None:
    raw = params.get(name)
    if raw in (None, ""):
        return default
    if raw not in choices:
        raise _invalid(name, f"Unknown {name} {raw[:50]!r}; choose one of: {', '.join(choices)}.")
    return raw


def granularity(params, default: Granularity = "day") -> Granularity:
    return choice(params, "granularity", GRANULARITIES, default)  # type: ignore[return-value]


def moment(raw: str, field: str, *, is_end: bool) -> datetime:
    """A date (a whole local day; as ``to`` it is included) or an ISO 8601 date-time
    (naive ones are in ``settings.TIME_ZONE``)."""
    raw = raw.strip()
    try:
        if _DATE.match(raw):
            day = parse_date(raw)
            if day is not None and 1970 <= day.year <= 2999:
                return buckets.day_start(day + timedelta(days=1) if is_end else day)
        else:
            parsed = parse_datetime(_SPACED_OFFSET.sub(r"\1+\2", raw))
            if parsed is not None and 1970 <= parsed.year <= 2999:
                if timezone.is_naive(parsed):
                    parsed = timezone.make_aware(parsed, buckets.local_zone())
                return parsed
    except (ValueError, OverflowError):
        pass
    raise _invalid(field, "Use a date (YYYY-MM-DD) or an ISO 8601 date-time between 1970 and 2999.")


def date_range(params, granularity: Granularity, *, max_days: int | None = None) -> tuple[datetime, datetime]:
    """``from``/``to`` aligned to ``granularity``'s buckets. Defaults: ``to`` now,
    ``from`` 24 hours (hourly) or 30 days (daily) before ``to``."""
    raw_from, raw_to = params.get("from"), params.get("to")
    end = moment(raw_to, "to", is_end=True) if raw_to else timezone.now()
    start = moment(raw_from, "from", is_end=False) if raw_from else end - DEFAULT_SPAN[granularity]
    if start > end:
        raise _invalid("from", "Must not be after `to`.")
    start, end = buckets.floor(granularity, start), buckets.ceil(granularity, end)
    if max_days is None:
        hourly = granularity == "hour"
        max_days = settings.ANALYTICS_MAX_HOURLY_RANGE_DAYS if hourly else settings.ANALYTICS_MAX_RANGE_DAYS
    # Local days may be 25 hours long: allow a day of slack for daylight-saving changes.
    if end - start > timedelta(days=max_days, hours=1):
        kind = "hourly" if granularity == "hour" else "daily"
        raise _invalid("from", f"The range is longer than {max_days} days, the most for {kind} buckets.")
    return start, end


def bucketed_range(params, *, max_days: int | None = None) -> tuple[Granularity, datetime, datetime]:
    """``?granularity=`` (default day), then the ``from``/``to`` range aligned to its buckets."""
    chosen = granularity(params)
    start, end = date_range(params, chosen, max_days=max_days)
    return chosen, start, end


def model_name(params) -> str | None:
    """``?model=``: a model's name (any name: a model that no longer exists still has history)."""
    raw = params.get("model")
    if raw in (None, ""):
        return None
    if len(raw) > 64 or not re.fullmatch(r"[-a-zA-Z0-9_.:]+", raw):
        raise _invalid("model", "A model name (letters, digits, '-', '_', '.', ':'; at most 64) is required.")
    return raw


def limit(params, *, default: int = 10, maximum: int = 100) -> int:
    raw = params.get("limit")
    if raw in (None, ""):
        return default
    try:
        value = int(raw)
    except ValueError:
        raise _invalid("limit", "A whole number is required.") from None
    if value < 1:
        raise _invalid("limit", "Must be at least 1.")
    return min(value, maximum)


def scope(request) -> Scope:
    """Staff see everyone (or one user with ``?user=<id>``); anyone else sees only
    themselves, and another user's id is a 404, as if it did not exist."""
    user = request.user
    raw = request.query_params.get("user")
    if raw in (None, ""):
        return Scope.everyone() if user.is_staff else Scope.of(user)
    try:
        target = int(raw)
    except ValueError:
        raise _invalid("user", "A user id (a whole number) is required.") from None
    if not 1 <= target <= MAX_ID:
        raise _invalid("user", "A user id (a whole number) is required.")
    if target == user.pk:
        return Scope.of(user)
    if not user.is_staff or not User.objects.filter(pk=target).exists():
        raise Http404("No such user.")
    return Scope(target)
