import os
import subprocess
import sys

import pytest
from django.core.exceptions import ImproperlyConfigured

from agentsflow import env
from agentsflow.testing import BASE_DIR

PRODUCTION_ENV = {
    "AGENTSFLOW_ENV": "production",
    "SECRET_KEY": "x" * 20 + "-production-secret-key-for-the-check-deploy-test-0123456789",
    "ALLOWED_HOSTS": "agentsflow.example.com",
}


def _django(code: str, extra_env: dict[str, str], *, drop: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    run_env = {k: v for k, v in os.environ.items() if k not in drop and k not in {"SECRET_KEY", "ALLOWED_HOSTS"}}
    run_env.update(extra_env, DJANGO_SETTINGS_MODULE="agentsflow.settings")
    return subprocess.run(
        [sys.executable, "-c", f"import django; django.setup(); {code}"],
        cwd=BASE_DIR,
        env=run_env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_env_helpers_fail_fast(monkeypatch):
    monkeypatch.setenv("X_INT", "ten")
    monkeypatch.setenv("X_BOOL", "maybe")
    monkeypatch.setenv("X_SMALL", "0")
    with pytest.raises(ImproperlyConfigured, match="X_INT must be an integer"):
        env.env_int("X_INT", 1)
    with pytest.raises(ImproperlyConfigured, match="X_BOOL must be a boolean"):
        env.env_bool("X_BOOL", False)
    with pytest.raises(ImproperlyConfigured, match="X_SMALL must be >= 1"):
        env.env_int("X_SMALL", 5, minimum=1)
    with pytest.raises(ImproperlyConfigured, match="postgres://"):
        env.database_from_url("mysql://localhost/db")
    with pytest.raises(ImproperlyConfigured, match="must name a database"):
        env.database_from_url("postgres://localhost")


def test_database_url_is_parsed():
    parsed = env.database_from_url("postgresql://u%40x:p%2Fw@db.internal:6543/agents?sslmode=require")
    assert parsed["USER"] == "u@x" and parsed["PASSWORD"] == "p/w"
    assert (parsed["HOST"], parsed["PORT"], parsed["NAME"]) == ("db.internal", "6543", "agents")
    assert parsed["OPTIONS"] == {"sslmode": "require"}


def test_postgres_settings_use_the_pool_with_timeouts():
    result = _django(
        "from django.conf import settings as s; d = s.DATABASES['default']; "
        "print(d['CONN_MAX_AGE'], d['OPTIONS']['pool']['max_size'], d['OPTIONS']['connect_timeout'], "
        "d['OPTIONS']['options'], d['OPTIONS']['application_name'], d['ENGINE'], d['CONN_HEALTH_CHECKS'], "
        "d['OPTIONS']['pool']['reconnect_timeout'])",
        {
            "DATABASE_URL": "postgres://postgres@127.0.0.1/agentsflow",
            "DB_POOL_MAX_SIZE": "12",
            "DB_STATEMENT_TIMEOUT_MS": "2500",
        },
    )
    assert result.returncode == 0, result.stderr
    # Found by resilience/tests/test_faults.py: without a check the pool handed terminated
    # backends to requests (core.dbbackend's own, not Django's: test_pgpool.py); without a
    # short reconnect_timeout it healed 20+ s after a 40-s outage ended.
    expected = ["0", "12", "10", "-c", "statement_timeout=2500", "agentsflow", "core.dbbackend", "False", "5"]
    assert result.stdout.split() == expected


def test_bad_environment_value_stops_start_up():
    result = _django("pass", {"DB_POOL_MAX_SIZE": "lots"})
    assert result.returncode != 0
    assert "DB_POOL_MAX_SIZE must be an integer" in result.stderr


@pytest.mark.parametrize("missing", ["SECRET_KEY", "ALLOWED_HOSTS"])
def test_production_refuses_to_start_without(missing):
    result = _django("pass", {k: v for k, v in PRODUCTION_ENV.items() if k != missing})
    assert result.returncode != 0
    assert f"{missing} must be set" in result.stderr


def test_debug_off_counts_as_production():
    result = _django("pass", {"DEBUG": "false"})
    assert result.returncode != 0 and "SECRET_KEY must be set" in result.stderr


def test_check_deploy_is_clean_in_production():
    run_env = {**os.environ, **PRODUCTION_ENV}
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=BASE_DIR,
        env=run_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_embedded_defaults_need_no_variables():
    result = _django(
        "from django.conf import settings as s; print(s.DATABASES['default']['ENGINE'], "
        "s.CACHES['default']['BACKEND'], s.CHANNEL_LAYERS['default']['BACKEND'], s.DEBUG)",
        {},
        drop=("DATABASE_URL", "REDIS_URL", "AGENTSFLOW_ENV", "DEBUG"),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [
        "django_prometheus.db.backends.sqlite3",
        "django_prometheus.cache.backends.locmem.LocMemCache",
        "channels.layers.InMemoryChannelLayer",
        "True",
    ]


def test_channel_layer_prefix_names_the_redis_database():
    """Redis pub/sub ignores the database number: deployments on databases 3 and 15
    of one server would hear each other's groups unless the prefix tells them apart."""
    code = "from django.conf import settings as s; print(s.CHANNEL_LAYERS['default']['CONFIG']['prefix'])"
    prefixes = [
        _django(code, {"REDIS_URL": url}).stdout.strip()
        for url in ("redis://127.0.0.1:6379/3", "redis://127.0.0.1:6379/15", "redis://127.0.0.1:6379")
    ]
    assert prefixes == ["af-ch-3", "af-ch-15", "af-ch-0"]
