"""Analytics API: usage summary, time series, breakdowns and exports, read from the
rollups. Users see their own usage; staff see everyone's, or one user's with
``?user=<id>``. API keys need the ``analytics:read`` scope."""

from __future__ import annotations

import csv
from collections.abc import Iterator

from django.conf import settings
from django.http import StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.response import Response
from rest_framework.views import APIView

from analytics import params, selectors
from analytics.serializers import BreakdownSerializer, SummarySerializer, TimeseriesSerializer
from core.models import APIKey
from core.openapi import error_responses
from core.renderers import dumps

READ = (APIKey.Scope.ANALYTICS_READ,)
ERRORS = error_responses(400, 401, 403, 404, 429)

RANGE_PARAMETERS = [
    OpenApiParameter(
        "from",
        str,
        description="Start: a date (`YYYY-MM-DD`, local midnight) or an ISO 8601 date-time, aligned down to "
        "the granularity. Default: 24 hours (hourly) or 30 days (daily) before `to`.",
    ),
    OpenApiParameter(
        "to",
        str,
        description="End: a date (that whole day included) or an ISO 8601 date-time (exclusive), aligned up "
        "to the granularity. Default: now.",
    ),
    OpenApiParameter(
        "user",
        int,
        description="Staff: one user's usage instead of everyone's. Anyone else may only name themselves "
        "(another id is a 404).",
    ),
]
GRANULARITY = OpenApiParameter(
    "granularity",
    str,
    enum=["hour", "day"],
    description="Buckets: UTC hours or days in the server's time zone (default day). Ranges are limited to "
    "ANALYTICS_MAX_HOURLY_RANGE_DAYS (hourly) and ANALYTICS_MAX_RANGE_DAYS (daily).",
)


class SummaryView(APIView):
    required_scopes = READ

    @extend_schema(
        operation_id="analytics_summary",
        parameters=[*RANGE_PARAMETERS, GRANULARITY],
        responses={200: SummarySerializer, **ERRORS},
        description="Usage totals over a range. Percentiles are estimated from histograms (within 4.5 %).",
    )
    def get(self, request):
        query = request.query_params
        scope = params.scope(request)
        granularity, start, end = params.bucketed_range(query)
        return Response(selectors.usage_summary(scope, start, end, granularity=granularity))


class TimeseriesView(APIView):
    required_scopes = READ

    @extend_schema(
        operation_id="analytics_timeseries",
        parameters=[
            OpenApiParameter(
                "metric", str, enum=list(selectors.METRICS), description="Default `requests`. Latencies in ms."
            ),
            OpenApiParameter("model", str, description="Only this model's usage (a model name)."),
            GRANULARITY,
            *RANGE_PARAMETERS,
        ],
        responses={200: TimeseriesSerializer, **ERRORS},
        description="One value per bucket, every bucket of the range present, oldest first. Percentiles "
        "are each bucket's exact value.",
    )
    def get(self, request):
        query = request.query_params
        scope = params.scope(request)
        metric = params.choice(query, "metric", selectors.METRICS, "requests")
        model = params.model_name(query)
        granularity, start, end = params.bucketed_range(query)
        return Response(selectors.usage_timeseries(scope, metric, granularity, start, end, model=model))


class BreakdownView(APIView):
    required_scopes = READ

    @extend_schema(
        operation_id="analytics_breakdown",
        parameters=[
            OpenApiParameter("by", str, enum=list(selectors.BREAKDOWNS), description="Default `model`."),
            OpenApiParameter(
                "order", str, enum=list(selectors.COUNT_METRICS), description="Largest first; default `requests`."
            ),
            OpenApiParameter("limit", int, description="Groups returned, 1-100 (default 10)."),
            GRANULARITY,
            *RANGE_PARAMETERS,
        ],
        responses={200: BreakdownSerializer, **ERRORS},
        description="Usage split by model, API key (id 0: browser sessions) or user: the largest groups, the "
        "total, and the rest (`others`).",
    )
    def get(self, request):
        query = request.query_params
        scope = params.scope(request)
        by = params.choice(query, "by", selectors.BREAKDOWNS, "model")
        order = params.choice(query, "order", selectors.COUNT_METRICS, "requests")
        limit = params.limit(query)
        granularity, start, end = params.bucketed_range(query)
        return Response(selectors.usage_breakdown(scope, by, start, end, limit, granularity=granularity, order=order))


EXPORT_FORMATS = ("csv", "json")
ROWS_PER_CHUNK = 200  # rows per chunk written to the client


class _Line:
    """A file-like sink that hands back what csv.writer writes."""

    def write(self, value: str) -> str:
        return value


def export_csv(rows: Iterator[dict]) -> Iterator[bytes]:
    writer = csv.writer(_Line())
    yield writer.writerow(selectors.EXPORT_COLUMNS).encode()
    lines: list[str] = []
    for row in rows:
        lines.append(writer.writerow(["" if row[name] is None else row[name] for name in selectors.EXPORT_COLUMNS]))
        if len(lines) >= ROWS_PER_CHUNK:
            yield "".join(lines).encode()
            lines = []
    if lines:
        yield "".join(lines).encode()


def export_json(header: dict, rows: Iterator[dict]) -> Iterator[bytes]:
    yield dumps(header)[:-1] + b',"rows":['
    parts: list[bytes] = []
    first = True
    for row in rows:
        parts.append(dumps(row) if first else b"," + dumps(row))
        first = False
        if len(parts) >= ROWS_PER_CHUNK:
            yield b"".join(parts)
            parts = []
    yield b"".join(parts) + b"]}"


class ExportView(APIView):
    required_scopes = READ

    @extend_schema(
        operation_id="analytics_export",
        parameters=[
            OpenApiParameter("format", str, enum=list(EXPORT_FORMATS), description="Default csv."),
            OpenApiParameter(
                "by",
                str,
                enum=list(selectors.BREAKDOWNS),
                description="One row per bucket and model, key or user; default: one row per bucket.",
            ),
            GRANULARITY,
            *RANGE_PARAMETERS,
        ],
        responses={
            (200, "text/csv"): OpenApiTypes.STR,
            (200, "application/json"): OpenApiTypes.OBJECT,
            **ERRORS,
        },
        description="The rollup rows of a range (up to ANALYTICS_MAX_EXPORT_DAYS), streamed as they are read. "
        f"Columns: {', '.join(selectors.EXPORT_COLUMNS)}. Empty buckets have no row.",
    )
    def get(self, request):
        query = request.query_params
        scope = params.scope(request)
        kind = params.choice(query, "format", EXPORT_FORMATS, "csv")
        by = params.choice(query, "by", selectors.BREAKDOWNS, None)
        granularity, start, end = params.bucketed_range(query, max_days=settings.ANALYTICS_MAX_EXPORT_DAYS)
        rows = selectors.usage_export_rows(scope, granularity, start, end, by=by)
        if kind == "csv":
            body, content_type = export_csv(rows), "text/csv; charset=utf-8"
        else:
            header = {
                "scope": scope.as_dict(),
                "granularity": granularity,
                "by": by,
                "from": selectors.iso(start),
                "to": selectors.iso(end),
            }
            body, content_type = export_json(header, rows), "application/json"
        response = StreamingHttpResponse(body, content_type=content_type)
        name = f"usage-{granularity}-{start:%Y%m%d}-{end:%Y%m%d}.{kind}"
        response["Content-Disposition"] = f'attachment; filename="{name}"'
        return response
