"""The PostgreSQL backend: django-prometheus's (query metrics), whose connection
pool checks a connection before handing it out without a round trip, and whose
connections parse timestamps in C.

psycopg_pool's own check (Django's, with CONN_HEALTH_CHECKS) sends an empty
query and waits for the answer: a round trip on every checkout, so on every
request. A connection that PostgreSQL closed while it sat in the pool (a
restart, ``pg_terminate_backend``, an idle timeout) has something to read
instead: the server's last error, then the end of the stream. A healthy idle
connection has nothing, so a poll of its socket tells the two apart without a
word to the server. (A server that vanished without closing anything fools
both checks alike: the empty query would wait for TCP to give up.)
"""

from __future__ import annotations

import datetime
import functools
import select

import psycopg
from django.db.backends.postgresql import base as django_postgresql
from django_prometheus.db.backends.postgresql import base
from django_prometheus.db.common import ExportingCursorWrapper
from psycopg.adapt import Loader


def check_connection(conn: psycopg.Connection) -> None:
    """Raise for a connection that is closed, or that the server spoke on while it
    was idle (the pool then drops it and hands out another)."""
    if conn.closed or conn.broken:
        raise psycopg.OperationalError("the connection is closed")
    poller = select.poll()  # not select(): descriptors past 1024 (10,000 sockets open)
    poller.register(conn.fileno(), select.POLLIN)
    if poller.poll(0):
        conn.close()  # a closed connection is dropped when the pool takes it back, and replaced
        raise psycopg.OperationalError("the server closed the connection, or spoke on it, while it was idle")


def _c_timestamptz_loader():
    from psycopg import _cmodule

    return getattr(_cmodule._psycopg, "TimestamptzLoader", None) if _cmodule._psycopg else None


_CLoader = _c_timestamptz_loader()  # None with psycopg's pure-Python build


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


@functools.cache
def _exporting_cursor(cursor_class: type, alias: str, vendor: str) -> type:
    return ExportingCursorWrapper(cursor_class, alias, vendor)


class DatabaseWrapper(base.DatabaseWrapper):
    def get_connection_params(self):
        """django-prometheus's, with its query-counting cursor class made once per
        kind of cursor: it defined a new class on every connect, which with the pool
        is every checkout (each request, each hop to a database thread)."""
        params = django_postgresql.DatabaseWrapper.get_connection_params(self)
        params["cursor_factory"] = _exporting_cursor(params["cursor_factory"], self.alias, self.vendor)
        return params

    @property
    def pool(self):
        pool = super().pool
        # Django passes psycopg_pool its own check (or none) and takes no other; the
        # pool keeps it in ``_check`` (psycopg-pool is pinned; test_pgpool.py checks it).
        if pool is not None and pool._check is not check_connection:
            pool._check = check_connection
        return pool

    def _configure_connection(self, connection):
        """Django's set-up of a new connection (run once per connection: by the pool, or
        on connecting without one), then the C timestamp loader where the session is UTC."""
        commit = super()._configure_connection(connection)
        if (
            _CLoader is not None
            and self.timezone is datetime.UTC
            and connection.info.parameter_status("TimeZone") == "UTC"
        ):
            connection.adapters.register_loader("timestamptz", UtcTimestamptzLoader)
        return commit
