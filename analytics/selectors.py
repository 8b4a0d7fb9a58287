"""Reads of the usage rollups, for the analytics API and the staff dashboard.

Every function reads rollup rows only (never raw messages), so its cost depends
on the range and the number of users, keys and models, not on how many messages
exist. Answers are plain, JSON-ready dicts, cached for ``ANALYTICS_CACHE_SECONDS``
in the two-tier cache (family ``analytics``); a rollup run retires them at once.

``start`` and ``end`` are aware datetimes; ``start`` is floored and ``end``
raised to the granularity's bucket boundaries (hours: UTC hours; days: local days
in ``settings.TIME_ZONE``). Times in answers are ISO 8601 in that zone.
The caller validates ranges (see ``analytics.params``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.db.models import F, Q, QuerySet, Sum
from django.utils import timezone

from analytics import buckets, histogram
from analytics.buckets import Granularity
from analytics.models import Dimension, FillState
from analytics.rollup import ADDITIVE, CACHE_FAMILY, TABLES, cache_generation
from core.cache import two_tier
from core.models import APIKey, User

COUNT_METRICS = ("requests", "conversations", "messages", "tokens_in", "tokens_out", "tokens", "errors", "cancels")
RATIO_METRICS = ("error_rate", "latency_mean_ms", "ttft_mean_ms")
PERCENTILE_METRICS = ("latency_p50_ms", "latency_p95_ms", "ttft_p50_ms", "ttft_p95_ms")
METRICS = COUNT_METRICS + RATIO_METRICS + PERCENTILE_METRICS
BREAKDOWNS = ("model", "key", "user")
NO_KEY_LABEL = "Browser session (no API key)"


@dataclass(frozen=True, slots=True)
class Scope:
    """Whose usage: one user's (``user_id``) or everyone's (``user_id=None``, staff only)."""

    user_id: int | None = None

    @classmethod
    def everyone(cls) -> Scope:
        return cls(None)

    @classmethod
    def of(cls, user) -> Scope:
        return cls(user if isinstance(user, int) else user.pk)

    @property
    def is_everyone(self) -> bool:
        return self.user_id is None

    @property
    def cache_key(self) -> str:
        return "all" if self.user_id is None else f"u{self.user_id}"

    def as_dict(self) -> dict:
        return {"user": self.user_id}


# --- Shared pieces ----------------------------------------------------------------------------


def iso(moment: datetime | None) -> str | None:
    return None if moment is None else timezone.localtime(moment).isoformat()


def aligned(granularity: Granularity, start: datetime, end: datetime) -> tuple[datetime, datetime]:
    return buckets.floor(granularity, start), buckets.ceil(granularity, end)


def _cached(kind: str, scope: Scope, parts: tuple, compute):
    if not settings.ANALYTICS_CACHE_SECONDS:
        return compute()
    key = ":".join([kind, cache_generation(), scope.cache_key, *map(str, parts)])
    return two_tier.get_or_compute(CACHE_FAMILY, key, compute, ttl=settings.ANALYTICS_CACHE_SECONDS)


def _rows(granularity: Granularity, dimension: str, scope: Scope, start: datetime, end: datetime) -> QuerySet:
    rows = TABLES[granularity].objects.filter(dimension=dimension, bucket__gte=start, bucket__lt=end)
    return rows if scope.is_everyone else rows.filter(user_id=scope.user_id)


def _ratio(numerator: float, denominator: float, digits: int = 1) -> float | None:
    return round(numerator / denominator, digits) if denominator else None


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def derived(totals: dict, latency: dict[int, int] | None = None, ttft: dict[int, int] | None = None) -> dict:
    """The public figures of summed rollup counts (and merged histograms, for percentiles)."""
    figures = {name: int(totals.get(name) or 0) for name in COUNT_METRICS if name != "tokens"}
    figures["tokens"] = figures["tokens_in"] + figures["tokens_out"]
    figures["error_rate"] = _ratio(figures["errors"], figures["requests"], 4)
    figures["latency_mean_ms"] = _ratio(totals.get("latency_sum_ms") or 0, totals.get("latency_count") or 0)
    figures["ttft_mean_ms"] = _ratio(totals.get("ttft_sum_ms") or 0, totals.get("ttft_count") or 0)
    if latency is not None and ttft is not None:
        figures["latency_p50_ms"] = histogram.percentile(latency, 0.5)
        figures["latency_p95_ms"] = histogram.percentile(latency, 0.95)
        figures["ttft_p50_ms"] = histogram.percentile(ttft, 0.5)
        figures["ttft_p95_ms"] = histogram.percentile(ttft, 0.95)
    return figures


def _envelope(scope: Scope, granularity: Granularity, start: datetime, end: datetime) -> dict:
    return {"scope": scope.as_dict(), "granularity": granularity, "from": iso(start), "to": iso(end)}


# --- Summary ---------------------------------------------------------------------------------


def usage_summary(scope: Scope, start: datetime, end: datetime, *, granularity: Granularity = "day") -> dict:
    """Totals over ``[start, end)``.

    Counts, ``error_rate`` and means are exact. ``*_p50_ms``/``*_p95_ms`` are
    estimated from the buckets' merged histograms (within 4.5 % of the exact
    nearest-rank percentile). ``as_of`` is when the rollup last ran.
    """
    start, end = aligned(granularity, start, end)

    def compute() -> dict:
        dimension = Dimension.ALL if scope.is_everyone else Dimension.USER
        totals = dict.fromkeys(ADDITIVE, 0)
        latency: dict[int, int] = {}
        ttft: dict[int, int] = {}
        for row in _rows(granularity, dimension, scope, start, end).values(*ADDITIVE, "latency_hist", "ttft_hist"):
            for name in ADDITIVE:
                totals[name] += row[name]
            histogram.merge(latency, row["latency_hist"])
            histogram.merge(ttft, row["ttft_hist"])
        last_run = FillState.objects.filter(name="hour").values_list("last_run_at", flat=True).first()
        return {**_envelope(scope, granularity, start, end), **derived(totals, latency, ttft), "as_of": iso(last_run)}

    return _cached("summary", scope, (granularity, start.timestamp(), end.timestamp()), compute)


# --- Time series -------------------------------------------------------------------------------


def _point_value(metric: str, row: dict | None):
    if row is None:
        return 0 if metric in COUNT_METRICS else None
    if metric in PERCENTILE_METRICS:
        return _round(row[metric])
    return derived(row)[metric]


_TIMESERIES_FIELDS = {
    "tokens": ("tokens_in", "tokens_out"),
    "error_rate": ("errors", "requests"),
    "latency_mean_ms": ("latency_sum_ms", "latency_count"),
    "ttft_mean_ms": ("ttft_sum_ms", "ttft_count"),
}


def usage_timeseries(
    scope: Scope,
    metric: str,
    granularity: Granularity,
    start: datetime,
    end: datetime,
    *,
    model: str | None = None,
) -> dict:
    """One value of ``metric`` per bucket in ``[start, end)``, oldest first, every bucket present:
    counts are 0 and the other metrics null where nothing happened. Percentiles are
    the buckets' exact ``percentile_cont`` values. With ``model``, only that model's usage."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}")
    start, end = aligned(granularity, start, end)

    def compute() -> dict:
        if model is None:
            rows = _rows(granularity, Dimension.ALL if scope.is_everyone else Dimension.USER, scope, start, end)
        else:
            dimension = Dimension.MODEL if scope.is_everyone else Dimension.USER_MODEL
            rows = _rows(granularity, dimension, scope, start, end).filter(model_name=model)
        fields = _TIMESERIES_FIELDS.get(metric, (metric,))
        by_bucket = {row["bucket"]: row for row in rows.values("bucket", *fields)}
        points = [
            {"t": iso(moment), "value": _point_value(metric, by_bucket.get(moment))}
            for moment in buckets.starts(granularity, start, end)
        ]
        return {**_envelope(scope, granularity, start, end), "metric": metric, "model": model, "points": points}

    parts = (metric, granularity, start.timestamp(), end.timestamp(), model or "")
    return _cached("timeseries", scope, parts, compute)


