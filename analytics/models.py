"""Usage rollups (the shape of Zulip's analytics: count tables plus a fill state).

Each row holds the usage of one bucket (an hour or a day) for one slice of the
installation, named by ``dimension``:

=============  ===========================  =========================================
dimension      split by                     answers
=============  ===========================  =========================================
``all``        nothing (installation-wide)  the staff totals and charts
``user``       ``user_id``                  a user's totals and charts; top users
``model``      ``model_name``               usage by model across everyone
``key``        ``user_id``, ``api_key_id``  usage by API key (0 = browser session)
``user_model`` ``user_id``, ``model_name``  a user's usage by model
=============  ===========================  =========================================

Columns a row does not split by hold 0 or "". Counts and sums add up across
rows; percentiles do not, so every row also carries a small latency histogram
(see ``analytics.histogram``) from which a range's percentiles are estimated.

Hour buckets are whole UTC hours; day buckets are calendar days in
``settings.TIME_ZONE`` (23 to 25 hours long where daylight saving time changes).
``user_id`` and ``api_key_id`` are plain numbers, not foreign keys: usage
history outlives a deleted user or key.
"""

from __future__ import annotations

from django.db import models
from django.utils import timezone


class Dimension(models.TextChoices):
    ALL = "all"
    USER = "user"
    MODEL = "model"
    KEY = "key"
    USER_MODEL = "user_model"


class UsageRollup(models.Model):
    dimension = models.CharField(max_length=16, choices=Dimension.choices)
    bucket = models.DateTimeField(help_text="Start of the hour or day.")
    user_id = models.BigIntegerField(default=0)
    model_name = models.CharField(max_length=64, default="", blank=True)
    api_key_id = models.BigIntegerField(default=0, help_text="0: no API key (a browser session).")

    requests = models.BigIntegerField(default=0, help_text="Model calls (assistant replies started).")
    conversations = models.BigIntegerField(default=0, help_text="Conversations started.")
    messages = models.BigIntegerField(default=0, help_text="User and assistant messages.")
    tokens_in = models.BigIntegerField(default=0)
    tokens_out = models.BigIntegerField(default=0)
    errors = models.BigIntegerField(default=0)
    cancels = models.BigIntegerField(default=0)

    # Over complete replies only.
    latency_count = models.BigIntegerField(default=0)
    latency_sum_ms = models.BigIntegerField(default=0)
    latency_p50_ms = models.FloatField(null=True, blank=True)
    latency_p95_ms = models.FloatField(null=True, blank=True)
    latency_hist = models.JSONField(default=dict, blank=True)
    ttft_count = models.BigIntegerField(default=0)
    ttft_sum_ms = models.BigIntegerField(default=0)
    ttft_p50_ms = models.FloatField(null=True, blank=True)
    ttft_p95_ms = models.FloatField(null=True, blank=True)
    ttft_hist = models.JSONField(default=dict, blank=True)

    class Meta:
        abstract = True

    def __str__(self) -> str:
        return f"{self.dimension} usage from {self.bucket:%Y-%m-%d %H:%M}"


class HourlyUsage(UsageRollup):
    class Meta:
        db_table = "analytics_usage_hourly"
        constraints = [
            models.UniqueConstraint(
                fields=["dimension", "bucket", "user_id", "model_name", "api_key_id"], name="uniq_usage_hourly_row"
            )
        ]
        # One user's rows over a range (the unique index serves everyone's).
        indexes = [models.Index(fields=["dimension", "user_id", "bucket"], name="idx_usage_hourly_user")]


class DailyUsage(UsageRollup):
    class Meta:
        db_table = "analytics_usage_daily"
        constraints = [
            models.UniqueConstraint(
                fields=["dimension", "bucket", "user_id", "model_name", "api_key_id"], name="uniq_usage_daily_row"
            )
        ]
        indexes = [models.Index(fields=["dimension", "user_id", "bucket"], name="idx_usage_daily_user")]


class FillState(models.Model):
    """How far a rollup (``hour``, ``day``) is final, and how far raw rows were pruned.

    Every bucket that starts before ``end`` is final: the rollup never computes
    it again on its own. Buckets from ``end`` on are recomputed on every run.
    """

    name = models.CharField(max_length=16, unique=True)
    end = models.DateTimeField(null=True, blank=True)
    last_run_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        db_table = "analytics_fill_state"

    def __str__(self) -> str:
        return f"{self.name} final before {self.end}"
