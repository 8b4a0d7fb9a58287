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

from asgiref.sync import SyncToAsync
from django.db import connections


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