# --- Breakdown --------------------------------------------------------------------------------


def _breakdown_rows(scope: Scope, by: str, granularity: Granularity, start: datetime, end: datetime):
    """The rollup rows that split ``scope``'s usage by ``by``, and the column naming each group."""
    if by == "model":
        dimension = Dimension.MODEL if scope.is_everyone else Dimension.USER_MODEL
        return _rows(granularity, dimension, scope, start, end), "model_name"
    if by == "key":
        return _rows(granularity, Dimension.KEY, scope, start, end), "api_key_id"
    if by == "user":
        return _rows(granularity, Dimension.USER, scope, start, end), "user_id"
    raise ValueError(f"unknown breakdown {by!r}")


def _labels(by: str, ids: list) -> dict:
    """What to call each group: the model's name, the user's name and email, the key's name and prefix."""
    if by == "model":
        return {name: {"label": name} for name in ids}
    if by == "user":
        users = User.objects.filter(pk__in=ids).values_list("pk", "email", "display_name")
        found = {pk: {"label": name or email, "email": email} for pk, email, name in users}
        return {pk: found.get(pk, {"label": f"Deleted user #{pk}", "email": None}) for pk in ids}
    keys = APIKey.objects.filter(pk__in=[pk for pk in ids if pk]).values_list("pk", "name", "prefix")
    found = {pk: {"label": name, "prefix": prefix} for pk, name, prefix in keys}
    found[0] = {"label": NO_KEY_LABEL, "prefix": None}
    return {pk: found.get(pk, {"label": f"Deleted key #{pk}", "prefix": None}) for pk in ids}


