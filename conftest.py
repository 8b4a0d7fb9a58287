"""Shared test fixtures.

Tests run against whatever the environment names: the embedded defaults
(SQLite, local memory) with no variables, PostgreSQL and Redis with
DATABASE_URL and REDIS_URL. Tests that need PostgreSQL or Redis skip, saying so,
under the embedded defaults; with AGENTSFLOW_REQUIRE_SERVICES=1 (set by CI) a
missing service fails the run instead.
"""

from __future__ import annotations

import os

import pytest
from django.conf import settings
from django.db import connection, connections
from rest_framework.test import APIClient

from core import ratelimit, redis
from core.cache import two_tier
from core.models import APIKey, User
from core.services import api_key_issue


def pytest_configure(config):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def pytest_sessionstart(session):
    if os.environ.get("AGENTSFLOW_REQUIRE_SERVICES") == "1":
        missing = [name for name in ("DATABASE_URL", "REDIS_URL") if not os.environ.get(name)]
        if missing:
            pytest.exit(f"AGENTSFLOW_REQUIRE_SERVICES=1 but {', '.join(missing)} not set", returncode=3)


def pytest_collection_modifyitems(config, items):
    on_postgres = connection.vendor == "postgresql"
    on_redis = bool(settings.REDIS_URL)
    skip_pg = pytest.mark.skip(reason="needs PostgreSQL: set DATABASE_URL (CI does)")
    skip_redis = pytest.mark.skip(reason="needs Redis: set REDIS_URL (CI does)")
    for item in items:
        if "postgres" in item.keywords and not on_postgres:
            item.add_marker(skip_pg)
        if "redis" in item.keywords and not on_redis:
            item.add_marker(skip_redis)


@pytest.fixture(scope="session")
def django_db_modify_db_settings(django_db_modify_db_settings):
    """Django 5.2 keeps one connection pool per alias. When creating the test
    database cannot reach PostgreSQL's 'postgres' maintenance database
    (max_connections reached on a shared server, say), Django falls back to
    DATABASE_URL's own database, and the pool it opens there stays: migrations and
    every test would then run against, and flush, the real database. So the pool
    is dropped as soon as the test database exists, before anything uses it."""
    for alias in connections:
        wrapper = connections[alias]
        if not hasattr(wrapper, "close_pool"):
            continue
        create = wrapper.creation._create_test_db

        def create_then_drop_pool(*args, _create=create, _wrapper=wrapper, **kwargs):
            name = _create(*args, **kwargs)
            _wrapper.close()
            _wrapper.close_pool()
            return name

        wrapper.creation._create_test_db = create_then_drop_pool
    yield


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup, django_db_blocker):
    """pytest-django's test database, and a last check that the tests use it.

    pytest-django creates no test database when no selected test needs one (the
    settings then still name the real one, which no test may touch): nothing to check."""
    test_database_created = connection.settings_dict["NAME"] == connection.creation._get_test_db_name()
    if connection.vendor == "postgresql" and test_database_created:
        with django_db_blocker.unblock(), connection.cursor() as cursor:
            cursor.execute("SELECT current_database()")
            actual = cursor.fetchone()[0]
        if actual != connection.settings_dict["NAME"]:
            pytest.exit(f"tests would run on database {actual!r}, not the test database", returncode=3)
    yield


@pytest.fixture(scope="session", autouse=True)
def _close_other_threads_connections(django_db_setup, django_db_blocker):
    """Async views run their queries in executor threads, whose pooled connections
    outlive the test; end them before pytest-django drops the test database."""
    yield
    if connection.vendor != "postgresql" or not connection.settings_dict["NAME"].startswith("test_"):
        return
    with django_db_blocker.unblock(), connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )


@pytest.fixture(autouse=True)
def _fresh_caches():
    """Never assume a cache is cold or warm: every test starts with both tiers empty."""
    from django.core.cache import caches

    two_tier.local.clear()
    ratelimit.local_counter.clear()
    redis.breaker.reset()
    for alias in settings.CACHES:
        caches[alias].clear()
    yield
    two_tier.local.clear()


_counter = iter(range(1, 10**9))


@pytest.fixture
def make_user(db):
    def make(**fields) -> User:
        n = next(_counter)
        fields.setdefault("email", f"user{n}@example.com")
        fields.setdefault("password", "correct-horse-battery")
        return User.objects.create_user(**fields)

    return make


@pytest.fixture
def user(make_user) -> User:
    return make_user(display_name="Alice")


@pytest.fixture
def other_user(make_user) -> User:
    return make_user(display_name="Bob")


@pytest.fixture
def make_key():
    def make(user: User, scopes: list[str] | None = None, **fields) -> tuple[APIKey, str]:
        scopes = scopes or list(APIKey.Scope.values)
        return api_key_issue(user=user, name=fields.pop("name", "test"), scopes=scopes, **fields)

    return make


@pytest.fixture
def key_client():
    """An APIClient that sends the given key as a bearer token."""

    def make(plaintext: str) -> APIClient:
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {plaintext}")
        return client

    return make


@pytest.fixture
def api(user, make_key, key_client) -> APIClient:
    """A client authenticated as ``user`` with an all-scopes key."""
    _, plaintext = make_key(user)
    return key_client(plaintext)


@pytest.fixture(scope="module")
def browser():
    """Headless Debian Chromium through Playwright (tests using it skip without chromium)."""
    from playwright.sync_api import sync_playwright

    from agentsflow.testing import CHROMIUM, CHROMIUM_ARGS

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()
