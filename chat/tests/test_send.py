"""Sending messages over REST: JSON and Server-Sent Events, against a real upstream."""

from __future__ import annotations

import asyncio
import time

import pytest
from asgiref.sync import sync_to_async

from bench.fake_upstream import upstream_stats
from chat.models import Conversation, IdempotencyRecord, Message
from chat.tests.conftest import post_json, read_then_disconnect, sse_events

pytestmark = pytest.mark.django_db(transaction=True)


async def _messages(**filters) -> list[Message]:
    return await sync_to_async(lambda: list(Message.objects.filter(**filters).order_by("id")))()


async def test_send_stores_both_messages_with_usage_and_timings(chat_client, echo_model):
    response = await post_json(chat_client, "/api/chat", {"content": "hello brave new world", "model": "echo"})
    assert response.status_code == 201
    body = response.json()
    assert body["conversation_created"] is True
    assert body["message"]["content"] == "hello brave new world"
    assert body["message"]["status"] == "complete" and body["message"]["completion_tokens"] > 0
    user_message, reply = await _messages(conversation_id=body["conversation_id"])
    assert (user_message.role, user_message.content) == ("user", "hello brave new world")
    assert reply.role == "assistant" and reply.status == "complete" and reply.reply_to_id == user_message.pk
    assert reply.content == "hello brave new world"
    assert reply.prompt_tokens > 0 and reply.completion_tokens == body["message"]["completion_tokens"]
    assert reply.latency_ms is not None and reply.ttft_ms is not None and reply.ttft_ms <= reply.latency_ms


async def test_send_to_a_conversation_continues_it(chat_client, echo_model):
    first = (await post_json(chat_client, "/api/chat", {"content": "one", "model": "echo"})).json()
    conversation_id = first["conversation_id"]
    second = await post_json(chat_client, f"/api/conversations/{conversation_id}/messages", {"content": "two"})
    assert second.status_code == 201
    assert second.json()["conversation_id"] == conversation_id and second.json()["conversation_created"] is False
    assert len(await _messages(conversation_id=conversation_id)) == 4


async def test_stream_sends_numbered_events_ending_with_done(chat_client, echo_model):
    response = await post_json(
        chat_client, "/api/chat", {"content": "stream these words", "model": "echo", "stream": True}
    )
    assert response.status_code == 200 and response["Content-Type"] == "text/event-stream"
    events = await sse_events(response)
    assert [e["type"] for e in events][0] == "start" and events[-1]["type"] == "done"
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    text = "".join(e["text"] for e in events if e["type"] == "delta")
    assert text == "stream these words" == events[-1]["content"]
    assert events[-1]["usage"]["completion_tokens"] > 0
    reply = (await _messages(pk=events[0]["message_id"]))[0]
    assert reply.status == "complete" and reply.content == text


async def test_accept_header_asks_for_a_stream(chat_client, echo_model):
    response = await chat_client.post(
        "/api/chat",
        b'{"content": "hi", "model": "echo"}',
        content_type="application/json",
        headers={"Accept": "text/event-stream"},
    )
    assert response["Content-Type"] == "text/event-stream"
    assert (await sse_events(response))[-1]["type"] == "done"


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"content": ""}, 400, "invalid"),
        ({"content": "   \n "}, 400, "invalid"),
        ({"model": "echo"}, 400, "invalid"),
        ({"content": "hi", "model": "nope"}, 400, "invalid"),
        ({"content": "hi", "temperature": 9}, 400, "invalid"),
    ],
)
async def test_bad_input_is_rejected_and_nothing_is_stored(chat_client, echo_model, body, status, code):
    response = await post_json(chat_client, "/api/chat", body)
    assert response.status_code == status and response.json()["code"] == code
    assert await _messages() == []


async def test_unknown_model_error_lists_the_valid_models(chat_client, echo_model, make_model):
    await sync_to_async(make_model)("off", enabled=False)
    response = await post_json(chat_client, "/api/chat", {"content": "hi", "model": "off"})
    assert response.status_code == 400
    message = response.json()["details"]["model"][0]
    assert "echo" in message and "smollm2" in message and "off'" in message


