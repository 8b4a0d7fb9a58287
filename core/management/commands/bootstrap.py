"""First-run set-up for `make run`: a demo user, a staff user and an API key.

Everything is printed once. The two passwords are also kept in
var/demo-credentials.txt (mode 600) so a developer can sign in again later;
the API key is not (issue another with `manage.py issuekey`). Running it again
changes nothing.
"""

import secrets

from django.conf import settings
from django.core.management.base import BaseCommand

from core.models import APIKey, User
from core.services import api_key_issue, user_create

DEMO_EMAIL = "demo@agentsflow.local"
STAFF_EMAIL = "staff@agentsflow.local"


class Command(BaseCommand):
    help = "Create the demo and staff users and a demo API key (idempotent)."

    def handle(self, *args, **options):
        credentials_file = settings.VAR_DIR / "demo-credentials.txt"
        if User.objects.filter(email=DEMO_EMAIL).exists():
            self.stdout.write(f"Demo accounts exist; their credentials are in {credentials_file}.")
            return
        demo_password, staff_password = secrets.token_urlsafe(12), secrets.token_urlsafe(12)
        demo = user_create(email=DEMO_EMAIL, password=demo_password, display_name="Demo user")
        staff = user_create(email=STAFF_EMAIL, password=staff_password, display_name="Staff", is_staff=True)
        staff.is_superuser = True
        staff.save(update_fields=["is_superuser"])
        scopes = [APIKey.Scope.CHAT, APIKey.Scope.CONVERSATIONS_READ, APIKey.Scope.ANALYTICS_READ]
        _, plaintext = api_key_issue(user=demo, name="demo", scopes=scopes)
        passwords = (
            f"Demo user:  {DEMO_EMAIL}  password: {demo_password}\n"
            f"Staff user: {STAFF_EMAIL}  password: {staff_password}\n"
        )
        credentials_file.write_text(passwords)
        credentials_file.chmod(0o600)
        self.stdout.write(self.style.SUCCESS("Created demo accounts (passwords also in var/demo-credentials.txt):"))
        self.stdout.write(passwords)
        self.stdout.write(f"Demo API key, shown this once (chat, conversations:read, analytics:read):\n  {plaintext}\n")
