"""Cache invalidation for API-key lookups: any change to a key or its owner
drops the cached entry once the transaction commits, in every process (the
shared tier) and here (the memory tier)."""

from django.db import transaction
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from core.authentication import invalidate_key
from core.models import APIKey, User


def _invalidate_after_commit(prefixes: list[str]) -> None:
    """Drop the entries now and again after commit: a reader between the two
    could otherwise cache the pre-commit row for the whole TTL."""

    def invalidate() -> None:
        for prefix in prefixes:
            invalidate_key(prefix)

    invalidate()
    transaction.on_commit(invalidate)


@receiver([post_save, post_delete], sender=APIKey)
def api_key_changed(sender, instance: APIKey, **kwargs) -> None:
    _invalidate_after_commit([instance.prefix])


@receiver([post_save, post_delete], sender=User)
def user_changed(sender, instance: User, **kwargs) -> None:
    if kwargs.get("update_fields") == frozenset({"last_login"}):
        return
    prefixes = list(APIKey.objects.filter(user_id=instance.pk).values_list("prefix", flat=True))
    if prefixes:
        _invalidate_after_commit(prefixes)
