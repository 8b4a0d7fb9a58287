"""Conversations, messages, models and feedback over REST (sync DRF views)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from chat.models import Conversation, LanguageModel, Message, MessageFeedback

pytestmark = pytest.mark.django_db


def _conversations(user, count: int) -> list[Conversation]:
    now = timezone.now()
    return Conversation.objects.bulk_create(
        Conversation(user=user, title=f"chat {n}", model_name="smollm2", updated_at=now - timedelta(minutes=n))
        for n in range(count)
    )


def test_list_is_newest_updated_first_with_cursor_pages(api, user):
    _conversations(user, 120)
    first = api.get("/api/conversations").json()
    assert len(first["results"]) == 50 and first["next"]
    assert [c["title"] for c in first["results"][:3]] == ["chat 0", "chat 1", "chat 2"]
    second = api.get("/api/conversations", {"cursor": first["next"]}).json()
    third = api.get("/api/conversations", {"cursor": second["next"]}).json()
    titles = [c["title"] for page in (first, second, third) for c in page["results"]]
    assert titles == [f"chat {n}" for n in range(120)] and third["next"] is None


def test_list_pagination_is_stable_with_equal_timestamps(api, user):
    now = timezone.now()
    Conversation.objects.bulk_create(Conversation(user=user, model_name="m", updated_at=now) for _ in range(7))
    seen, cursor = [], None
    while True:
        page = api.get("/api/conversations", {"page_size": 3, **({"cursor": cursor} if cursor else {})}).json()
        seen += [c["id"] for c in page["results"]]
        cursor = page["next"]
        if not cursor:
            break
    assert len(seen) == len(set(seen)) == 7


def test_page_size_is_clamped_and_bad_values_are_400(api, user):
    _conversations(user, 120)
    assert len(api.get("/api/conversations", {"page_size": 10**6}).json()["results"]) == 100
    for bad in ({"page_size": "lots"}, {"page_size": 0}, {"cursor": "not-a-cursor"}):
        response = api.get("/api/conversations", bad)
        assert response.status_code == 400 and set(response.json()["details"]) & {"page_size", "cursor"}


def test_title_search(api, user):
    Conversation.objects.create(user=user, title="Quarterly budget", model_name="m")
    Conversation.objects.create(user=user, title="Holiday plans", model_name="m")
    results = api.get("/api/conversations", {"q": "BUDGET"}).json()["results"]
    assert [c["title"] for c in results] == ["Quarterly budget"]


def test_list_never_shows_other_users_conversations(api, user, other_user):
    _conversations(other_user, 5)
    mine = _conversations(user, 2)
    ids = {c["id"] for c in api.get("/api/conversations").json()["results"]}
    assert ids == {c.pk for c in mine}


def test_first_page_is_cached_and_dropped_on_change(api, user, django_assert_num_queries):
    _conversations(user, 3)
    api.get("/api/conversations")  # fills the cache
    with django_assert_num_queries(0):
        assert len(api.get("/api/conversations").json()["results"]) == 3
    created = api.post("/api/conversations", {"title": "new one"}, format="json")
    assert created.status_code == 201
    assert api.get("/api/conversations").json()["results"][0]["title"] == "new one"
    api.patch(f"/api/conversations/{created.json()['id']}", {"title": "renamed"}, format="json")
    assert api.get("/api/conversations").json()["results"][0]["title"] == "renamed"


def test_query_budgets_on_list_endpoints(api, user, django_assert_max_num_queries):
    conversations = _conversations(user, 60)
    Message.objects.bulk_create(
        Message(conversation=conversations[0], role="user", content=f"m{n}") for n in range(150)
    )
    api.get("/api/me")  # key lookup now cached, like any steady-state request
    api.get("/api/models")  # so is the model list
    with django_assert_max_num_queries(1):
        api.get("/api/conversations", {"page_size": 60})
    with django_assert_max_num_queries(2):  # the conversation, then the page
        api.get(f"/api/conversations/{conversations[0].pk}/messages")
    with django_assert_max_num_queries(1):
        api.get("/api/keys")
    with django_assert_max_num_queries(0):
        api.get("/api/models")


def test_create_rename_delete(api, user):
    created = api.post("/api/conversations", {"title": "  Plans  ", "model": "smollm2"}, format="json")
    assert created.status_code == 201 and created.json()["title"] == "Plans"
    conversation_id = created.json()["id"]
    assert (
        api.patch(f"/api/conversations/{conversation_id}", {"title": "Later"}, format="json").json()["title"] == "Later"
    )
    assert api.get(f"/api/conversations/{conversation_id}").json()["title"] == "Later"
    assert api.delete(f"/api/conversations/{conversation_id}").status_code == 204
    assert api.get(f"/api/conversations/{conversation_id}").status_code == 404


def test_create_with_unknown_model_is_400(api):
    response = api.post("/api/conversations", {"model": "gpt-99"}, format="json")
    assert response.status_code == 400 and "smollm2" in response.json()["details"]["model"][0]


def test_other_users_conversation_is_404_everywhere(api, other_user):
    theirs = Conversation.objects.create(user=other_user, title="secret", model_name="m")
    message = Message.objects.create(conversation=theirs, role="assistant", content="secret reply")
    for method, path in [
        ("get", f"/api/conversations/{theirs.pk}"),
        ("patch", f"/api/conversations/{theirs.pk}"),
        ("delete", f"/api/conversations/{theirs.pk}"),
        ("get", f"/api/conversations/{theirs.pk}/messages"),
        ("get", f"/api/conversations/{theirs.pk}/export"),
        ("get", f"/api/messages/{message.pk}"),
        ("post", f"/api/messages/{message.pk}/feedback"),
    ]:
        response = getattr(api, method)(path, {"title": "x", "rating": "up"}, format="json")
        assert response.status_code == 404, (method, path)
    theirs.refresh_from_db()
    assert theirs.title == "secret" and not MessageFeedback.objects.exists()


def test_messages_are_oldest_first_with_pages(api, user):
    conversation = Conversation.objects.create(user=user, model_name="m")
    now = timezone.now()
    Message.objects.bulk_create(
        Message(conversation=conversation, role="user", content=f"m{n}", created_at=now + timedelta(seconds=n))
        for n in range(130)
    )
    first = api.get(f"/api/conversations/{conversation.pk}/messages").json()
    second = api.get(f"/api/conversations/{conversation.pk}/messages", {"cursor": first["next"]}).json()
    contents = [m["content"] for m in first["results"] + second["results"]]
    assert contents == [f"m{n}" for n in range(130)] and second["next"] is None


def test_export_json_and_markdown(api, user):
    conversation = Conversation.objects.create(user=user, title="Trip", model_name="smollm2")
    Message.objects.create(conversation=conversation, role="user", content="Where to?")
    Message.objects.create(conversation=conversation, role="assistant", content="Lisbon.", status="complete")
    exported = api.get(f"/api/conversations/{conversation.pk}/export")
    assert exported["Content-Disposition"] == f'attachment; filename="conversation-{conversation.pk}.json"'
    import orjson

    body = orjson.loads(b"".join(exported.streaming_content))
    assert body["conversation"]["title"] == "Trip"
    assert [m["content"] for m in body["messages"]] == ["Where to?", "Lisbon."]
    markdown = b"".join(api.get(f"/api/conversations/{conversation.pk}/export", {"format": "md"}).streaming_content)
    assert markdown.decode().startswith("# Trip") and "## Assistant\n\nLisbon." in markdown.decode()
    assert api.get(f"/api/conversations/{conversation.pk}/export", {"format": "pdf"}).status_code == 400


def test_feedback_up_down_and_replace(api, user):
    conversation = Conversation.objects.create(user=user, model_name="m")
    reply = Message.objects.create(conversation=conversation, role="assistant", content="ok")
    assert api.post(f"/api/messages/{reply.pk}/feedback", {"rating": "up"}, format="json").status_code == 200
    response = api.post(f"/api/messages/{reply.pk}/feedback", {"rating": "down", "comment": "wrong"}, format="json")
    assert response.json()["rating"] == "down"
    assert MessageFeedback.objects.get().comment == "wrong"
    bad = api.post(f"/api/messages/{reply.pk}/feedback", {"rating": "meh"}, format="json")
    assert bad.status_code == 400 and "rating" in bad.json()["details"]


def test_models_list_is_public_cached_and_marks_availability(client, api, django_assert_num_queries):
    LanguageModel.objects.create(name="gold", provider="local", upstream_model="x", allowed_tiers=["premium"])
    LanguageModel.objects.create(name="off", provider="local", upstream_model="x", enabled=False)
    names = {m["name"]: m["available"] for m in api.get("/api/models").json()}
    assert names == {"smollm2": True, "gold": False}
    with django_assert_num_queries(0):
        assert client.get("/api/models").status_code == 200
    assert api.get("/api/models/gold").json()["allowed_tiers"] == ["premium"]
    assert api.get("/api/models/off").status_code == 404


def test_model_change_reaches_the_cached_list(api):
    api.get("/api/models")
    LanguageModel.objects.filter(name="smollm2").update(description="changed")  # no signal: like a raw SQL edit
    model = LanguageModel.objects.get(name="smollm2")
    model.description = "edited in the admin"
    model.save()
    assert api.get("/api/models/smollm2").json()["description"] == "edited in the admin"


def test_wrong_scope_cannot_write(user, make_key, key_client):
    _, reader = make_key(user, scopes=["conversations:read"])
    client = key_client(reader)
    assert client.get("/api/conversations").status_code == 200
    assert client.post("/api/conversations", {}, format="json").status_code == 403


@pytest.mark.parametrize("time_zone", ["UTC", "Europe/Paris"])
def test_list_rows_are_what_the_serializer_writes(api, user, settings, time_zone):
    """The list is built without DRF's serializer (half its CPU): it must not drift from it."""
    from chat.serializers import ConversationSerializer

    settings.TIME_ZONE = time_zone
    _conversations(user, 3)
    listed = api.get("/api/conversations", {"page_size": 2}).json()
    following = api.get("/api/conversations", {"cursor": listed["next"]}).json()
    expected = ConversationSerializer(Conversation.objects.filter(user=user).order_by("-updated_at", "-id"), many=True)
    assert listed["results"] + following["results"] == expected.data
    assert following["next"] is None
