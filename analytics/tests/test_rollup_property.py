"""The rollups equal a direct aggregation of the raw rows, on random data around
daylight-saving changes and in a half-hour-offset zone, and a re-run changes nothing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from analytics import rollup
from analytics.models import DailyUsage, FillState, HourlyUsage
from analytics.tests.factories import ConversationSpec, MessageSpec, assert_rows_match, stored_rows, write
from chat.models import Conversation, Message

pytestmark = pytest.mark.django_db

# Local midnight and the hour around it are where buckets are most easily wrong.
ZONES = {
    "Europe/Paris": datetime(2026, 10, 25, 1, 0, tzinfo=UTC),  # summer time ends: a 25-hour day
    "America/New_York": datetime(2026, 3, 8, 7, 0, tzinfo=UTC),  # summer time starts: a 23-hour day
    "Asia/Kolkata": datetime(2026, 6, 1, 18, 30, tzinfo=UTC),  # +05:30: local midnight is half past a UTC hour
}
SPAN = timedelta(days=2)


def _instants(base: datetime):
    """Any second within two days of ``base``, or a moment a hair either side of a
    local midnight or UTC hour near it."""
    edges = [base + timedelta(hours=h) for h in range(-26, 27)]
    near_edges = st.builds(
        lambda edge, delta: edge + timedelta(microseconds=delta), st.sampled_from(edges), st.sampled_from([-1, 0, 1])
    )
    anywhere = st.integers(-int(SPAN.total_seconds()), int(SPAN.total_seconds())).map(
        lambda s: base + timedelta(seconds=s)
    )
    return st.one_of(near_edges, anywhere)


def _messages(base, key_ids):
    return st.builds(
        MessageSpec,
        role=st.sampled_from(["user", "assistant", "assistant", "system"]),
        created_at=_instants(base),
        status=st.sampled_from(["complete", "complete", "error", "cancelled", "streaming"]),
        key_id=st.sampled_from([None, *key_ids]),
        model_name=st.sampled_from(["alpha", "beta"]),
        prompt_tokens=st.integers(0, 5000),
        completion_tokens=st.integers(0, 5000),
        latency_ms=st.one_of(st.none(), st.integers(0, 120_000)),
        ttft_ms=st.one_of(st.none(), st.integers(0, 20_000)),
    )


def _conversations(base, user_ids, key_ids):
    return st.lists(
        st.builds(
            ConversationSpec,
            user_id=st.sampled_from(user_ids),
            created_at=_instants(base),
            model_name=st.sampled_from(["alpha", "beta"]),
            messages=st.lists(_messages(base, key_ids), max_size=6),
        ),
        max_size=8,
    )


def _reset() -> None:
    for model in (Message, Conversation, HourlyUsage, DailyUsage, FillState):
        model.objects.all().delete()


@pytest.mark.parametrize("zone", list(ZONES))
def test_rollups_equal_direct_aggregation_and_rerun_changes_nothing(zone, people, settings):
    settings.TIME_ZONE = zone
    base = ZONES[zone]
    users, keys = people
    now = base + SPAN + timedelta(hours=5)

    @hypothesis_settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(data=_conversations(base, [u.pk for u in users], [k.pk for k in keys]))
    def check(data):
        _reset()
        write(data)
        rollup.rollup(now=now)
        assert_rows_match("hour")
        assert_rows_match("day")

        before = {g: stored_rows(g) for g in ("hour", "day")}
        rollup.rollup(now=now)  # the current buckets again
        rollup.rollup(now=now, since=base - SPAN - timedelta(days=1))  # everything again
        assert {g: stored_rows(g) for g in ("hour", "day")} == before

    check()