def usage_breakdown(
    scope: Scope,
    by: str,
    start: datetime,
    end: datetime,
    limit: int = 10,
    *,
    granularity: Granularity = "day",
    order: str = "requests",
) -> dict:
    """``scope``'s usage over ``[start, end)`` split by model, API key or user: the
    ``limit`` largest groups by ``order`` (a count metric), the total, and what the
    groups left out add up to (``others``). Key 0 is browser-session use (no key);
    a user scope sees only its own keys and itself."""
    if order not in COUNT_METRICS:
        raise ValueError(f"unknown order {order!r}")
    start, end = aligned(granularity, start, end)

    def compute() -> dict:
        rows, column = _breakdown_rows(scope, by, granularity, start, end)
        # Aggregates may not reuse a field's name: sum_<field>, renamed back below.
        sums = {f"sum_{name}": Sum(name) for name in ADDITIVE}
        ranking = F("sum_tokens_in") + F("sum_tokens_out") if order == "tokens" else F(f"sum_{order}")
        top = [
            {column: row[column], **{name: row[f"sum_{name}"] for name in ADDITIVE}}
            for row in rows.values(column).annotate(**sums).order_by(ranking.desc(), column)[: max(limit, 0)]
        ]
        aggregate = rows.aggregate(**sums)
        total = {name: aggregate[f"sum_{name}"] or 0 for name in ADDITIVE}
        ids = [row[column] for row in top]
        hists: dict = {group: ({}, {}) for group in ids}
        for group, latency, ttft in rows.filter(Q(**{f"{column}__in": ids})).values_list(
            column, "latency_hist", "ttft_hist"
        ):
            histogram.merge(hists[group][0], latency)
            histogram.merge(hists[group][1], ttft)
        labels = _labels(by, ids)
        results = [{"id": row[column], **labels[row[column]], **derived(row, *hists[row[column]])} for row in top]
        others = {name: total[name] - sum(row[name] for row in top) for name in ADDITIVE}
        return {
            **_envelope(scope, granularity, start, end),
            "by": by,
            "order": order,
            "results": results,
            "total": derived(total),
            "others": derived(others),
        }

    return _cached("breakdown", scope, (by, order, limit, granularity, start.timestamp(), end.timestamp()), compute)


# --- Export -----------------------------------------------------------------------------------

EXPORT_COLUMNS = ("bucket", "user_id", "model", "api_key_id", *COUNT_METRICS, *RATIO_METRICS, *PERCENTILE_METRICS)
EXPORT_PAGE = 2000


def _export_dimension(scope: Scope, by: str | None) -> str:
    if by is None:
        return Dimension.ALL if scope.is_everyone else Dimension.USER
    return {
        "model": Dimension.MODEL if scope.is_everyone else Dimension.USER_MODEL,
        "key": Dimension.KEY,
        "user": Dimension.USER,
    }[by]


def usage_export_rows(
    scope: Scope, granularity: Granularity, start: datetime, end: datetime, *, by: str | None = None, page: int = 0
) -> Iterator[dict]:
    """Every rollup row of ``scope`` in ``[start, end)`` (split by ``by`` when given) as
    a dict with EXPORT_COLUMNS, oldest bucket first. Rows are read ``page`` at a
    time by keyset (bucket, id): one short query per page, never the whole range
    in memory, and no cursor held open while the client reads."""
    page = page or EXPORT_PAGE
    start, end = aligned(granularity, start, end)
    rows = _rows(granularity, _export_dimension(scope, by), scope, start, end).order_by("bucket", "id")
    fields = ("id", "bucket", "user_id", "model_name", "api_key_id", *ADDITIVE, *PERCENTILE_METRICS)
    after: tuple[datetime, int] | None = None
    while True:
        chunk = rows
        if after is not None:
            chunk = rows.filter(Q(bucket__gt=after[0]) | Q(bucket=after[0], id__gt=after[1]))
        batch = list(chunk.values(*fields)[:page])
        for row in batch:
            figures = derived(row)
            yield {
                "bucket": iso(row["bucket"]),
                "user_id": row["user_id"] or None,
                "model": row["model_name"] or None,
                "api_key_id": row["api_key_id"] if by == "key" else None,
                **{name: figures[name] for name in COUNT_METRICS + RATIO_METRICS},
                **{name: _round(row[name]) for name in PERCENTILE_METRICS},
            }
        if len(batch) < page:
            return
        after = (batch[-1]["bucket"], batch[-1]["id"])
