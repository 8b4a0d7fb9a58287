"""Exports stream: rows are read a page at a time (one query per page) and never
all held in memory, however long the range."""

from __future__ import annotations

import csv
import io
import tracemalloc
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from django.db import connection
from django.http import StreamingHttpResponse
from django.test.utils import CaptureQueriesContext

from analytics import selectors
from analytics.models import Dimension, HourlyUsage

pytestmark = pytest.mark.django_db

START = datetime(2020, 1, 1, tzinfo=UTC)
ROWS = 6_000


@pytest.fixture
def many_rows(user):
    """6,000 hourly rows of one user (about 8 months of hours)."""
    HourlyUsage.objects.bulk_create(
        [
            HourlyUsage(
                dimension=Dimension.USER,
                bucket=START + timedelta(hours=n),
                user_id=user.pk,
                requests=n % 7 + 1,
                messages=2 * (n % 7 + 1),
                tokens_in=n,
                latency_count=1,
                latency_sum_ms=100,
                latency_p50_ms=100.0,
                latency_p95_ms=100.0,
                latency_hist={"60": 1},
            )
            for n in range(ROWS)
        ],
        batch_size=2000,
    )
    return user


def test_csv_export_of_a_huge_range_streams_page_by_page(api, many_rows, monkeypatch):
    monkeypatch.setattr(selectors, "EXPORT_PAGE", 1000)
    response = api.get("/api/analytics/export?granularity=hour&from=2020-01-01&to=2029-12-31")
    assert response.status_code == 200
    assert isinstance(response, StreamingHttpResponse) and response.streaming
    assert response["Content-Type"].startswith("text/csv")
    assert 'filename="usage-hour-' in response["Content-Disposition"]

    chunks = iter(response.streaming_content)
    with CaptureQueriesContext(connection) as queries:
        header = next(chunks)
        first = next(chunks)
    # Nothing is read before the client asks; the first rows cost one page's query.
    assert len(queries) == 1
    assert "LIMIT 1000" in queries[0]["sql"]
    assert header.startswith(b"bucket,user_id,model,api_key_id,requests")

    with CaptureQueriesContext(connection) as queries:
        size = len(header) + len(first) + sum(len(chunk) for chunk in chunks)
    assert len(queries) == ROWS // 1000  # the remaining pages (+1 empty page)
    assert size > 50 * ROWS

    lines = list(csv.reader(io.StringIO(b"".join([header, first]).decode())))
    assert lines[1][0] == "2020-01-01T00:00:00+00:00"
    assert lines[1][4] == "1"


def _peak_memory(api, query: str) -> tuple[int, int]:
    """Peak memory while reading a whole export, and its size."""
    response = api.get(f"/api/analytics/export?{query}")
    tracemalloc.start()
    size = sum(len(chunk) for chunk in response.streaming_content)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak, size


def test_export_memory_does_not_grow_with_the_range(api, many_rows, monkeypatch):
    monkeypatch.setattr(selectors, "EXPORT_PAGE", 500)
    small_peak, small_size = _peak_memory(api, "granularity=hour&from=2020-01-01&to=2020-01-31")  # 744 rows
    large_peak, large_size = _peak_memory(api, "granularity=hour&from=2020-01-01&to=2029-12-31")  # 6,000 rows
    assert large_size > 5 * small_size
    # Bounded by the page, not the range (all rows at once would be over 5x).
    assert large_peak < 2 * small_peak, (small_peak, large_peak)


def test_json_export_is_valid_json_with_every_row(api, many_rows):
    response = api.get("/api/analytics/export?format=json&granularity=hour&from=2020-01-01&to=2029-12-31")
    assert response.status_code == 200 and response.streaming
    body = orjson.loads(b"".join(response.streaming_content))
    assert body["granularity"] == "hour" and body["scope"] == {"user": many_rows.pk}
    assert len(body["rows"]) == ROWS
    assert body["rows"][0]["latency_p50_ms"] == 100.0
    assert body["rows"][-1]["bucket"].startswith((START + timedelta(hours=ROWS - 1)).strftime("%Y-%m-%dT%H"))
    assert sum(row["requests"] for row in body["rows"]) == sum(n % 7 + 1 for n in range(ROWS))


def test_export_of_nothing_is_a_header_or_an_empty_list(api):
    csv_body = b"".join(api.get("/api/analytics/export?from=2026-01-01&to=2026-01-02").streaming_content)
    assert csv_body.decode().strip() == ",".join(selectors.EXPORT_COLUMNS)
    json_body = orjson.loads(
        b"".join(api.get("/api/analytics/export?format=json&from=2026-01-01&to=2026-01-02").streaming_content)
    )
    assert json_body["rows"] == []