async def test_premium_only_model_is_403_for_regular_users(chat_client, make_model):
    await sync_to_async(make_model)("gold", allowed_tiers=["premium"])
    response = await post_json(chat_client, "/api/chat", {"content": "hi", "model": "gold"})
    assert response.status_code == 403 and "premium" in response.json()["message"]
    assert await _messages() == []


async def test_message_over_the_limit_is_413(chat_client, echo_model, settings):
    settings.CHAT_MAX_MESSAGE_CHARS = 50
    response = await post_json(chat_client, "/api/chat", {"content": "x" * 51, "model": "echo"})
    assert response.status_code == 413 and response.json()["code"] == "message_too_long"
    assert await _messages() == []


async def test_another_users_conversation_is_404_and_nothing_is_stored(chat_client, echo_model, make_user):
    other = await sync_to_async(make_user)()
    theirs = await sync_to_async(Conversation.objects.create)(user=other, model_name="echo")
    for path in (f"/api/conversations/{theirs.pk}/messages", "/api/chat"):
        body = {"content": "hi"} if "messages" in path else {"content": "hi", "conversation_id": theirs.pk}
        response = await post_json(chat_client, path, body)
        assert response.status_code == 404
    assert await _messages() == []


@pytest.mark.parametrize("stream", [False, True])
async def test_unreachable_provider_is_503_and_both_messages_are_kept(chat_client, make_model, stream):
    await sync_to_async(make_model)("down", "echo", provider="dead")
    response = await post_json(
        chat_client, "/api/chat", {"content": "are you there", "model": "down", "stream": stream}
    )
    assert response.status_code == 503
    body = response.json()
    assert body["code"] == "provider_unavailable" and body["message_id"] and body["user_message_id"]
    user_message, reply = await _messages(conversation_id=body["conversation_id"])
    assert user_message.content == "are you there"
    assert reply.status == "error" and reply.error


async def test_upstream_refusing_is_503_with_fail_before(chat_client, make_model):
    await sync_to_async(make_model)("refuses", "fail-before")
    response = await post_json(chat_client, "/api/chat", {"content": "hi", "model": "refuses"})
    assert response.status_code == 503


async def test_upstream_timeout_is_504(chat_client, make_model):
    await sync_to_async(make_model)("slow", "slow-first-byte-5000")
    response = await post_json(chat_client, "/api/chat", {"content": "hi", "model": "slow"})
    assert response.status_code == 504 and response.json()["code"] == "provider_timeout"
    reply = (await _messages(role="assistant"))[0]
    assert reply.status == "error"


async def test_failure_mid_stream_keeps_the_partial_reply_as_error(chat_client, make_model):
    await sync_to_async(make_model)("flaky", "fail-mid")
    response = await post_json(chat_client, "/api/chat", {"content": "hi", "model": "flaky", "stream": True})
    assert response.status_code == 200
    events = await sse_events(response)
    assert any(e["type"] == "delta" for e in events)
    assert events[-1]["type"] == "error" and events[-1]["code"] == "provider_failed"
    reply = (await _messages(role="assistant"))[0]
    assert reply.status == "error" and reply.content == events[-1]["content"] != ""


async def test_fallback_model_answers_when_the_primary_is_unreachable(chat_client, make_model):
    backup = await sync_to_async(make_model)("backup", "echo")
    await sync_to_async(make_model)("primary", "echo", provider="dead", fallback=backup)
    response = await post_json(chat_client, "/api/chat", {"content": "rescue me", "model": "primary", "stream": True})
    events = await sse_events(response)
    assert [e["type"] for e in events][:2] == ["start", "fallback"]
    assert events[-1]["type"] == "done" and events[-1]["model"] == "backup"
    reply = (await _messages(role="assistant"))[0]
    assert reply.status == "complete" and reply.model_name == "backup" and reply.content == "rescue me"


