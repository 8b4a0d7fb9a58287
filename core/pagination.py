"""Keyset (cursor) pagination: stable under inserts, and every page costs one
index range scan however deep the client has paged."""

from __future__ import annotations

import base64
from datetime import datetime

from django.db.models import Q, QuerySet
from rest_framework.exceptions import ValidationError


def _encode(value: datetime, pk: int) -> str:
    return base64.urlsafe_b64encode(f"{value.isoformat()}|{pk}".encode()).decode().rstrip("=")


def _decode(cursor: str) -> tuple[datetime, int]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        stamp, pk = raw.rsplit("|", 1)
        return datetime.fromisoformat(stamp), int(pk)
    except (ValueError, UnicodeDecodeError):
        raise ValidationError({"cursor": ["Invalid cursor; use the `next` value of a previous page."]}) from None


def page_size(request, *, default: int, maximum: int) -> int:
    """``?page_size=``: a non-number is a 400; anything above the maximum is clamped."""
    raw = request.query_params.get("page_size")
    if raw in (None, ""):
        return default
    try:
        size = int(raw)
    except ValueError:
        raise ValidationError({"page_size": ["A whole number is required."]}) from None
    if size < 1:
        raise ValidationError({"page_size": ["Must be at least 1."]})
    return min(size, maximum)


def keyset_page(
    queryset: QuerySet, request, *, field: str, descending: bool, default: int, maximum: int
) -> tuple[list, str | None]:
    """One page of ``queryset`` ordered by (field, id), and the cursor of the next page.
    The items are model instances, or dicts for a ``.values()`` queryset."""
    size = page_size(request, default=default, maximum=maximum)
    cursor = request.query_params.get("cursor")
    if cursor:
        value, pk = _decode(cursor)
        op = "lt" if descending else "gt"
        queryset = queryset.filter(Q(**{f"{field}__{op}": value}) | Q(**{field: value, f"id__{op}": pk}))
    items = list(queryset[: size + 1])
    if len(items) <= size:
        return items, None
    items = items[:size]
    last = items[-1]
    if isinstance(last, dict):
        return items, _encode(last[field], last["id"])
    return items, _encode(getattr(last, field), last.pk)
