"""Tiered rate limits, quotas and the auth zone."""

import time

import pytest
from django.core.cache import cache
from rest_framework.test import APIClient

from core import quotas, ratelimit, redis
from core.models import User

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _fresh_limits():
    ratelimit.local_counter.clear()
    redis.breaker.reset()
    yield
    ratelimit.local_counter.clear()
    redis.breaker.reset()


@pytest.fixture
def small_limits(settings):
    settings.RATE_LIMITS = {"premium": 8, "regular": 4, "anonymous": 2}
    return settings.RATE_LIMITS


def _statuses(client, n, path="/api/me", **extra):
    return [client.get(path, **extra).status_code for _ in range(n)]


def test_regular_key_gets_its_tier_limit_then_json_429(user, make_key, key_client, small_limits):
    _, plaintext = make_key(user)
    client = key_client(plaintext)
    responses = [client.get("/api/me") for _ in range(6)]
    assert [r.status_code for r in responses] == [200] * 4 + [429] * 2
    first, refused = responses[0], responses[-1]
    assert first["RateLimit-Limit"] == "4" and first["RateLimit-Remaining"] == "3"
    assert 0 < int(first["RateLimit-Reset"]) <= 60
    assert refused.json()["code"] == "rate_limited" and "regular" in refused.json()["message"]
    assert int(refused["Retry-After"]) >= 1
    assert refused["RateLimit-Remaining"] == "0"


def test_premium_tier_and_per_key_override(make_user, make_key, key_client, small_limits):
    premium = make_user(tier=User.Tier.PREMIUM)
    _, plaintext = make_key(premium)
    assert _statuses(key_client(plaintext), 9).count(200) == 8
    key, override = make_key(premium)
    key.rate_limit_per_minute = 1
    key.save()
    assert _statuses(key_client(override), 3) == [200, 429, 429]


def test_each_key_and_user_has_its_own_bucket(user, make_key, key_client, small_limits):
    _, first = make_key(user)
    _, second = make_key(user)
    assert _statuses(key_client(first), 5).count(200) == 4
    assert _statuses(key_client(second), 1) == [200]
    session = APIClient()
    session.force_login(user)
    assert _statuses(session, 1) == [200]


def test_anonymous_callers_are_limited_by_ip_and_forged_forwarded_for_is_ignored(db, small_limits):
    client = APIClient()
    statuses = [client.get("/api/models", HTTP_X_FORWARDED_FOR=f"10.0.0.{n}").status_code for n in range(6)]
    assert statuses.count(200) == 2 and statuses.count(429) == 4


def test_trusted_proxy_forwarded_for_is_used(db, small_limits, settings):
    from core.net import _trusted_networks, client_ip

    settings.TRUSTED_PROXIES = ["127.0.0.1/32"]
    _trusted_networks.cache_clear()
    try:
        meta = {"REMOTE_ADDR": "127.0.0.1", "HTTP_X_FORWARDED_FOR": "6.6.6.6, 203.0.113.9"}
        assert client_ip(meta) == "203.0.113.9"  # the right-most untrusted hop: the one our proxy saw
        assert client_ip({"REMOTE_ADDR": "198.51.100.7", "HTTP_X_FORWARDED_FOR": "1.1.1.1"}) == "198.51.100.7"
        client = APIClient(REMOTE_ADDR="127.0.0.1")
        for n in range(3):  # two different clients behind the proxy: separate buckets
            assert client.get("/api/models", HTTP_X_FORWARDED_FOR=f"203.0.113.{n}").status_code == 200
    finally:
        settings.TRUSTED_PROXIES = []
        _trusted_networks.cache_clear()


def test_limits_apply_to_v1_with_openai_error_shape(user, make_key, key_client, small_limits):
    _, plaintext = make_key(user)
    client = key_client(plaintext)
    for _ in range(4):
        client.get("/v1/models")
    refused = client.get("/v1/models")
    assert refused.status_code == 429
    assert refused.json()["error"]["type"] == "rate_limit_error"


def test_sliding_window_counts_part_of_the_previous_minute():
    caller = ratelimit.Caller("test", "regular", 100)
    # 90 hits last minute, 15 s into this one: 75 % of them still count.
    assert ratelimit._decide(caller, 20, 90, now=60 * 1000 + 15).allowed is True  # 20 + 67 = 87
    assert ratelimit._decide(caller, 40, 90, now=60 * 1000 + 15).allowed is False  # 40 + 67 = 107


@pytest.mark.redis
async def test_the_counting_script_on_a_redis_that_never_saw_it_counts_expires_and_looks():
    """The limiter counts with a Lua script by its SHA; a new or restarted Redis
    does not know it yet and gets the script itself once."""
    caller = ratelimit.Caller("script-test", "regular", 3)
    if time.time() % ratelimit.WINDOW > ratelimit.WINDOW - 1:  # all of it within one window
        time.sleep(1.1)
    client = redis.sync_client()
    client.delete(*ratelimit._keys(caller.bucket, time.time()))
    client.script_flush()
    looked = ratelimit.hit(caller, increment=0)
    assert (looked.allowed, looked.remaining) == (True, 3)
    assert not client.exists(ratelimit._keys(caller.bucket, time.time())[0])  # looking counts nothing
    assert [ratelimit.hit(caller).remaining for _ in range(3)] == [2, 1, 0]
    await redis.async_client().script_flush()
    decision = await ratelimit.ahit(caller)
    assert (decision.allowed, decision.remaining) == (False, 0)
    current_key = ratelimit._keys(caller.bucket, time.time())[0]
    assert 0 < client.ttl(current_key) <= 2 * ratelimit.WINDOW
    assert not redis.breaker.open