async def test_no_fallback_in_the_middle_of_a_stream(chat_client, make_model):
    backup = await sync_to_async(make_model)("backup", "echo")
    await sync_to_async(make_model)("flaky", "fail-mid", fallback=backup)
    events = await sse_events(
        await post_json(chat_client, "/api/chat", {"content": "x", "model": "flaky", "stream": True})
    )
    assert "fallback" not in [e["type"] for e in events] and events[-1]["type"] == "error"


async def test_idempotency_key_returns_the_first_result_and_creates_nothing_new(chat_client, echo_model):
    body = {"content": "only once", "model": "echo"}
    first = await post_json(chat_client, "/api/chat", body, **{"Idempotency-Key": "abc-1"})
    again = await post_json(chat_client, "/api/chat", body, **{"Idempotency-Key": "abc-1"})
    assert first.status_code == 201 and again.status_code == 200
    assert again.json()["message"]["id"] == first.json()["message"]["id"]
    assert again.json()["message"]["content"] == "only once"
    assert len(await _messages()) == 2
    reused = await post_json(chat_client, "/api/chat", {"content": "different"}, **{"Idempotency-Key": "abc-1"})
    assert reused.status_code == 422 and reused.json()["code"] == "idempotency_key_reused"


async def test_concurrent_duplicates_with_one_idempotency_key_store_one_exchange(chat_client, echo_model):
    body = {"content": "race", "model": "echo"}
    responses = await asyncio.gather(
        *(post_json(chat_client, "/api/chat", body, **{"Idempotency-Key": "race-1"}) for _ in range(4))
    )
    assert {r.status_code for r in responses} <= {200, 201}
    assert len({r.json()["message"]["id"] for r in responses}) == 1
    assert len(await _messages()) == 2
    assert await sync_to_async(IdempotencyRecord.objects.count)() == 1


async def test_retried_stream_with_idempotency_key_replays_from_last_event_id(chat_client, echo_model):
    body = {"content": "a b c d", "model": "echo", "stream": True}
    events = await sse_events(await post_json(chat_client, "/api/chat", body, **{"Idempotency-Key": "s-1"}))
    again = await post_json(chat_client, "/api/chat", body, **{"Idempotency-Key": "s-1", "Last-Event-ID": "2"})
    replayed = await sse_events(again)
    assert [e["seq"] for e in replayed] == [e["seq"] for e in events if e["seq"] > 2]
    assert len(await _messages()) == 2


async def test_cancel_stops_the_upstream_within_a_second_and_keeps_the_partial_reply(chat_client, make_model, upstream):
    await sync_to_async(make_model)("slowtalker", "tokens-200+tps-20")
    response = await post_json(chat_client, "/api/chat", {"content": "go", "model": "slowtalker", "stream": True})
    first = await sse_events(response, limit=3)
    message_id = first[0]["message_id"]
    before = upstream_stats(upstream)["disconnects"]
    started = time.monotonic()
    cancelled = await chat_client.post(f"/api/messages/{message_id}/cancel")
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled"
    assert time.monotonic() - started < 1.0
    reply = (await _messages(pk=message_id))[0]
    assert reply.status == "cancelled" and reply.content  # the partial text is kept
    for _ in range(20):
        if upstream_stats(upstream)["disconnects"] > before:
            break
        await asyncio.sleep(0.05)
    assert upstream_stats(upstream)["disconnects"] > before
    again = await chat_client.post(f"/api/messages/{message_id}/cancel")
    assert again.status_code == 200  # cancelling a cancelled reply is harmless


async def test_cancel_of_a_finished_reply_is_409(chat_client, echo_model):
    body = (await post_json(chat_client, "/api/chat", {"content": "done", "model": "echo"})).json()
    response = await chat_client.post(f"/api/messages/{body['message']['id']}/cancel")
    assert response.status_code == 409 and response.json()["code"] == "not_streaming"


