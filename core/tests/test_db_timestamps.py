"""Timestamps are parsed by psycopg's C loader, with the values Django's own loader gives."""

import datetime

import pytest
from django.db import connection
from django.db.backends.postgresql.psycopg_any import register_tzloader

pytestmark = [pytest.mark.postgres, pytest.mark.django_db]

STAMPS = [
    "2026-11-27 10:15:03.123456+00",
    "1999-12-31 23:59:59+05:30",
    "2026-03-29 01:30:00-09:30",
    "0001-01-01 00:00:00+00",
    "9999-12-31 23:59:59.999999+00",
]


def _load(cursor) -> list[datetime.datetime]:
    cursor.execute("SELECT unnest(%s::timestamptz[])", [STAMPS])
    return [row[0] for row in cursor.fetchall()]


def test_timestamps_load_in_c_with_djangos_values():
    from core.dbbackend.base import UtcTimestamptzLoader

    with connection.cursor() as cursor:
        assert cursor.cursor.adapters.get_loader(1184, 0) is UtcTimestamptzLoader  # timestamptz, text
        fast = _load(cursor)
    with connection.cursor() as cursor:
        register_tzloader(connection.timezone, cursor.cursor)  # Django's own loader, on this cursor only
        assert cursor.cursor.adapters.get_loader(1184, 0) is not UtcTimestamptzLoader
        expected = _load(cursor)
    assert fast == expected
    assert all(value.tzinfo is datetime.UTC for value in fast + expected)
