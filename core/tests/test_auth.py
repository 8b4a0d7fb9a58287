import time
from datetime import timedelta

import pytest
from django.core.cache import cache as shared_cache
from django.db import OperationalError, connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework.test import APIClient

from core import keys
from core.authentication import _last_touched, authenticate_key
from core.models import APIKey

pytestmark = pytest.mark.django_db


def test_bearer_and_x_api_key_headers_both_authenticate(user, make_key):
    _, plaintext = make_key(user)
    bearer = APIClient()
    bearer.credentials(HTTP_AUTHORIZATION=f"Bearer {plaintext}")
    header = APIClient()
    header.credentials(HTTP_X_API_KEY=plaintext)
    for client in (bearer, header):
        response = client.get("/api/me")
        assert response.status_code == 200
        assert response.json()["email"] == user.email


def test_no_credentials_is_401_with_bearer_challenge(db):
    response = APIClient().get("/api/me")
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert response.json()["code"] == "not_authenticated"


def test_every_kind_of_invalid_key_gets_the_same_401(user, make_key, make_user, key_client):
    _, good = make_key(user)
    _, revoked = make_key(user)
    APIKey.objects.filter(prefix=revoked[: keys.PREFIX_LENGTH]).update(revoked_at=timezone.now())
    _, expired = make_key(user, expires_at=timezone.now() - timedelta(seconds=1))
    inactive_owner = make_user(is_active=False)
    _, inactive = make_key(inactive_owner)
    # Right prefix, different (but well-formed, checksummed) secret.
    body = good[: keys.PREFIX_LENGTH] + "A" * keys.SECRET_LENGTH
    wrong_secret = body + keys._checksum(body)
    unknown_prefix = keys.generate().plaintext
    bad_checksum = good[:-1] + ("A" if good[-1] != "A" else "B")

    bodies = set()
    for candidate in [good[:-3], bad_checksum, wrong_secret, revoked, expired, inactive, unknown_prefix, "nonsense"]:
        response = key_client(candidate).get("/api/me")
        assert response.status_code == 401, candidate
        bodies.add(response.content)
    assert bodies == {b'{"status":401,"code":"authentication_failed","message":"Invalid API key."}'}


def test_missing_scope_is_403(user, make_key, key_client):
    _, plaintext = make_key(user, scopes=[APIKey.Scope.CHAT])
    response = key_client(plaintext).get("/api/keys")
    assert response.status_code == 403
    assert "admin" in response.json()["message"]


def test_admin_scope_implies_the_others(user, make_key):
    _, plaintext = make_key(user, scopes=[APIKey.Scope.ADMIN])
    _, identity = authenticate_key(plaintext)
    assert identity.allows(APIKey.Scope.CHAT) and identity.allows(APIKey.Scope.ANALYTICS_READ)


def test_key_lookup_is_cached_and_last_used_is_written_once_a_minute(user, make_key):
    key, plaintext = make_key(user)
    with CaptureQueriesContext(connection) as first:
        assert authenticate_key(plaintext) is not None
    assert len(first) == 2  # the lookup by prefix, then last_used_at
    assert "UPDATE" in first.captured_queries[1]["sql"]
    key.refresh_from_db()
    assert key.last_used_at is not None

    with CaptureQueriesContext(connection) as later:
        for _ in range(5):
            assert authenticate_key(plaintext) is not None
    assert len(later) == 0


@pytest.mark.django_db(transaction=True)
def test_a_cached_key_works_while_last_used_cannot_be_written(user, make_key, key_client, caplog):
    """The once-a-minute write of last_used_at fails (database down, pool exhausted):
    the request it rides on is still answered, from the cache."""
    key, plaintext = make_key(user)
    client = key_client(plaintext)
    assert client.get("/api/models").status_code == 200  # key and model list cached
    shared_cache.delete(f"apikey-used:{key.prefix}")
    _last_touched.clear()

    def refuse_updates(execute, sql, params, many, context):
        if sql.startswith("UPDATE"):
            raise OperationalError("couldn't get a connection after 5.00 sec")
        return execute(sql, params, many, context)

    with connection.execute_wrapper(refuse_updates):
        response = client.get("/api/models")
    assert response.status_code == 200, response.content
    assert "API key last_used_at not written: OperationalError" in caplog.text


def test_revoked_key_stops_working_at_once_in_this_process(user, make_key, key_client):
    key, plaintext = make_key(user)
    client = key_client(plaintext)
    assert client.get("/api/me").status_code == 200
    assert client.delete(f"/api/keys/{key.pk}").status_code == 204
    assert client.get("/api/me").status_code == 401


def test_revoked_key_stops_within_a_second_in_other_processes(user, make_key):
    """Another process holds the key in its memory tier; once the shared entry is
    gone (what revoking does), that copy expires within a second."""
    key, plaintext = make_key(user)
    assert authenticate_key(plaintext) is not None  # memory and shared tiers now hold it
    APIKey.objects.filter(pk=key.pk).update(revoked_at=timezone.now())  # no signal: like another process
    shared_cache.delete(f"apikey:{key.prefix}")
    time.sleep(1.05)
    assert authenticate_key(plaintext) is None


def test_change_of_owner_tier_reaches_cached_keys(user, make_key):
    _, plaintext = make_key(user)
    assert authenticate_key(plaintext)[0].tier == "regular"
    user.tier = "premium"
    user.save()
    assert authenticate_key(plaintext)[0].tier == "premium"


def test_session_write_without_csrf_token_is_403(user):
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(user)
    assert client.get("/api/me").status_code == 200
    response = client.post("/api/keys", {"name": "x"}, format="json")
    assert response.status_code == 403
    assert response.json()["code"] == "permission_denied"
    assert "CSRF" in response.json()["message"]


def test_session_write_with_csrf_token_succeeds(user):
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(user)
    client.get("/accounts/login/")  # sets the csrftoken cookie
    token = client.cookies["csrftoken"].value
    response = client.post("/api/keys", {"name": "x"}, format="json", HTTP_X_CSRFTOKEN=token)
    assert response.status_code == 201
