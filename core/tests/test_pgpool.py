"""The pool's connection check (core.dbbackend): a connection whose backend
PostgreSQL ended while it sat in the pool is dropped without a round trip, and
the request that asked for a connection gets a working one."""

from __future__ import annotations

import os
import time

import psycopg
import pytest
from psycopg.conninfo import make_conninfo
from psycopg_pool import ConnectionPool

from agentsflow.testing import pg_admin_connection
from core.dbbackend.base import check_connection

pytestmark = pytest.mark.postgres

APPLICATION = "agentsflow-pgpool-test"


@pytest.fixture
def database_url() -> str:
    url = os.environ.get("DATABASE_URL", "")
    if not url.startswith(("postgres://", "postgresql://")):
        pytest.skip("needs DATABASE_URL (PostgreSQL)")
    return url


def _conninfo(database_url: str) -> str:
    """The server's maintenance database: any database will do for a connection check."""
    return make_conninfo(database_url, dbname="postgres", application_name=APPLICATION)


def _terminate_backends(database_url: str) -> int:
    with pg_admin_connection(database_url) as admin:
        rows = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s", [APPLICATION]
        ).fetchall()
    return len(rows)


def _wait_until_gone(database_url: str) -> None:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        with pg_admin_connection(database_url) as admin:
            if not admin.execute(
                "SELECT 1 FROM pg_stat_activity WHERE application_name = %s", [APPLICATION]
            ).fetchone():
                return
        time.sleep(0.05)
    raise AssertionError("the backends did not end")


def test_a_used_healthy_connection_passes_and_a_terminated_one_fails(database_url):
    with psycopg.connect(_conninfo(database_url), autocommit=True) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        check_connection(conn)  # nothing to read: no error, and no query sent
        assert _terminate_backends(database_url) == 1
        _wait_until_gone(database_url)
        with pytest.raises(psycopg.OperationalError):
            check_connection(conn)


def test_the_pool_hands_out_a_working_connection_after_its_backends_were_terminated(database_url):
    with ConnectionPool(
        _conninfo(database_url),
        kwargs={"autocommit": True},
        min_size=2,
        max_size=2,
        check=check_connection,
        timeout=5,
    ) as pool:
        pool.wait(5)
        assert _terminate_backends(database_url) == 2
        _wait_until_gone(database_url)
        for _ in range(3):
            with pool.connection() as conn:
                assert conn.execute("SELECT 1").fetchone() == (1,)


@pytest.mark.django_db
def test_the_platform_pool_uses_this_check():
    from django.db import connection

    if connection.vendor != "postgresql":
        pytest.skip("needs DATABASE_URL (PostgreSQL)")
    assert connection.pool._check is check_connection


@pytest.mark.django_db
def test_connections_share_one_query_counting_cursor_class():
    """django-prometheus defined a new cursor class on every connect (every pool
    checkout); the platform's backend makes it once, and it still counts queries."""
    from django.db import connection
    from prometheus_client import REGISTRY

    if connection.vendor != "postgresql":
        pytest.skip("needs DATABASE_URL (PostgreSQL)")
    factory = connection.get_connection_params()["cursor_factory"]
    assert connection.get_connection_params()["cursor_factory"] is factory
    labels = {"alias": connection.alias, "vendor": connection.vendor}
    before = REGISTRY.get_sample_value("django_db_execute_total", labels) or 0.0
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        assert isinstance(cursor.cursor, factory)
    assert REGISTRY.get_sample_value("django_db_execute_total", labels) == before + 1
