"""Raw-message retention: delete messages older than ``MESSAGE_RETENTION_DAYS``,
but only those whose hour and day rollups are final, so no rollup changes.

The cut-off is the earliest of: the retention age (floored to a local day, then
to a UTC hour), the hour rollup's watermark and the day rollup's watermark.
Every deleted row's hour and day buckets therefore end at or before both
watermarks, and the rollup never recomputes a bucket that starts before the cut-off
(see ``rollup.prune_horizon``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Exists, OuterRef
from django.utils import timezone

from analytics import buckets
from analytics.models import FillState
from analytics.rollup import PRUNE_STATE
from chat.models import Conversation, Message

BATCH = 2000


@dataclass
class PruneReport:
    cutoff: datetime | None
    messages: int = 0
    conversations: int = 0
    reason: str = ""


def prune_cutoff(*, days: int, now: datetime | None = None) -> tuple[datetime | None, str]:
    """The instant before which raw rows may go, or None and why not."""
    now = now or timezone.now()
    ends = dict(FillState.objects.filter(name__in=["hour", "day"]).values_list("name", "end"))
    if ends.get("hour") is None or ends.get("day") is None:
        return None, "the rollups have not run yet (manage.py rollup)"
    age_limit = buckets.floor("day", now - timedelta(days=days))
    return buckets.floor("hour", min(age_limit, ends["hour"], ends["day"])), ""


def _batches(queryset, size: int):
    while True:
        ids = list(queryset.order_by().values_list("id", flat=True)[:size])
        if not ids:
            return
        yield ids


def prune_messages(
    *, days: int | None = None, now: datetime | None = None, dry_run: bool = False, batch: int = BATCH
) -> PruneReport:
    """Delete raw messages older than the cut-off (in batches, one transaction each),
    then conversations left empty that were also created and last used before it.
    Records the cut-off as the prune horizon first, so a rollup running
    concurrently never recomputes a bucket whose rows are going."""
    days = settings.MESSAGE_RETENTION_DAYS if days is None else days
    cutoff, reason = prune_cutoff(days=days, now=now)
    report = PruneReport(cutoff=cutoff, reason=reason)
    if cutoff is None:
        return report
    old_messages = Message.objects.filter(created_at__lt=cutoff)
    empty_conversations = Conversation.objects.filter(created_at__lt=cutoff, updated_at__lt=cutoff).filter(
        ~Exists(Message.objects.filter(conversation=OuterRef("pk")))
    )
    if dry_run:
        report.messages = old_messages.count()
        return report

    with transaction.atomic():
        state, _ = FillState.objects.select_for_update().get_or_create(name=PRUNE_STATE)
        if state.end is None or state.end < cutoff:
            state.end = cutoff
            state.updated_at = timezone.now()
            state.save(update_fields=["end", "updated_at"])
    for ids in _batches(old_messages, batch):
        with transaction.atomic():
            report.messages += Message.objects.filter(id__in=ids).delete()[1].get("chat.Message", 0)
    for ids in _batches(empty_conversations, batch):
        with transaction.atomic():
            report.conversations += Conversation.objects.filter(id__in=ids).delete()[1].get("chat.Conversation", 0)
    return report
