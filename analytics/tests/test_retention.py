"""prune_messages deletes only raw rows whose hours and days are final, and no
rollup changes: not at once, not after another rollup run, not after --since."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.core.management import call_command

from analytics import rollup
from analytics.models import FillState
from analytics.retention import prune_messages
from analytics.tests.factories import ConversationSpec, MessageSpec, stored_rows, write
from chat.models import Conversation, Message

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 11, 20, 12, 30, tzinfo=UTC)


def _seed(user, key_id: int | None) -> None:
    """A conversation a day for 20 days, plus one that spans the whole period."""
    specs = []
    for day in range(20):
        at = NOW - timedelta(days=day, hours=3)
        specs.append(
            ConversationSpec(
                user_id=user.pk,
                created_at=at,
                messages=[
                    MessageSpec(role="user", created_at=at, key_id=key_id),
                    MessageSpec(
                        role="assistant",
                        created_at=at + timedelta(seconds=1),
                        latency_ms=50 + day,
                        ttft_ms=5,
                        prompt_tokens=10,
                    ),
                ],
            )
        )
    long = NOW - timedelta(days=25)
    specs.append(
        ConversationSpec(
            user_id=user.pk,
            created_at=long,
            messages=[MessageSpec(role="user", created_at=long + timedelta(days=d), key_id=key_id) for d in range(26)],
        )
    )
    write(specs)


@pytest.mark.parametrize("zone", ["UTC", "Asia/Kolkata"])
def test_prune_keeps_every_rollup_identical(zone, settings, people):
    settings.TIME_ZONE = zone
    settings.ROLLUP_SETTLE_SECONDS = 3600
    users, keys = people
    _seed(users[0], keys[0].pk)
    rollup.rollup(now=NOW)
    before = {g: stored_rows(g) for g in ("hour", "day")}
    total = Message.objects.count()

    report = prune_messages(days=7, now=NOW)
    assert report.cutoff is not None and report.cutoff <= NOW - timedelta(days=7)
    assert 0 < report.messages < total
    assert not Message.objects.filter(created_at__lt=report.cutoff).exists()
    assert Message.objects.filter(created_at__gte=report.cutoff).count() == total - report.messages
    assert report.conversations > 0  # emptied ones went; the long one (still used) stays
    assert Conversation.objects.filter(created_at__lt=NOW - timedelta(days=20)).count() == 1

    assert {g: stored_rows(g) for g in ("hour", "day")} == before
    rollup.rollup(now=NOW)
    rollup.rollup(now=NOW, since=NOW - timedelta(days=60))  # clamped to the prune horizon
    assert {g: stored_rows(g) for g in ("hour", "day")} == before
    assert FillState.objects.get(name="prune").end == report.cutoff


def test_prune_waits_for_the_rollups(settings, user):
    """Raw rows whose buckets are not final yet stay, whatever their age."""
    _seed(user, None)
    assert prune_messages(days=1, now=NOW).cutoff is None  # never rolled up
    settings.ROLLUP_SETTLE_SECONDS = 0
    rollup.rollup(now=NOW - timedelta(days=10))  # final only up to ten days ago
    recent = Message.objects.filter(created_at__gte=NOW - timedelta(days=10))
    count = recent.count()
    report = prune_messages(days=1, now=NOW)
    assert report.cutoff <= NOW - timedelta(days=10)
    assert report.messages > 0
    assert recent.count() == count


def test_prune_command(settings, user, capsys):
    settings.ROLLUP_SETTLE_SECONDS = 0
    _seed(user, None)
    call_command("prune_messages")
    assert "nothing pruned" in capsys.readouterr().out
    call_command("rollup")
    count = Message.objects.count()
    call_command("prune_messages", days=5, dry_run=True)
    assert "would delete" in capsys.readouterr().out
    assert Message.objects.count() == count
    call_command("prune_messages", days=5)
    assert "deleted" in capsys.readouterr().out
    assert Message.objects.count() < count
