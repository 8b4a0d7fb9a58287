"""Rollup behaviour on chosen data: bucket boundaries, near-real-time refills,
the watermark, resuming after a crash, and concurrent changes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.core.management import call_command

from analytics import buckets, rollup
from analytics.models import DailyUsage, Dimension, FillState, HourlyUsage
from analytics.tests.factories import ConversationSpec, MessageSpec, assert_rows_match, stored_rows, write
from chat.models import Message

pytestmark = pytest.mark.django_db


def _reply(at: datetime, **fields) -> MessageSpec:
    fields.setdefault("latency_ms", 100)
    fields.setdefault("ttft_ms", 10)
    return MessageSpec(role="assistant", created_at=at, **fields)


def _day_totals() -> dict[datetime, int]:
    return dict(DailyUsage.objects.filter(dimension=Dimension.ALL).values_list("bucket", "requests"))


def test_days_follow_the_settings_time_zone(settings, user):
    """In Asia/Kolkata (+05:30) local midnight is 18:30 UTC: a reply a microsecond
    before it counts for the earlier local day, one at it for the next; hours stay UTC."""
    settings.TIME_ZONE = "Asia/Kolkata"
    midnight = datetime(2026, 6, 1, 18, 30, tzinfo=UTC)  # 2026-06-02 00:00 in Kolkata
    write(
        [
            ConversationSpec(
                user_id=user.pk,
                created_at=midnight - timedelta(hours=1),
                messages=[_reply(midnight - timedelta(microseconds=1)), _reply(midnight), _reply(midnight)],
            )
        ]
    )
    rollup.rollup(now=midnight + timedelta(days=1))
    assert _day_totals() == {
        datetime(2026, 6, 1, 18, 30, tzinfo=UTC) - timedelta(days=1): 1,  # 2026-06-01 local
        midnight: 2,  # 2026-06-02 local
    }
    hours = dict(HourlyUsage.objects.filter(dimension=Dimension.ALL, requests__gt=0).values_list("bucket", "requests"))
    assert hours == {datetime(2026, 6, 1, 18, tzinfo=UTC): 3}  # 18:29:59.999999 and 18:30 share a UTC hour


def test_a_day_when_clocks_go_back_has_25_hours(settings, user):
    settings.TIME_ZONE = "Europe/Paris"
    day = datetime(2026, 10, 24, 22, 0, tzinfo=UTC)  # 2026-10-25 00:00 in Paris (summer time)
    end = datetime(2026, 10, 25, 23, 0, tzinfo=UTC)  # 2026-10-26 00:00 in Paris (winter time)
    assert buckets.following("day", day) == end
    write(
        [
            ConversationSpec(
                user_id=user.pk,
                created_at=day,
                messages=[_reply(day), _reply(end - timedelta(microseconds=1)), _reply(end)],
            )
        ]
    )
    rollup.rollup(now=end + timedelta(days=1))
    assert _day_totals() == {day: 2, end: 1}
    assert_rows_match("day")


def test_current_hour_is_refilled_each_run_and_watermark_waits_for_settling(settings, user):
    settings.ROLLUP_SETTLE_SECONDS = 3600
    now = datetime(2026, 11, 20, 12, 30, tzinfo=UTC)
    write([ConversationSpec(user_id=user.pk, created_at=now - timedelta(hours=3), messages=[_reply(now)])])
    rollup.rollup(now=now)
    assert FillState.objects.get(name="hour").end == datetime(2026, 11, 20, 11, tzinfo=UTC)
    current = HourlyUsage.objects.get(dimension=Dimension.ALL, bucket=datetime(2026, 11, 20, 12, tzinfo=UTC))
    assert current.requests == 1

    # A second reply in the same (still open) hour shows up on the next run.
    write([ConversationSpec(user_id=user.pk, created_at=now, messages=[_reply(now + timedelta(minutes=5))])])
    rollup.rollup(now=now + timedelta(minutes=10))
    current = HourlyUsage.objects.get(dimension=Dimension.ALL, bucket=current.bucket)  # rows are rewritten
    assert current.requests == 2
    assert current.conversations == 1

    # A reply that finishes late (its status changes after it was counted) is still
    # picked up while its hour is within the settle time.
    Message.objects.filter(role="assistant").update(status="error")
    rollup.rollup(now=now + timedelta(minutes=50))
    assert HourlyUsage.objects.get(dimension=Dimension.ALL, bucket=current.bucket).errors == 2
    assert_rows_match("hour")
    assert_rows_match("day")


def test_settled_buckets_are_not_recomputed_without_since(settings, user):
    """Past the watermark a rollup is final: a change to old raw rows only shows after --since."""
    settings.ROLLUP_SETTLE_SECONDS = 0
    now = datetime(2026, 11, 20, 12, 30, tzinfo=UTC)
    old = now - timedelta(days=3)
    write([ConversationSpec(user_id=user.pk, created_at=old, messages=[_reply(old)])])
    rollup.rollup(now=now)
    Message.objects.update(status="error")
    rollup.rollup(now=now)
    assert HourlyUsage.objects.get(dimension=Dimension.ALL).errors == 0
    rollup.rollup(now=now, since=old)
    assert HourlyUsage.objects.get(dimension=Dimension.ALL).errors == 1
    assert_rows_match("hour")


def _seed_week(user) -> datetime:
    start = datetime(2026, 11, 1, tzinfo=UTC)
    write(
        [
            ConversationSpec(
                user_id=user.pk,
                created_at=start + timedelta(hours=h),
                messages=[
                    MessageSpec(role="user", created_at=start + timedelta(hours=h)),
                    _reply(start + timedelta(hours=h, minutes=1), latency_ms=100 + h, prompt_tokens=h),
                ],
            )
            for h in range(0, 24 * 7, 5)
        ]
    )
    return start


def test_a_crashed_run_resumes_from_its_watermark(monkeypatch, settings, user):
    """A run that dies part-way (here: in its fourth transaction, after the delete)
    keeps what it committed; the next run starts at the watermark and ends equal
    to a clean run."""
    settings.ROLLUP_SETTLE_SECONDS = 0
    start = _seed_week(user)
    now = start + timedelta(days=8)

    original = HourlyUsage.objects.bulk_create
    calls = {"n": 0}

    def crash_on_fourth(rows, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt("simulated crash")
        return original(rows, **kwargs)

    monkeypatch.setattr(HourlyUsage.objects, "bulk_create", crash_on_fourth)
    with pytest.raises(KeyboardInterrupt):
        rollup.rollup(now=now)
    watermark = FillState.objects.get(name="hour").end
    assert watermark == start + timedelta(hours=3 * rollup.CHUNK_BUCKETS["hour"])
    # The failed transaction left its buckets as they were (absent), not half-written.
    assert not HourlyUsage.objects.filter(bucket__gte=watermark).exists()
    committed = {k: v for k, v in stored_rows("hour").items() if k[1] < watermark}

    windows = []
    real_compute = rollup.compute_rows
    monkeypatch.setattr(HourlyUsage.objects, "bulk_create", original)
    monkeypatch.setattr(rollup, "compute_rows", lambda g, a, b: windows.append((g, a)) or real_compute(g, a, b))
    rollup.rollup(now=now)
    assert min(a for g, a in windows if g == "hour") == watermark  # resumed, not restarted
    assert {k: v for k, v in stored_rows("hour").items() if k[1] < watermark} == committed
    assert_rows_match("hour")
    assert_rows_match("day")


def test_rollup_command_runs_and_is_idempotent(settings, user, capsys):
    settings.ROLLUP_SETTLE_SECONDS = 0
    start = _seed_week(user)
    call_command("rollup", since=start.date().isoformat())
    first = {g: stored_rows(g) for g in ("hour", "day")}
    assert first["hour"] and first["day"]
    call_command("rollup")
    call_command("rollup", since="2026-10-01")
    assert {g: stored_rows(g) for g in ("hour", "day")} == first
    out = capsys.readouterr().out
    assert "hour:" in out and "day:" in out


def test_rollup_command_rejects_a_bad_since():
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="--since"):
        call_command("rollup", since="yesterday")


def test_nothing_to_roll_up_on_a_fresh_install(capsys):
    call_command("rollup")
    assert not HourlyUsage.objects.exists()
    assert FillState.objects.get(name="hour").end is not None
