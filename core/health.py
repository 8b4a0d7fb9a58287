"""Liveness (/health: no I/O) and readiness (/ready: database and cache checked)."""

from __future__ import annotations

import time
import uuid

from django.conf import settings
from django.core.cache import cache
from django.db import connection
from django.http import HttpResponse

from core.exceptions import json_response


def live(request) -> HttpResponse:
    return json_response({"status": "ok"})


def _timed(check) -> dict:
    started = time.perf_counter()
    try:
        check()
        result = {"ok": True}
    except Exception as exc:  # any failure means "not ready", named in the body
        result = {"ok": False, "error": f"{exc.__class__.__name__}: {str(exc)[:200]}"}
    result["latency_ms"] = round((time.perf_counter() - started) * 1000, 2)
    return result


def _check_database() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()


def _check_cache() -> None:
    probe = uuid.uuid4().hex
    cache.set("ready-probe", probe, timeout=10)
    if cache.get("ready-probe") != probe:
        raise RuntimeError("cache did not return what was written")


def ready(request) -> HttpResponse:
    checks = {
        "database": {"backend": connection.vendor, **_timed(_check_database)},
        "cache": {"backend": "redis" if settings.REDIS_URL else "local-memory", **_timed(_check_cache)},
    }
    failing = [name for name, result in checks.items() if not result["ok"]]
    body = {"status": "unavailable" if failing else "ok", "failing": failing, "checks": checks}
    response = json_response(body, status=503 if failing else 200)
    if failing:
        response["Retry-After"] = "5"
    return response
