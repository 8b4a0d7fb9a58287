"""Filling the usage rollups from the raw conversations and messages.

``rollup()`` recomputes every bucket from its granularity's watermark
(``FillState.end``) up to the current bucket, a few buckets per transaction:
each transaction deletes the rows of its buckets, inserts them afresh and moves
the watermark, so

- a re-run over the same buckets writes the same rows (idempotent);
- a run that dies part-way keeps the transactions it finished and the next run
  resumes from the watermark they left;
- the current bucket is refilled on every run (near-real-time).

The watermark only moves up to buckets that ended ``ROLLUP_SETTLE_SECONDS``
ago, so replies that finish (or that the sweeper marks as interrupted) after
their bucket began are still counted. Buckets before the prune horizon (raw rows
deleted by ``prune_messages``) are never recomputed.

What is counted, by the row's creation time:

- ``requests``: assistant replies (each is one model call), whatever their status;
- ``messages``: user and assistant messages (system prompts are settings, not messages);
- ``conversations``: conversations created, under their owner, their model, and
  the API key of their first user message;
- ``tokens_in``/``tokens_out``: the replies' prompt and completion tokens;
- ``errors``/``cancels``: replies that ended with status ``error``/``cancelled``;
- latency and time to first token: over complete replies; exact percentiles
  (``percentile_cont``) per bucket, plus a histogram for ranges.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Aggregate, Count, F, FloatField, Func, IntegerField, Min, OuterRef, Q, Subquery, Sum
from django.db.models.functions import Coalesce, TruncDate, TruncHour
from django.utils import timezone

from analytics import buckets, histogram
from analytics.buckets import Granularity
from analytics.models import DailyUsage, Dimension, FillState, HourlyUsage, UsageRollup
from chat.models import Conversation, Message
from core.cache import two_tier

logger = logging.getLogger("agentsflow.analytics")

TABLES: dict[str, type[UsageRollup]] = {"hour": HourlyUsage, "day": DailyUsage}
CHUNK_BUCKETS = {"hour": 24, "day": 7}  # buckets recomputed per transaction
PRUNE_STATE = "prune"
CACHE_FAMILY = "analytics"

ADDITIVE = (
    "requests",
    "conversations",
    "messages",
    "tokens_in",
    "tokens_out",
    "errors",
    "cancels",
    "latency_count",
    "latency_sum_ms",
    "ttft_count",
    "ttft_sum_ms",
)
PERCENTILES = ("latency_p50_ms", "latency_p95_ms", "ttft_p50_ms", "ttft_p95_ms")

# A cell is the finest grain: (user_id, model_name, api_key_id). Each dimension
# keeps some of its columns and zeroes the others.
Cell = tuple[int, str, int]
DIMENSIONS: dict[str, tuple[str, ...]] = {
    Dimension.ALL: (),
    Dimension.USER: ("user_id",),
    Dimension.MODEL: ("model_name",),
    Dimension.KEY: ("user_id", "api_key_id"),
    Dimension.USER_MODEL: ("user_id", "model_name"),
}


def project(dimension: str, cell: Cell) -> Cell:
    """The row of ``dimension`` that ``cell`` belongs to."""
    keep = DIMENSIONS[dimension]
    user_id, model_name, api_key_id = cell
    return (
        user_id if "user_id" in keep else 0,
        model_name if "model_name" in keep else "",
        api_key_id if "api_key_id" in keep else 0,
    )


# --- Database expressions ---------------------------------------------------------------


class PercentileCont(Aggregate):
    """PostgreSQL's ordered-set aggregate ``percentile_cont(f) WITHIN GROUP (ORDER BY x)``."""

    function = "percentile_cont"
    template = "%(function)s(%(fraction)s) WITHIN GROUP (ORDER BY %(expressions)s)"
    output_field = FloatField()

    def __init__(self, expression, fraction: float, **extra):
        super().__init__(expression, fraction=repr(float(fraction)), **extra)


class WidthBucket(Func):
    """PostgreSQL's ``width_bucket(x, thresholds)`` over the histogram's integer edges."""

    function = "width_bucket"
    template = "%(function)s(%(expressions)s, '{" + ",".join(map(str, histogram.EDGES)) + "}'::integer[])"
    output_field = IntegerField()


def _bucket_expression(granularity: Granularity, field: str = "created_at"):
    if granularity == "hour":
        return TruncHour(field, tzinfo=ZoneInfo("UTC"))
    return TruncDate(field, tzinfo=buckets.local_zone())


