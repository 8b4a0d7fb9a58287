from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from analytics.retention import prune_messages


class Command(BaseCommand):
    help = (
        "Delete raw messages older than MESSAGE_RETENTION_DAYS whose hours and days are already "
        "rolled up (and conversations left empty). Rollups never change."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--days",
            type=int,
            default=None,
            help=f"Keep this many days (default MESSAGE_RETENTION_DAYS, {settings.MESSAGE_RETENTION_DAYS}).",
        )
        parser.add_argument("--dry-run", action="store_true", help="Count what would go; delete nothing.")

    def handle(self, *args, days: int | None, dry_run: bool, **options):
        if days is not None and days < 1:
            raise CommandError("--days must be at least 1")
        report = prune_messages(days=days, dry_run=dry_run)
        if report.cutoff is None:
            self.stdout.write(f"nothing pruned: {report.reason}")
            return
        verb = "would delete" if dry_run else "deleted"
        self.stdout.write(
            f"{verb} {report.messages} messages and {report.conversations} empty conversations "
            f"created before {report.cutoff:%Y-%m-%d %H:%M} UTC"
        )
