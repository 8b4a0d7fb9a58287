"""A rollup process killed mid-way (SIGKILL, no clean-up) leaves only whole
transactions behind, and the next run resumes from its watermark."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from urllib.parse import quote

import pytest
from django.db import connection

from agentsflow.testing import BASE_DIR
from analytics import rollup
from analytics.models import FillState, HourlyUsage
from analytics.tests.factories import ConversationSpec, MessageSpec, assert_rows_match, write

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


def _test_database_url() -> str:
    """The test database, for another process."""
    db = connection.settings_dict
    credentials = db["USER"] + (f":{quote(db['PASSWORD'])}" if db["PASSWORD"] else "")
    return f"postgres://{credentials}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


def test_killed_rollup_resumes_from_its_watermark(transactional_db, user, monkeypatch):
    start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(days=90)
    write(
        [
            ConversationSpec(
                user_id=user.pk,
                created_at=start + timedelta(hours=h),
                messages=[
                    MessageSpec(role="user", created_at=start + timedelta(hours=h)),
                    MessageSpec(role="assistant", created_at=start + timedelta(hours=h), latency_ms=h, ttft_ms=1),
                ],
            )
            for h in range(0, 90 * 24, 7)
        ]
    )
    env = {**os.environ, "DATABASE_URL": _test_database_url(), "DJANGO_SETTINGS_MODULE": "agentsflow.settings"}
    env.pop("REDIS_URL", None)
    process = subprocess.Popen(
        [sys.executable, "manage.py", "rollup"],
        cwd=BASE_DIR,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 120
        while not FillState.objects.filter(name="hour", end__isnull=False).exists():
            assert process.poll() is None, process.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the rollup never committed a transaction"
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
        process.wait(10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    watermark = FillState.objects.get(name="hour").end
    assert start < watermark < start + timedelta(days=80), "killed after the first commits, long before the end"
    # Whole transactions only: every 24-hour chunk before the watermark is complete, none after it.
    assert not HourlyUsage.objects.filter(bucket__gte=watermark).exists()
    assert not FillState.objects.filter(name="day", end__isnull=False).exists()

    seen = []
    real = rollup.compute_rows
    monkeypatch.setattr(rollup, "compute_rows", lambda g, a, b: seen.append((g, a)) or real(g, a, b))
    rollup.rollup()
    assert min(a for g, a in seen if g == "hour") == watermark  # resumed, not restarted
    assert_rows_match("hour")
    assert_rows_match("day")
