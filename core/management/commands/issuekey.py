from django.core.management.base import BaseCommand, CommandError

from core.models import APIKey, User
from core.services import api_key_issue


class Command(BaseCommand):
    help = "Issue an API key for a user and print it (the only time it is shown)."

    def add_arguments(self, parser):
        parser.add_argument("email")
        parser.add_argument("--name", default="cli")
        parser.add_argument(
            "--scopes",
            default="chat,conversations:read",
            help=f"Comma-separated, from: {', '.join(APIKey.Scope.values)}.",
        )
        parser.add_argument(
            "--rate-limit",
            type=int,
            default=None,
            help="Requests per minute for this key, instead of the owner's tier limit (e.g. for load tests).",
        )

    def handle(self, *args, email, name, scopes, rate_limit, **options):
        user = User.objects.filter(email=email.strip().lower()).first()
        if user is None:
            raise CommandError(f"No user with email {email!r}.")
        wanted = [scope.strip() for scope in scopes.split(",") if scope.strip()]
        unknown = sorted(set(wanted) - set(APIKey.Scope.values))
        if unknown:
            raise CommandError(f"Unknown scopes: {', '.join(unknown)}.")
        if rate_limit is not None and rate_limit < 1:
            raise CommandError("--rate-limit must be at least 1.")
        key, plaintext = api_key_issue(user=user, name=name, scopes=wanted)
        if rate_limit is not None:
            key.rate_limit_per_minute = rate_limit
            key.save(update_fields=["rate_limit_per_minute"])
        self.stdout.write(plaintext)
        self.stderr.write(f"Issued {key.prefix}… for {user.email} with scopes {', '.join(key.scopes)}; store it now.")
