"""Writes for accounts and API keys."""

from __future__ import annotations

from datetime import datetime

from django.db import IntegrityError, transaction
from django.utils import timezone
from rest_framework.exceptions import ValidationError

from core import keys
from core.models import APIKey, User

MAX_ACTIVE_KEYS_PER_USER = 100
DEFAULT_KEY_SCOPES = [APIKey.Scope.CHAT, APIKey.Scope.CONVERSATIONS_READ]


def user_create(
    *,
    email: str,
    password: str | None = None,
    display_name: str = "",
    tier: str = User.Tier.REGULAR,
    is_staff: bool = False,
) -> User:
    """Create a user with a normalised (lower-case) email. Raises ValidationError if taken."""
    email = User.objects.normalize_email(email).strip().lower()
    if User.objects.filter(email=email).exists():
        raise ValidationError({"email": ["A user with this email already exists."]})
    return User.objects.create_user(
        email=email, password=password, display_name=display_name, tier=tier, is_staff=is_staff
    )


def user_update_profile(*, user: User, display_name: str) -> User:
    """Change what a user may change about themselves (tier and staff are not among it)."""
    user.display_name = display_name
    user.save(update_fields=["display_name", "updated_at"])
    return user


@transaction.atomic
def api_key_issue(
    *, user: User, name: str, scopes: list[str] | None = None, expires_at: datetime | None = None
) -> tuple[APIKey, str]:
    """Create a key and return it with its plaintext, which is never stored or shown again."""
    active = APIKey.objects.filter(user=user, revoked_at__isnull=True).count()
    if active >= MAX_ACTIVE_KEYS_PER_USER:
        raise ValidationError({"name": [f"A user may hold at most {MAX_ACTIVE_KEYS_PER_USER} active keys."]})
    scopes = sorted(set(scopes if scopes is not None else DEFAULT_KEY_SCOPES))
    for _ in range(5):  # prefix collisions are astronomically rare, but cheap to survive
        new = keys.generate()
        try:
            with transaction.atomic():
                key = APIKey.objects.create(
                    user=user,
                    name=name,
                    prefix=new.prefix,
                    secret_hash=new.secret_hash,
                    scopes=scopes,
                    expires_at=expires_at,
                )
            return key, new.plaintext
        except IntegrityError:
            continue
    raise RuntimeError("could not allocate a unique API key prefix")


def api_key_revoke(*, key: APIKey) -> APIKey:
    """Revoke a key; every process stops accepting it once the change commits (cache dropped)."""
    if key.revoked_at is None:
        key.revoked_at = timezone.now()
        key.save(update_fields=["revoked_at"])
    return key
