import json

import pytest
from django.db import connection

from core.models import APIKey

pytestmark = pytest.mark.django_db


def test_issuing_a_key_shows_the_plaintext_once(api, user):
    created = api.post("/api/keys", {"name": "ci", "scopes": ["chat"]}, format="json")
    assert created.status_code == 201
    body = created.json()
    assert body["key"].startswith("afk_") and body["prefix"] == body["key"][:12]
    assert body["scopes"] == ["chat"]

    listed = api.get("/api/keys").json()
    assert {k["prefix"] for k in listed} >= {body["prefix"]}
    raw = json.dumps(listed)
    assert body["key"] not in raw and "secret_hash" not in raw and "key" not in listed[0]


def test_no_plaintext_key_is_stored_anywhere_in_the_database(api):
    plaintext = api.post("/api/keys", {"name": "scan"}, format="json").json()["key"]
    secret_part = plaintext[12:-6]
    with connection.cursor() as cursor:
        cursor.execute("SELECT name, prefix, secret_hash, CAST(scopes AS TEXT) FROM api_keys")
        rows = cursor.fetchall()
    for row in rows:
        for value in row:
            assert plaintext not in str(value) and secret_part not in str(value)


def test_key_creation_validates_input(api):
    response = api.post("/api/keys", {"name": "", "scopes": ["root"], "expires_in_days": 0}, format="json")
    assert response.status_code == 400
    details = response.json()["details"]
    assert set(details) == {"name", "scopes.0", "expires_in_days"} or {"name", "scopes", "expires_in_days"} <= set(
        k.split(".")[0] for k in details
    )


def test_expiring_key(api):
    body = api.post("/api/keys", {"name": "short", "expires_in_days": 7}, format="json").json()
    assert body["expires_at"] is not None


def test_another_users_key_is_404_and_untouched(api, other_user, make_key):
    theirs, _ = make_key(other_user)
    assert api.get(f"/api/keys/{theirs.pk}").status_code == 404
    response = api.delete(f"/api/keys/{theirs.pk}")
    assert response.status_code == 404
    assert response.json() == {"status": 404, "code": "not_found", "message": "No such API key."}
    theirs.refresh_from_db()
    assert theirs.revoked_at is None


def test_revoke_is_idempotent_and_listed(api, user, make_key):
    key, _ = make_key(user)
    assert api.delete(f"/api/keys/{key.pk}").status_code == 204
    assert api.delete(f"/api/keys/{key.pk}").status_code == 204
    listed = {k["id"]: k for k in api.get("/api/keys").json()}
    assert listed[key.pk]["revoked_at"] is not None


def test_patch_me_cannot_change_tier_staff_or_timestamps(api, user):
    before = api.get("/api/me").json()
    response = api.patch(
        "/api/me",
        {
            "tier": "premium",
            "is_staff": True,
            "created_at": "2000-01-01T00:00:00Z",
            "email": "x@y.z",
            "display_name": "New name",
        },
        format="json",
    )
    assert response.status_code == 200
    user.refresh_from_db()
    assert (user.tier, user.is_staff, user.email) == ("regular", False, before["email"])
    assert user.created_at.isoformat().startswith(before["created_at"][:19])
    assert user.display_name == "New name"


def test_patch_me_needs_admin_scope_but_get_does_not(user, make_key, key_client):
    _, plaintext = make_key(user, scopes=[APIKey.Scope.CHAT])
    client = key_client(plaintext)
    assert client.get("/api/me").status_code == 200
    assert client.patch("/api/me", {"display_name": "x"}, format="json").status_code == 403


# --- One JSON error shape for every error under /api/ ---------------------------------


def _assert_error(response, status, code):
    assert response.status_code == status
    assert response["Content-Type"].startswith("application/json")
    body = response.json()
    assert body["status"] == status and body["code"] == code and body["message"]
    return body


def test_malformed_json_is_400(api):
    response = api.generic("POST", "/api/keys", '{"name": ', content_type="application/json")
    assert "JSON parse error" in _assert_error(response, 400, "parse_error")["message"]


@pytest.mark.parametrize(
    "raw",
    [
        b'{"name": "\xff\xfe"}',  # invalid UTF-8
        b'{"name": "a\\u0000b"}',  # NUL escape
        b'{"name": "a\x00b"}',  # raw NUL byte
        b"[" * 5000 + b"]" * 5000,  # nesting past the parser's limit
    ],
)
def test_hostile_json_is_400_not_500(api, raw):
    response = api.generic("POST", "/api/keys", raw, content_type="application/json")
    _assert_error(response, 400, "parse_error")


def test_escaped_backslash_before_u0000_text_is_allowed(api):
    response = api.post("/api/keys", b'{"name": "literal \\\\u0000"}', content_type="application/json")
    assert response.status_code == 201
    assert response.json()["name"] == "literal \\u0000"


def test_body_over_the_limit_is_json_413(api, settings):
    payload = json.dumps({"name": "x" * (settings.DATA_UPLOAD_MAX_MEMORY_SIZE + 10)})
    response = api.generic("POST", "/api/keys", payload, content_type="application/json")
    _assert_error(response, 413, "payload_too_large")


def test_unknown_route_under_api_is_json_404(api):
    _assert_error(api.get("/api/no/such/thing"), 404, "not_found")


def test_unknown_route_is_json_404_even_unauthenticated(client):
    _assert_error(client.get("/api/nothing-here"), 404, "not_found")


def test_wrong_method_is_json_405(api):
    _assert_error(api.put("/api/me", {}, format="json"), 405, "method_not_allowed")


def test_unsupported_media_type_is_json_415(api):
    response = api.generic("POST", "/api/keys", "name=x", content_type="application/x-www-form-urlencoded")
    _assert_error(response, 415, "unsupported_media_type")


@pytest.mark.urls("core.tests.urls_failing")
def test_unhandled_exception_under_api_is_json_500(client, settings):
    settings.DEBUG = True  # even the debug page must not replace the JSON body
    client.raise_request_exception = False
    _assert_error(client.get("/api/boom"), 500, "server_error")


@pytest.mark.parametrize(("path", "content_type"), [("/api/me", "application/json"), ("/", "text/plain")])
def test_database_outage_outside_a_view_is_503_not_500(rf, path, content_type):
    """Django's 500 handler runs for exceptions raised by middleware too (an uncached
    API key looked up while PostgreSQL is down); found by resilience/tests/test_faults.py."""
    from django.db import OperationalError

    from core.exceptions import handler500

    try:
        raise OperationalError("connection refused")
    except OperationalError:
        response = handler500(rf.get(path))
    assert response.status_code == 503 and response["Retry-After"] == "2"
    assert response["Content-Type"].startswith(content_type)


def test_top_level_api_routes_are_not_shadowed_by_the_app_urls_listed_before_them():
    from django.urls import resolve

    for path, name in [
        ("/api/dashboard/live", "dashboard-live"),
        ("/api/dashboard/history", "dashboard-history"),
        ("/api/schema/", "schema"),
        ("/api/models", "model-list"),
        ("/api/me", "me"),
        ("/api/analytics/summary", "analytics-summary"),
    ]:
        assert resolve(path).url_name == name, path