@pytest.mark.redis
def test_redis_down_fails_open_to_a_per_process_limit(user, make_key, key_client, small_limits, settings):
    from django.core.cache import caches

    _, plaintext = make_key(user)
    client = key_client(plaintext)
    settings.CACHES = {
        **settings.CACHES,
        "default": {
            **settings.CACHES["default"],
            "LOCATION": "redis://127.0.0.1:1/0",
            "OPTIONS": {**settings.CACHES["default"]["OPTIONS"], "SOCKET_CONNECT_TIMEOUT": 0.1},
        },
    }
    caches._settings = None
    statuses = _statuses(client, 6)
    assert 500 not in statuses and statuses.count(200) == 4
    assert ratelimit.local_counter._counts  # the fallback counted them


@pytest.mark.redis
def test_quota_fails_open_and_trips_the_shared_breaker_when_redis_is_down(user, settings):
    """Found by resilience/tests/test_faults.py (Redis stalled): every quota check paid
    the full socket timeout, where the rate limits paid it once per process."""
    from django.core.cache import caches

    settings.CACHES = {
        **settings.CACHES,
        "default": {
            **settings.CACHES["default"],
            "LOCATION": "redis://127.0.0.1:1/0",
            "OPTIONS": {**settings.CACHES["default"]["OPTIONS"], "SOCKET_CONNECT_TIMEOUT": 0.1},
        },
    }
    caches._settings = None
    assert quotas.usage(user).used == 0
    assert redis.breaker.open  # the next checks skip Redis instead of waiting for it again
    quotas.charge(user.pk, 10)  # skipped, not raised


def test_quota_endpoint_reports_requests_and_tokens(api, user):
    body = api.get("/api/quota").json()
    assert body["tier"] == "regular"
    assert body["requests"]["limit"] == 100 and 0 < body["requests"]["remaining"] < 100
    assert body["tokens"]["limit"] == 200_000 and body["tokens"]["used"] == 0
    assert 0 < body["tokens"]["reset"] <= 86_400 + 3600


def test_quota_is_enforced_before_any_model_call(api, user, settings):
    settings.TOKEN_QUOTAS = {"regular": 100, "premium": 1000}
    quotas.usage(user)  # starts today's counter
    quotas.charge(user.pk, 100)
    response = api.post("/api/chat", {"content": "hello"}, format="json")
    assert response.status_code == 429
    assert response.json()["code"] == "quota_exceeded" and int(response["Retry-After"]) > 0
    from chat.models import Message

    assert not Message.objects.exists()


def test_quota_counter_starts_from_the_database(user):
    from chat.models import Conversation, Message

    conversation = Conversation.objects.create(user=user, model_name="smollm2")
    Message.objects.create(conversation=conversation, role="assistant", prompt_tokens=30, completion_tokens=12)
    cache.clear()
    assert quotas.usage(user).used == 42


# The auth zone allows 5 a second and 30 a minute per address. Fast requests span at
# most two one-second windows, so at most 10 of 12 pass.


def test_sign_in_is_limited_by_the_auth_zone(db):
    client = APIClient()
    statuses = [
        client.post("/accounts/login/", {"username": "x@example.com", "password": "wrong"}).status_code
        for _ in range(12)
    ]
    assert set(statuses) == {200, 429}  # 200: the form again, with its error
    assert statuses.count(200) <= 10 and statuses.count(429) >= 2


def test_sign_in_per_minute_limit(db, settings):
    settings.AUTH_RATE_LIMITS = ["3/m"]
    client = APIClient()
    statuses = [
        client.post("/accounts/login/", {"username": "x@example.com", "password": "w"}).status_code for _ in range(5)
    ]
    assert statuses == [200, 200, 200, 429, 429]
    other = APIClient(REMOTE_ADDR="192.0.2.1")  # another address has its own count
    assert other.post("/accounts/login/", {"username": "x@example.com", "password": "w"}).status_code == 200


def test_key_creation_is_limited_by_the_auth_zone(api):
    statuses = [api.post("/api/keys", {"name": f"k{n}"}, format="json").status_code for n in range(12)]
    assert set(statuses) == {201, 429} and statuses.count(201) <= 10


def test_the_cache_skips_redis_while_the_shared_breaker_is_open():
    """Found by resilience/tests/test_faults.py (Redis stalled): the two-tier cache had a
    breaker of its own, so one request could wait out a socket timeout in the rate
    limiter and another in the cache."""
    from core.cache import two_tier

    cache.set("breaker-test:k", "from the shared tier")  # the two-tier cache's key for ("breaker-test", "k")
    redis.breaker.trip("rate limit", TimeoutError("stalled"))
    assert two_tier.get_or_compute("breaker-test", "k", lambda: "computed", ttl=10) == "computed"
    redis.breaker.reset()
    two_tier.local.clear()
    assert two_tier.get_or_compute("breaker-test", "k", lambda: "computed", ttl=10) == "from the shared tier"
