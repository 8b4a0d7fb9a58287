"""The selectors the dashboard imports: plain JSON-ready answers, scoped, and
range percentiles estimated from histograms within their stated error."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from analytics import histogram, rollup
from analytics.selectors import Scope, usage_breakdown, usage_export_rows, usage_summary, usage_timeseries
from analytics.tests.factories import ConversationSpec, MessageSpec, write


@settings(deadline=None)  # a loaded machine must not fail a test about arithmetic
@given(st.lists(st.integers(0, 40_000_000), min_size=1, max_size=300), st.sampled_from([0.5, 0.95, 0.99]))
def test_histogram_percentile_is_within_its_stated_error(values, fraction):
    exact = sorted(values)[max(1, math.ceil(fraction * len(values))) - 1]  # nearest rank
    estimate = histogram.percentile(histogram.merge({}, histogram.histogram(values)), fraction)
    if exact < histogram.EDGES[-1]:
        assert abs(estimate - exact) <= 0.045 * exact + 0.5, (exact, estimate)


def test_histogram_bins_match_postgresql_width_bucket_semantics():
    assert histogram.bin_of(0) == 0
    assert histogram.bin_of(1) == 1
    for index, edge in enumerate(histogram.EDGES, 1):
        assert histogram.bin_of(edge) == index
        assert histogram.bin_of(edge - 1) == index - 1


START = datetime(2026, 11, 2, 8, tzinfo=UTC)


@pytest.fixture
def traffic(people, db):
    users, keys = people
    write(
        [
            ConversationSpec(
                user_id=users[n % 2].pk,
                created_at=START + timedelta(hours=n),
                model_name="alpha" if n % 3 else "beta",
                messages=[
                    MessageSpec(role="user", created_at=START + timedelta(hours=n), key_id=keys[(n % 2) * 2].pk),
                    MessageSpec(
                        role="assistant",
                        created_at=START + timedelta(hours=n, seconds=2),
                        model_name="alpha" if n % 3 else "beta",
                        key_id=keys[(n % 2) * 2].pk,
                        status="error" if n % 10 == 0 else "complete",
                        prompt_tokens=100,
                        completion_tokens=n,
                        latency_ms=1000 + 10 * n,
                        ttft_ms=50,
                    ),
                ],
            )
            for n in range(48)
        ]
    )
    rollup.rollup(now=START + timedelta(days=4))
    return users, keys


def test_answers_are_plain_json(traffic):
    users, _ = traffic
    start, end = START, START + timedelta(days=3)
    for answer in (
        usage_summary(Scope.everyone(), start, end),
        usage_timeseries(Scope.of(users[0]), "latency_p95_ms", "hour", start, end),
        usage_breakdown(Scope.everyone(), "key", start, end, 5),
        list(usage_export_rows(Scope.everyone(), "day", start, end, by="model")),
    ):
        assert json.loads(json.dumps(answer)) == answer


def test_summary_breakdown_and_timeseries_agree(traffic):
    users, _ = traffic
    start, end = START, START + timedelta(days=3)
    everyone = usage_summary(Scope.everyone(), start, end)
    assert everyone["requests"] == 48 and everyone["errors"] == 5
    assert everyone["error_rate"] == round(5 / 48, 4)
    assert everyone["tokens_out"] == sum(range(48))
    per_user = [usage_summary(Scope.of(u), start, end)["requests"] for u in users]
    assert per_user == [24, 24, 0]
    by_model = usage_breakdown(Scope.everyone(), "model", start, end, 10)
    assert {r["id"]: r["requests"] for r in by_model["results"]} == {"alpha": 32, "beta": 16}
    series = usage_timeseries(Scope.everyone(), "requests", "hour", start, end)
    assert len(series["points"]) == 72 and sum(p["value"] for p in series["points"]) == 48
    daily = usage_timeseries(Scope.everyone(), "tokens", "day", start, end)
    assert sum(p["value"] for p in daily["points"]) == everyone["tokens"]


def test_user_scope_breakdown_by_model_uses_the_users_own_rows(traffic):
    users, _ = traffic
    start, end = START, START + timedelta(days=3)
    mine = usage_breakdown(Scope.of(users[1]), "model", start, end, 10)
    # users[1] has the odd hours: alpha unless n % 3 == 0.
    expected = {
        "alpha": sum(1 for n in range(1, 48, 2) if n % 3),
        "beta": sum(1 for n in range(1, 48, 2) if n % 3 == 0),
    }
    assert {r["id"]: r["requests"] for r in mine["results"]} == expected


def test_range_percentiles_are_close_to_the_exact_ones(traffic):
    start, end = START, START + timedelta(days=3)
    summary = usage_summary(Scope.everyone(), start, end)
    complete = sorted(1000 + 10 * n for n in range(48) if n % 10)
    for name, fraction in (("latency_p50_ms", 0.5), ("latency_p95_ms", 0.95)):
        exact = complete[math.ceil(fraction * len(complete)) - 1]
        assert summary[name] == pytest.approx(exact, rel=0.045)
