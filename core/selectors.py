"""Reads for accounts and API keys, always scoped to the requesting user."""

from django.db.models import QuerySet
from django.http import Http404

from core.models import APIKey, User


def api_key_list(*, user: User) -> QuerySet[APIKey]:
    return APIKey.objects.filter(user=user).order_by("-created_at", "-id")


def api_key_get(*, user: User, key_id: int) -> APIKey:
    """The user's own key; someone else's (or a missing one) is a 404, never a 403."""
    key = APIKey.objects.filter(user=user, pk=key_id).first()
    if key is None:
        raise Http404("No such API key.")
    return key