def _bucket_start(granularity: Granularity, value) -> datetime:
    """A bucket value from the database (an hour's datetime or a local date) as its start instant."""
    if granularity == "hour":
        return value.astimezone(ZoneInfo("UTC"))
    return buckets.day_start(value)


# --- Computing one window -------------------------------------------------------------------


@dataclass
class _Window:
    granularity: Granularity
    start: datetime
    end: datetime

    def messages(self):
        return Message.objects.filter(created_at__gte=self.start, created_at__lt=self.end).order_by()

    def bucket(self, value) -> datetime:
        return _bucket_start(self.granularity, value)


def _empty_totals() -> dict[str, int]:
    return dict.fromkeys(ADDITIVE, 0)


def _cell_totals(window: _Window) -> dict[tuple[datetime, Cell], dict[str, int]]:
    """The additive counts of every (bucket, cell), in one grouped query."""
    assistant = Q(role=Message.Role.ASSISTANT)
    complete = assistant & Q(status=Message.Status.COMPLETE)
    rows = (
        window.messages()
        .filter(role__in=[Message.Role.USER, Message.Role.ASSISTANT])
        .annotate(b=_bucket_expression(window.granularity), uid=F("conversation__user_id"))
        .values("b", "uid", "model_name", "api_key_id")
        .annotate(
            messages=Count("id"),
            requests=Count("id", filter=assistant),
            tokens_in=Coalesce(Sum("prompt_tokens", filter=assistant), 0),
            tokens_out=Coalesce(Sum("completion_tokens", filter=assistant), 0),
            errors=Count("id", filter=assistant & Q(status=Message.Status.ERROR)),
            cancels=Count("id", filter=assistant & Q(status=Message.Status.CANCELLED)),
            latency_count=Count("latency_ms", filter=complete),
            latency_sum_ms=Coalesce(Sum("latency_ms", filter=complete), 0),
            ttft_count=Count("ttft_ms", filter=complete),
            ttft_sum_ms=Coalesce(Sum("ttft_ms", filter=complete), 0),
        )
    )
    cells: dict[tuple[datetime, Cell], dict[str, int]] = {}
    for row in rows:
        cell = (row["uid"], row["model_name"], row["api_key_id"] or 0)
        totals = cells.setdefault((window.bucket(row["b"]), cell), _empty_totals())
        for name in ADDITIVE:
            if name in row:
                totals[name] += int(row[name])
    return cells


def _add_conversations(window: _Window, cells: dict[tuple[datetime, Cell], dict[str, int]]) -> None:
    """Conversations created in the window, under the key their first user message used."""
    first_key = (
        Message.objects.filter(conversation=OuterRef("pk"), role=Message.Role.USER)
        .order_by("created_at", "id")
        .values("api_key_id")[:1]
    )
    rows = (
        Conversation.objects.filter(created_at__gte=window.start, created_at__lt=window.end)
        .order_by()
        .annotate(b=_bucket_expression(window.granularity), key=Subquery(first_key))
        .values_list("b", "user_id", "model_name", "key")
    )
    for value, user_id, model_name, key in rows.iterator(chunk_size=5000):
        cell = (user_id, model_name, key or 0)
        cells.setdefault((window.bucket(value), cell), _empty_totals())["conversations"] += 1


Histograms = dict[tuple[datetime, Cell], dict[str, dict[str, int]]]
Percentiles = dict[tuple[str, datetime, Cell], dict[str, float | None]]


