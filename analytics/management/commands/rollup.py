import logging
import os
import signal
import threading

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import close_old_connections
from rest_framework.exceptions import ValidationError

from analytics import rollup
from analytics.params import moment
from core import live_metrics

logger = logging.getLogger("agentsflow.analytics")


class Command(BaseCommand):
    help = (
        "Fill the usage rollups from the raw messages: from each rollup's watermark (or --since) "
        "through the current hour and day. Idempotent; resumes where a stopped run left off."
    )

    def add_arguments(self, parser):
        parser.add_argument("--loop", action="store_true", help="Run again every --interval seconds until stopped.")
        parser.add_argument(
            "--interval",
            type=float,
            default=None,
            help="Seconds between runs with --loop (default ROLLUP_INTERVAL_SECONDS).",
        )
        parser.add_argument(
            "--since",
            help="Also recompute from this date (YYYY-MM-DD) or ISO date-time on, back to the prune horizon at most.",
        )

    def handle(self, *args, loop: bool, interval: float | None, since: str | None, verbosity: int, **options):
        try:
            since_at = moment(since, "since", is_end=False) if since else None
        except ValidationError as error:
            raise CommandError(f"--since: {error.detail['since'][0]}") from None
        interval = settings.ROLLUP_INTERVAL_SECONDS if interval is None else interval
        if interval <= 0:
            raise CommandError("--interval must be positive")
        stop = threading.Event()
        if loop:
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: stop.set())
        while True:
            try:
                self._run_once(since_at, verbosity)
                if loop and os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
                    # The servers' metrics files are readable here: keep the dashboard's
                    # history going while nobody has the dashboard open.
                    live_metrics.record_sample_if_due()
            except Exception:
                if not loop:
                    raise
                logger.exception("rollup failed; retrying in %s s", interval)
            since_at = None  # only the first run goes back
            if not loop or stop.wait(interval):
                return
            close_old_connections()

    def _run_once(self, since, verbosity: int) -> None:
        def progress(report: rollup.FillReport) -> None:
            if verbosity >= 2:
                self.stdout.write(f"  {report.granularity}: {report.buckets} buckets, {report.rows} rows")

        for report in rollup.rollup(since=since, on_chunk=progress):
            self.stdout.write(
                f"{report.granularity}: {report.buckets} buckets from {report.start:%Y-%m-%d %H:%M} "
                f"({report.rows} rows); final before {report.final_before:%Y-%m-%d %H:%M} UTC"
                if report.start and report.final_before
                else f"{report.granularity}: nothing to roll up"
            )