async def test_resume_with_last_event_id_gets_the_rest_without_repeats(chat_client, make_model):
    await sync_to_async(make_model)("steady", "tokens-30+tps-200")
    response = await post_json(chat_client, "/api/chat", {"content": "go", "model": "steady", "stream": True})
    head = await read_then_disconnect(response, 4)
    message_id = head[0]["message_id"]
    resumed = await chat_client.get(
        f"/api/messages/{message_id}/stream", headers={"Last-Event-ID": str(head[-1]["seq"])}
    )
    tail = await sse_events(resumed)
    assert tail[0]["seq"] == head[-1]["seq"] + 1 and tail[-1]["type"] == "done"
    seqs = [e["seq"] for e in head + tail]
    assert seqs == list(range(1, len(seqs) + 1))
    text = "".join(e["text"] for e in head + tail if e["type"] == "delta")
    assert text == tail[-1]["content"]


async def test_resume_after_the_reply_finished_rebuilds_it_from_the_database(chat_client, echo_model):
    body = (await post_json(chat_client, "/api/chat", {"content": "old news", "model": "echo"})).json()
    from chat import shared

    await shared.store().delete(shared.replay_key(body["message"]["id"]))  # as if the buffer expired
    resumed = await chat_client.get(f"/api/messages/{body['message']['id']}/stream?after=1")
    events = await sse_events(resumed)
    assert events[-1]["type"] == "done" and events[-1]["content"] == "old news"


async def test_client_disconnect_mid_stream_ends_consistently_after_the_grace_period(chat_client, make_model, settings):
    settings.CHAT_STREAM_GRACE_SECONDS = 0.3
    await sync_to_async(make_model)("long", "tokens-400+tps-40")
    response = await post_json(chat_client, "/api/chat", {"content": "go", "model": "long", "stream": True})
    head = await read_then_disconnect(response, 2)
    message_id = head[0]["message_id"]
    for _ in range(60):
        reply = (await _messages(pk=message_id))[0]
        if reply.status != "streaming":
            break
        await asyncio.sleep(0.05)
    assert reply.status == "cancelled" and reply.content  # stopped for want of listeners, partial kept


async def test_regenerate_creates_a_new_reply_to_the_same_message(chat_client, echo_model):
    body = (await post_json(chat_client, "/api/chat", {"content": "again please", "model": "echo"})).json()
    response = await chat_client.post(f"/api/messages/{body['message']['id']}/regenerate")
    assert response.status_code == 201
    new = response.json()["message"]
    assert new["id"] != body["message"]["id"] and new["reply_to_id"] == body["user_message"]["id"]
    assert new["content"] == "again please"
    assert len(await _messages(conversation_id=body["conversation_id"])) == 3


async def test_regenerating_a_user_message_is_400(chat_client, echo_model):
    body = (await post_json(chat_client, "/api/chat", {"content": "x", "model": "echo"})).json()
    response = await chat_client.post(f"/api/messages/{body['user_message']['id']}/regenerate")
    assert response.status_code == 400


async def test_unauthenticated_and_wrong_scope_are_refused(transactional_db, make_user, aclient_for, echo_model):
    from django.test import AsyncClient

    from core.services import api_key_issue

    response = await AsyncClient().post("/api/chat", b'{"content": "x"}', content_type="application/json")
    assert response.status_code == 401
    user = await sync_to_async(make_user)()
    _, reader = await sync_to_async(api_key_issue)(user=user, name="r", scopes=["conversations:read"])
    response = await post_json(aclient_for(reader), "/api/chat", {"content": "x"})
    assert response.status_code == 403 and "'chat'" in response.json()["message"]


def test_a_new_conversation_sends_what_the_request_brings_without_reading_it_back(user, echo_model):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from chat.registry import find_model
    from chat.services import build_history, message_send_prepare

    model = find_model("echo")
    with CaptureQueriesContext(connection) as queries:
        plan = message_send_prepare(
            user=user, conversation=None, content="hi there", model=model, count_tokens=len, system_prompt="be brief"
        )
    sent = [(m.role, m.content) for m in plan.request.messages]
    assert sent == [("system", "be brief"), ("user", "hi there")]
    stored = build_history(plan.conversation_id, upto_message_id=plan.user_message_id, model=model, count_tokens=len)
    assert sent == [(m.role, m.content) for m in stored]  # the same as reading it back
    statements = [q["sql"].split()[0].upper() for q in queries.captured_queries]
    assert "SELECT" not in statements and "UPDATE" not in statements, statements