def _latency_stats_postgresql(window: _Window) -> tuple[Histograms, Percentiles]:
    """Per-cell histograms (width_bucket) and per-row exact percentiles (percentile_cont), in SQL."""
    complete = window.messages().filter(role=Message.Role.ASSISTANT, status=Message.Status.COMPLETE)
    bucket = _bucket_expression(window.granularity)
    hists: Histograms = defaultdict(lambda: {"latency": {}, "ttft": {}})
    for metric, field in (("latency", "latency_ms"), ("ttft", "ttft_ms")):
        rows = (
            complete.filter(**{f"{field}__isnull": False})
            .annotate(b=bucket, uid=F("conversation__user_id"), bin=WidthBucket(field))
            .values_list("b", "uid", "model_name", "api_key_id", "bin")
            .annotate(n=Count("id"))
        )
        for value, uid, model_name, key, index, count in rows:
            hists[(window.bucket(value), (uid, model_name, key or 0))][metric][str(index)] = count

    percentiles: Percentiles = {}
    for dimension, keep in DIMENSIONS.items():
        columns = {"user_id": "uid", "model_name": "model_name", "api_key_id": "api_key_id"}
        group = [columns[name] for name in keep]
        queryset = complete.annotate(b=bucket)
        if "user_id" in keep:
            queryset = queryset.annotate(uid=F("conversation__user_id"))
        rows = queryset.values("b", *group).annotate(
            latency_p50_ms=PercentileCont("latency_ms", 0.5),
            latency_p95_ms=PercentileCont("latency_ms", 0.95),
            ttft_p50_ms=PercentileCont("ttft_ms", 0.5),
            ttft_p95_ms=PercentileCont("ttft_ms", 0.95),
        )
        for row in rows:
            cell = (row.get("uid", 0), row.get("model_name", ""), row.get("api_key_id") or 0)
            percentiles[(dimension, window.bucket(row["b"]), cell)] = {name: row[name] for name in PERCENTILES}
    return hists, percentiles


def _latency_stats_python(window: _Window) -> tuple[Histograms, Percentiles]:
    """The same as _latency_stats_postgresql for databases without percentile_cont (SQLite):
    the complete replies' latencies are read and counted here."""
    rows = (
        window.messages()
        .filter(role=Message.Role.ASSISTANT, status=Message.Status.COMPLETE)
        .annotate(b=_bucket_expression(window.granularity), uid=F("conversation__user_id"))
        .values_list("b", "uid", "model_name", "api_key_id", "latency_ms", "ttft_ms")
    )
    values: dict[tuple[datetime, Cell], tuple[list[int], list[int]]] = defaultdict(lambda: ([], []))
    for value, uid, model_name, key, latency, ttft in rows.iterator(chunk_size=5000):
        latencies, ttfts = values[(window.bucket(value), (uid, model_name, key or 0))]
        if latency is not None:
            latencies.append(latency)
        if ttft is not None:
            ttfts.append(ttft)

    hists: Histograms = {
        key: {"latency": histogram.histogram(latencies), "ttft": histogram.histogram(ttfts)}
        for key, (latencies, ttfts) in values.items()
    }
    grouped: dict[tuple[str, datetime, Cell], tuple[list[int], list[int]]] = defaultdict(lambda: ([], []))
    for (start, cell), (latencies, ttfts) in values.items():
        for dimension in DIMENSIONS:
            target = grouped[(dimension, start, project(dimension, cell))]
            target[0].extend(latencies)
            target[1].extend(ttfts)
    percentiles: Percentiles = {}
    for key, (latencies, ttfts) in grouped.items():
        latencies.sort()
        ttfts.sort()
        percentiles[key] = {
            "latency_p50_ms": histogram.percentile_cont(latencies, 0.5),
            "latency_p95_ms": histogram.percentile_cont(latencies, 0.95),
            "ttft_p50_ms": histogram.percentile_cont(ttfts, 0.5),
            "ttft_p95_ms": histogram.percentile_cont(ttfts, 0.95),
        }
    return hists, percentiles


def compute_rows(granularity: Granularity, start: datetime, end: datetime) -> list[UsageRollup]:
    """The rollup rows of every bucket in ``[start, end)`` (bucket-aligned), computed from raw rows."""
    window = _Window(granularity, start, end)
    cells = _cell_totals(window)
    _add_conversations(window, cells)
    if not cells:
        return []  # a quiet window: nothing else to read
    if connection.vendor == "postgresql":
        hists, percentiles = _latency_stats_postgresql(window)
    else:
        hists, percentiles = _latency_stats_python(window)

    rows: dict[tuple[str, datetime, Cell], dict] = {}
    for (start_at, cell), totals in cells.items():
        cell_hists = hists.get((start_at, cell), {"latency": {}, "ttft": {}})
        for dimension in DIMENSIONS:
            key = (dimension, start_at, project(dimension, cell))
            row = rows.get(key)
            if row is None:
                row = rows[key] = {**_empty_totals(), "latency_hist": {}, "ttft_hist": {}}
            for name in ADDITIVE:
                row[name] += totals[name]
            for metric in ("latency", "ttft"):
                target = row[f"{metric}_hist"]
                for index, count in cell_hists[metric].items():
                    target[index] = target.get(index, 0) + count

    table = TABLES[granularity]
    result = []
    for (dimension, start_at, (user_id, model_name, api_key_id)), values in rows.items():
        exact = percentiles.get((dimension, start_at, (user_id, model_name, api_key_id)), {})
        result.append(
            table(
                dimension=dimension,
                bucket=start_at,
                user_id=user_id,
                model_name=model_name,
                api_key_id=api_key_id,
                **values,
                **{name: exact.get(name) for name in PERCENTILES},
            )
        )
    return result


