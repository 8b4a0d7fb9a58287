import getpass

from django.core.management.base import BaseCommand, CommandError
from rest_framework.exceptions import ValidationError

from core.models import User
from core.services import user_create


class Command(BaseCommand):
    help = "Create a user (email login). Prompts for the password unless --password is given."

    def add_arguments(self, parser):
        parser.add_argument("email")
        parser.add_argument("--password")
        parser.add_argument("--name", default="", help="Display name.")
        parser.add_argument("--tier", choices=User.Tier.values, default=User.Tier.REGULAR)
        parser.add_argument("--staff", action="store_true", help="May open the staff dashboard and admin.")

    def handle(self, *args, email, password, name, tier, staff, **options):
        if password is None:
            password = getpass.getpass("Password: ")
        if len(password) < 8:
            raise CommandError("The password must be at least 8 characters.")
        try:
            user = user_create(email=email, password=password, display_name=name, tier=tier, is_staff=staff)
        except ValidationError as exc:
            raise CommandError(exc.detail["email"][0]) from None
        if staff:
            user.is_superuser = True
            user.save(update_fields=["is_superuser"])
        self.stdout.write(f"Created {user.email} (tier {user.tier}{', staff' if staff else ''}).")
