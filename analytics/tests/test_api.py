"""The analytics API: who sees what, bad input, answers checked against the raw
rows, caching and query budgets."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from rest_framework.test import APIClient

from analytics import rollup
from analytics.tests.factories import ConversationSpec, MessageSpec, write

pytestmark = pytest.mark.django_db

DAY = datetime(2026, 11, 10, 9, 0, tzinfo=UTC)
RANGE = "from=2026-11-01&to=2026-11-15"
ENDPOINTS = ["summary", "timeseries", "breakdown", "export"]


def _replies(user_id: int, count: int, *, model: str, key_id: int | None, at: datetime, latency: int = 100):
    return ConversationSpec(
        user_id=user_id,
        created_at=at,
        model_name=model,
        messages=[
            message
            for n in range(count)
            for message in (
                MessageSpec(role="user", created_at=at + timedelta(minutes=n), model_name=model, key_id=key_id),
                MessageSpec(
                    role="assistant",
                    created_at=at + timedelta(minutes=n, seconds=1),
                    model_name=model,
                    key_id=key_id,
                    prompt_tokens=10,
                    completion_tokens=5,
                    latency_ms=latency + n,
                    ttft_ms=20,
                ),
            )
        ],
    )


@pytest.fixture
def usage(make_user, make_key, settings):
    """Alice: 3 replies on alpha through her key and 1 on beta in the browser, on
    10 November; Bob: 2 replies on alpha through his key on 11 November; a staff user."""
    settings.TIME_ZONE = "Europe/Paris"
    alice, bob = make_user(display_name="Alice"), make_user(display_name="Bob")
    staff = make_user(display_name="Staff", is_staff=True)
    alice_key, alice_plain = make_key(alice, ["analytics:read"], name="alice-ci")
    bob_key, bob_plain = make_key(bob, ["analytics:read"], name="bob-ci")
    _, staff_plain = make_key(staff, ["analytics:read"], name="staff")
    _, chat_only = make_key(alice, ["chat"], name="chat-only")
    write(
        [
            _replies(alice.pk, 3, model="alpha", key_id=alice_key.pk, at=DAY),
            _replies(alice.pk, 1, model="beta", key_id=None, at=DAY + timedelta(hours=2), latency=400),
            _replies(bob.pk, 2, model="alpha", key_id=bob_key.pk, at=DAY + timedelta(days=1)),
        ]
    )
    rollup.rollup(now=DAY + timedelta(days=3))
    return {
        "alice": alice,
        "bob": bob,
        "staff": staff,
        "alice_key": alice_key,
        "bob_key": bob_key,
        "clients": {
            name: _client(plain)
            for name, plain in {
                "alice": alice_plain,
                "bob": bob_plain,
                "staff": staff_plain,
                "chat_only": chat_only,
            }.items()
        },
    }


def _client(plaintext: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {plaintext}")
    return client


def _get(client, endpoint: str, query: str = RANGE):
    return client.get(f"/api/analytics/{endpoint}?{query}")


# --- Who sees what -------------------------------------------------------------------------


def test_a_user_sees_only_their_own_usage(usage):
    body = _get(usage["clients"]["alice"], "summary").json()
    assert body["scope"] == {"user": usage["alice"].pk}
    assert (body["requests"], body["messages"], body["conversations"]) == (4, 8, 2)
    assert (body["tokens_in"], body["tokens_out"], body["tokens"]) == (40, 20, 60)
    assert _get(usage["clients"]["bob"], "summary").json()["requests"] == 2


def test_staff_see_everyone_and_any_one_user(usage):
    staff = usage["clients"]["staff"]
    everyone = _get(staff, "summary").json()
    assert everyone["scope"] == {"user": None}
    assert everyone["requests"] == 6
    one = _get(staff, "summary", f"{RANGE}&user={usage['bob'].pk}").json()
    assert one["scope"] == {"user": usage["bob"].pk} and one["requests"] == 2
    by_user = _get(staff, "breakdown", f"{RANGE}&by=user").json()
    assert [(r["id"], r["requests"]) for r in by_user["results"]] == [(usage["alice"].pk, 4), (usage["bob"].pk, 2)]
    assert by_user["results"][0]["label"] == "Alice"


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_another_users_usage_is_404_for_non_staff(usage, endpoint):
    response = _get(usage["clients"]["alice"], endpoint, f"{RANGE}&user={usage['bob'].pk}")
    assert response.status_code == 404
    assert response.json()["code"] == "not_found"
    # Naming oneself is fine.
    assert _get(usage["clients"]["alice"], endpoint, f"{RANGE}&user={usage['alice'].pk}").status_code == 200


def test_staff_asking_for_a_user_that_does_not_exist_get_404(usage):
    assert _get(usage["clients"]["staff"], "summary", f"{RANGE}&user=987654321").status_code == 404


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_a_key_without_the_analytics_scope_is_403(usage, endpoint):
    response = _get(usage["clients"]["chat_only"], endpoint)
    assert response.status_code == 403
    assert "analytics:read" in response.json()["message"]


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_anonymous_is_401(db, endpoint):
    response = APIClient().get(f"/api/analytics/{endpoint}")
    assert response.status_code == 401
    assert response.json()["status"] == 401


def test_the_browser_session_works_without_a_key(usage):
    client = APIClient()
    client.force_login(usage["alice"])
    assert _get(client, "summary").json()["requests"] == 4


# --- Bad input ---------------------------------------------------------------------------------

BAD = [
    ("summary", "from=yesterday", "from"),
    ("summary", "to=2026-13-01", "to"),
    ("summary", "from=2026-02-30", "from"),
    ("summary", "from=2026-11-10T25:00", "from"),
    ("summary", "from=0001-01-01", "from"),
    ("summary", "to=99999-01-01", "to"),
    ("summary", "from=2026-11-15&to=2026-11-01", "from"),
    ("summary", "from=2020-01-01&to=2026-01-01", "from"),
    ("summary", "granularity=hour&from=2026-01-01&to=2026-11-01", "from"),
    ("summary", "granularity=week", "granularity"),
    ("summary", "user=alice", "user"),
    ("summary", "user=-3", "user"),
    ("summary", "user=99999999999999999999999", "user"),
    ("timeseries", "metric=happiness", "metric"),
    ("timeseries", "granularity=minute", "granularity"),
    ("timeseries", "model=" + "x" * 65, "model"),
    ("timeseries", "model=a%20b", "model"),
    ("timeseries", "granularity=hour&from=2026-01-01&to=2026-06-01", "from"),
    ("breakdown", "by=planet", "by"),
    ("breakdown", "order=latency_p50_ms", "order"),
    ("breakdown", "limit=ten", "limit"),
    ("breakdown", "limit=0", "limit"),
    ("export", "format=xml", "format"),
    ("export", "by=planet", "by"),
    ("export", "from=2000-01-01&to=2026-01-01", "from"),
    ("export", "from=2026-11-02&to=2026-11-01T10:00:00Z", "from"),
]


@pytest.mark.parametrize(("endpoint", "query", "field"), BAD)
def test_bad_input_is_400_naming_the_parameter(usage, endpoint, query, field):
    response = _get(usage["clients"]["staff"], endpoint, query)
    assert response.status_code == 400, response.content
    body = response.json()
    assert body["status"] == 400 and body["code"] == "invalid"
    assert list(body["details"]) == [field]


def test_dates_times_and_offsets_are_accepted(usage):
    staff = usage["clients"]["staff"]
    for query in (
        "from=2026-11-10T00:00:00%2B01:00&to=2026-11-12T00:00:00Z&granularity=hour",
        "from=2026-11-10T00:00:00 01:00&to=2026-11-12T00:00&granularity=hour",  # an unencoded "+"
        "from=2026-11-10&to=2026-11-11",
    ):
        response = _get(staff, "summary", query)
        assert response.status_code == 200, (query, response.content)
        assert response.json()["requests"] == 6


def test_defaults_cover_the_last_30_days(usage):
    body = _get(usage["clients"]["staff"], "summary", "").json()
    assert body["granularity"] == "day"
    start, end = datetime.fromisoformat(body["from"]), datetime.fromisoformat(body["to"])
    assert timedelta(days=30) <= end - start <= timedelta(days=32)


# --- Answers ---------------------------------------------------------------------------------------


def test_summary_latency_figures(usage):
    body = _get(usage["clients"]["alice"], "summary").json()
    # Alice's complete replies took 100, 101, 102 and 400 ms.
    assert body["latency_mean_ms"] == round((100 + 101 + 102 + 400) / 4, 1)
    assert body["latency_p50_ms"] == pytest.approx(101, rel=0.045)
    assert body["latency_p95_ms"] == pytest.approx(400, rel=0.045)
    assert body["ttft_p50_ms"] == 20
    assert body["error_rate"] == 0
    assert body["as_of"] is not None


def test_timeseries_has_every_bucket_in_local_days(usage):
    body = _get(usage["clients"]["staff"], "timeseries", "metric=requests&from=2026-11-09&to=2026-11-12").json()
    assert body["metric"] == "requests"
    assert [p["t"] for p in body["points"]] == [f"2026-11-{d:02d}T00:00:00+01:00" for d in range(9, 13)]
    assert [p["value"] for p in body["points"]] == [0, 4, 2, 0]
    latency = _get(usage["clients"]["staff"], "timeseries", "metric=latency_p50_ms&from=2026-11-09&to=2026-11-12")
    assert [p["value"] for p in latency.json()["points"]] == [None, 101.5, 100.5, None]  # exact percentile_cont


def test_timeseries_by_hour(usage):
    body = _get(
        usage["clients"]["alice"],
        "timeseries",
        "metric=tokens&granularity=hour&from=2026-11-10T09:00Z&to=2026-11-10T12:00Z",
    ).json()
    assert [p["value"] for p in body["points"]] == [45, 0, 15]
    assert body["points"][0]["t"] == "2026-11-10T10:00:00+01:00"


def test_timeseries_of_one_model(usage):
    query = "metric=requests&from=2026-11-09&to=2026-11-12&model=alpha"
    everyone = _get(usage["clients"]["staff"], "timeseries", query).json()
    assert everyone["model"] == "alpha"
    assert [p["value"] for p in everyone["points"]] == [0, 3, 2, 0]
    alice = _get(usage["clients"]["alice"], "timeseries", query.replace("alpha", "beta")).json()
    assert [p["value"] for p in alice["points"]] == [0, 1, 0, 0]


def test_breakdown_by_model_and_key(usage):
    alice = usage["clients"]["alice"]
    by_model = _get(alice, "breakdown", f"{RANGE}&by=model").json()
    assert [(r["id"], r["requests"]) for r in by_model["results"]] == [("alpha", 3), ("beta", 1)]
    assert by_model["total"]["requests"] == 4 and by_model["others"]["requests"] == 0
    by_key = _get(alice, "breakdown", f"{RANGE}&by=key").json()
    assert [(r["id"], r["label"], r["requests"]) for r in by_key["results"]] == [
        (usage["alice_key"].pk, "alice-ci", 3),
        (0, "Browser session (no API key)", 1),
    ]
    assert by_key["results"][0]["prefix"] == usage["alice_key"].prefix
    # Limited to one group, the rest is in "others".
    top = _get(usage["clients"]["staff"], "breakdown", f"{RANGE}&by=model&limit=1").json()
    assert [(r["id"], r["requests"]) for r in top["results"]] == [("alpha", 5)]
    assert top["others"]["requests"] == 1 and top["total"]["requests"] == 6


def test_breakdown_for_a_user_shows_only_that_user(usage):
    by_user = _get(usage["clients"]["bob"], "breakdown", f"{RANGE}&by=user").json()
    assert [(r["id"], r["requests"]) for r in by_user["results"]] == [(usage["bob"].pk, 2)]


# --- Caching and query budgets --------------------------------------------------------------------


def test_answers_are_cached_and_a_rollup_run_retires_them(
    usage, django_assert_num_queries, django_assert_max_num_queries
):
    staff = usage["clients"]["staff"]
    assert _get(staff, "summary").json()["requests"] == 6  # warms the key lookup too
    with django_assert_num_queries(0):
        assert _get(staff, "summary").json()["requests"] == 6
    write([_replies(usage["bob"].pk, 1, model="alpha", key_id=None, at=DAY + timedelta(days=2))])
    assert _get(staff, "summary").json()["requests"] == 6  # still the cached answer
    rollup.rollup(now=DAY + timedelta(days=3), since=DAY)
    assert _get(staff, "summary").json()["requests"] == 7


@pytest.mark.parametrize(
    ("endpoint", "query", "budget"),
    [
        ("summary", RANGE, 2),  # rollup rows, last run
        ("timeseries", f"{RANGE}&metric=latency_p95_ms", 1),
        ("breakdown", f"{RANGE}&by=user", 4),  # top groups, total, histograms, labels
        ("breakdown", f"{RANGE}&by=key&granularity=hour&from=2026-11-09&to=2026-11-12", 4),
        ("export", f"{RANGE}&by=model", 1),
    ],
)
def test_query_budgets(usage, endpoint, query, budget, django_assert_max_num_queries):
    staff = usage["clients"]["staff"]
    assert _get(staff, "summary", "from=2026-01-01&to=2026-01-02").status_code == 200  # warm the key lookup
    with django_assert_max_num_queries(budget):
        response = _get(staff, endpoint, query)
        if endpoint == "export":
            b"".join(response.streaming_content)
    assert response.status_code == 200