# --- Filling ----------------------------------------------------------------------------


@dataclass
class FillReport:
    granularity: str
    start: datetime | None
    end: datetime | None
    buckets: int
    rows: int
    final_before: datetime | None


def _state(name: str) -> FillState:
    state, _ = FillState.objects.get_or_create(name=name)
    return state


def prune_horizon() -> datetime | None:
    """Raw rows before this instant may have been deleted."""
    return FillState.objects.filter(name=PRUNE_STATE).values_list("end", flat=True).first()


def _first_activity() -> datetime | None:
    firsts = [
        Message.objects.aggregate(first=Min("created_at"))["first"],
        Conversation.objects.aggregate(first=Min("created_at"))["first"],
    ]
    firsts = [first for first in firsts if first is not None]
    return min(firsts) if firsts else None


def _set_long_statement_timeout() -> None:
    """A rollup transaction may aggregate a busy day: allow it more than a request gets."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL statement_timeout = %s", [f"{settings.ROLLUP_STATEMENT_TIMEOUT_MS}ms"])


def fill(
    granularity: Granularity,
    *,
    now: datetime | None = None,
    since: datetime | None = None,
    on_chunk: Callable[[FillReport], None] | None = None,
) -> FillReport:
    """Recompute ``granularity``'s buckets from its watermark (or from ``since``,
    when earlier) through the bucket containing ``now``; see the module docstring."""
    now = now or timezone.now()
    table = TABLES[granularity]
    settled = buckets.floor(granularity, now - timedelta(seconds=settings.ROLLUP_SETTLE_SECONDS))
    stop = buckets.following(granularity, buckets.floor(granularity, now))  # through the current bucket

    start = _state(granularity).end
    if since is not None:
        since_start = buckets.floor(granularity, since)
        start = since_start if start is None else min(start, since_start)
    if start is None:
        first = _first_activity()
        start = buckets.floor(granularity, first) if first is not None else settled
    horizon = prune_horizon()
    if horizon is not None:
        start = max(start, buckets.ceil(granularity, horizon))

    report = FillReport(granularity, start, stop, 0, 0, None)
    chunk_start = start
    while chunk_start < stop:
        chunk_end = min(buckets.advance(granularity, chunk_start, CHUNK_BUCKETS[granularity]), stop)
        with transaction.atomic():
            state = FillState.objects.select_for_update().get(name=granularity)  # one filler at a time
            _set_long_statement_timeout()
            rows = compute_rows(granularity, chunk_start, chunk_end)
            table.objects.filter(bucket__gte=chunk_start, bucket__lt=chunk_end).delete()
            table.objects.bulk_create(rows, batch_size=1000)
            final = min(chunk_end, settled)
            state.end = final if state.end is None else max(state.end, final)
            state.last_run_at = timezone.now()
            state.updated_at = state.last_run_at
            state.save(update_fields=["end", "last_run_at", "updated_at"])
        report.buckets += sum(1 for _ in buckets.starts(granularity, chunk_start, chunk_end))
        report.rows += len(rows)
        report.final_before = state.end
        if on_chunk is not None:
            on_chunk(report)
        chunk_start = chunk_end
    if report.final_before is None:
        report.final_before = _state(granularity).end
    return report


def rollup(
    *,
    now: datetime | None = None,
    since: datetime | None = None,
    granularities: Iterable[Granularity] = buckets.GRANULARITIES,
    on_chunk: Callable[[FillReport], None] | None = None,
) -> list[FillReport]:
    """Bring every rollup up to date (hours, then days) and let cached answers go."""
    now = now or timezone.now()
    reports = [fill(granularity, now=now, since=since, on_chunk=on_chunk) for granularity in granularities]
    rollups_changed()
    return reports


def rollups_changed() -> None:
    """Cached analytics answers carry the current generation; dropping it retires them all."""
    two_tier.delete(CACHE_FAMILY, "generation")


def cache_generation() -> str:
    return two_tier.get_or_compute(CACHE_FAMILY, "generation", lambda: str(timezone.now().timestamp()), ttl=86400)
