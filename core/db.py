"""Database work from async code.

``database_sync_to_async`` is asgiref's ``sync_to_async`` that gives the thread's
database connections back (to the pool) after each call, as Django does at the
end of a request. Async views that wait on a model, and replies that outlive
their request, use it: with plain ``sync_to_async`` a request keeps its
connection until it ends (so DB_POOL_MAX_SIZE requests waiting on a model starve
the worker), and a reply that finishes after its request stores itself on a
thread nobody ever closes, so its connection never returns to the pool.

Unlike channels' helper of the same name, it leaves a connection alone while a
transaction is open on it (tests run each test inside one).
"""

from __future__ import annotations

import datetime

from asgiref.sync import SyncToAsync
from django.db import connections
from django.db.backends.signals import connection_created
from django.dispatch import receiver


def release_connections() -> None:
    """Close (return to the pool) this thread's connections that are not in a transaction."""
    for connection in connections.all(initialized_only=True):
        if not connection.in_atomic_block:
            connection.close_if_unusable_or_obsolete()


class DatabaseSyncToAsync(SyncToAsync):
    def thread_handler(self, loop, *args, **kwargs):
        try:
            return super().thread_handler(loop, *args, **kwargs)
        finally:
            release_connections()


database_sync_to_async = DatabaseSyncToAsync


# --- timestamps in C ---------------------------------------------------------------


def _c_timestamptz_loader():
    try:
        from psycopg import _cmodule
    except ImportError:  # psycopg 2 or no psycopg: SQLite
        return None
    return getattr(_cmodule._psycopg, "TimestamptzLoader", None) if _cmodule._psycopg else None


_CLoader = _c_timestamptz_loader()


if _CLoader is not None:
    from psycopg.adapt import Loader

    class UtcTimestamptzLoader(Loader):
        """psycopg's C timestamptz loader, for connections whose time zone is UTC.
        Django registers a Python subclass of psycopg's Python loader (to attach its
        time zone), which parsed every timestamp in Python: 17 % of the CPU of a page
        of 50 conversations. On a UTC connection the C loader's values are the same
        (``tzinfo`` is ``datetime.UTC``); ``timezone`` is what Django checks to keep it."""

        timezone = datetime.UTC

        def __init__(self, oid, context=None):
            super().__init__(oid, context)
            self._load = _CLoader(oid, context).load

        def load(self, data):
            return self._load(data)


@receiver(connection_created)
def _load_timestamps_in_c(sender, connection, **kwargs) -> None:
    if _CLoader is None or connection.vendor != "postgresql" or connection.timezone is not datetime.UTC:
        return
    if connection.connection.info.parameter_status("TimeZone") == "UTC":
        connection.connection.adapters.register_loader("timestamptz", UtcTimestamptzLoader)
