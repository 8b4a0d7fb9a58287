"""Abuse 1 and 2: user B against user A's data, on every endpoint the schema and the
URL resolver know and every WebSocket action; and mass assignment on every
writable endpoint. In process (ASGI test client, WebsocketCommunicator), against
the real database; the endpoints come from the schema, so new ones (analytics)
are swept without editing this file."""

from __future__ import annotations

import asyncio
import contextlib
import json
from datetime import UTC, datetime
from itertools import cycle

import orjson
import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import AsyncClient

from analytics.rollup import rollup
from chat.consumers import ChatConsumer
from chat.models import Conversation, IdempotencyRecord, Message, MessageFeedback
from core.models import User
from core.services import api_key_issue, api_key_revoke
from resilience import abuse_tools as tools

pytestmark = pytest.mark.django_db(transaction=True)

MARK = "A-PRIVATE-7f3c"  # in every text user A owns; B must never see it
A_TOKENS = (7_777_771, 7_777_772)  # A's token counts, distinctive enough to spot in any body
ALL_SCOPES = ["chat", "conversations:read", "analytics:read", "admin"]
# WebSocket actions that name no object.
WS_NO_OBJECT = {"ping", "unsubscribe"}


upstream = tools.upstream
fake_platform = tools.fake_platform
generations_stopped = tools.generations_stopped


def seed_owner() -> User:
    """User A with one of everything, every text marked (A's key is on ``a.key``)."""
    a = User.objects.create_user(email="owner-a@example.com", password="pw-a-123456", display_name=f"{MARK} name")
    _, a.key = api_key_issue(user=a, name=f"{MARK} key", scopes=ALL_SCOPES)
    revoked, _ = api_key_issue(user=a, name=f"{MARK} revoked", scopes=ALL_SCOPES)
    api_key_revoke(key=revoked)
    for n in range(2):
        conversation = Conversation.objects.create(user=a, title=f"{MARK} conversation {n}", model_name="echo")
        question = Message.objects.create(conversation=conversation, role="user", content=f"{MARK} question {n}")
        reply = Message.objects.create(
            conversation=conversation,
            role="assistant",
            content=f"{MARK} answer {n}",
            reply_to=question,
            model_name="echo",
            prompt_tokens=A_TOKENS[0],
            completion_tokens=A_TOKENS[1],
            status="streaming" if n else "complete",  # one still streaming: cancel must not reach it
        )
        MessageFeedback.objects.create(message=reply, user=a, rating="down", comment=f"{MARK} feedback")
    IdempotencyRecord.objects.create(user=a, key=f"{MARK}-idem", fingerprint="0" * 64)
    rollup()  # A's usage into the analytics rollups, where B's analytics must not find it
    return a


def seed_intruder() -> tuple[User, str, dict[str, int]]:
    """User B: an all-scopes key, a second key, a conversation with a reply (lists are not empty)."""
    b = User.objects.create_user(email="intruder-b@example.com", password="pw-b-123456", display_name="B")
    _, plaintext = api_key_issue(user=b, name="b", scopes=ALL_SCOPES)
    other_key, _ = api_key_issue(user=b, name="b2", scopes=["chat"])
    conversation = Conversation.objects.create(user=b, title="b's own", model_name="echo")
    question = Message.objects.create(conversation=conversation, role="user", content="b asks")
    reply = Message.objects.create(
        conversation=conversation, role="assistant", content="b is answered", reply_to=question, model_name="echo"
    )
    own = {"conversation": conversation.pk, "message": reply.pk, "apikey": other_key.pk, "user": b.pk}
    return b, plaintext, own


def leaks(body: bytes, owner: User) -> list[str]:
    """A's texts, email and token counts (one reply's, all replies', in and out) found in a body."""
    text = body.decode(errors="replace")
    counts = {n * A_TOKENS[0] for n in (1, 2)} | {n * A_TOKENS[1] for n in (1, 2)} | {n * sum(A_TOKENS) for n in (1, 2)}
    needles = [MARK, owner.email, *map(str, sorted(counts))]
    return [needle for needle in needles if needle in text]


async def read_body(response) -> bytes:
    if not getattr(response, "streaming", False):
        return response.content
    chunks = []
    if not response.is_async:  # a sync iterator (an export, say) that may query the database
        return await sync_to_async(lambda: b"".join(response.streaming_content))()

    async def drain():
        async for chunk in response.streaming_content:
            chunks.append(chunk)

    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(drain(), 5)
    return b"".join(chunks)


async def request(client, operation: tools.Operation, url: str, body=None, query=None, **headers):
    data = json.dumps(body).encode() if body is not None else b""  # orjson refuses ints past 64 bits
    response = await client.generic(
        operation.method,
        url,
        data,
        content_type="application/json",
        query_params=query,
        headers=headers or None,
    )
    return response, await read_body(response)


def integer_params(operation: tools.Operation, where: str) -> list[str]:
    """Integer parameters that name an object: every one in the path; ``user`` or ``*_id`` in the query."""
    return [
        p["name"]
        for p in operation.params_in(where)
        if p.get("schema", {}).get("type") == "integer"
        and (where == "path" or p["name"] in ("user", "id") or p["name"].endswith("_id"))
    ]


def read_variants(schema: dict, operation: tools.Operation) -> list[dict | None]:
    """A read with no parameters, then with each value of each enumerated query parameter
    (``?metric=tokens_out``, ``?by=user``...)."""
    variants: list[dict | None] = [None]
    for param in operation.params_in("query"):
        for value in tools.resolve(schema, param.get("schema", {})).get("enum", []):
            variants.append({param["name"]: value})
    return variants


def id_fields(schema: dict, operation: tools.Operation) -> list[str]:
    body = operation.body_schema(schema) or {}
    return [
        name
        for name, prop in body.get("properties", {}).items()
        if name.endswith("_id") and tools.resolve(schema, prop).get("type") == "integer"
    ]


# --- 1. object-level authorization ------------------------------------------------------------


async def test_abuse1_user_b_gets_404_for_everything_of_user_a(fake_platform, record_property, generations_stopped):
    """Every operation of the schema (which must list every /api/ and /v1/ route), with
    each of A's ids and random ids in each id slot (path, query, body), by API key and
    by session: 404 every time, and no response to B ever shows A's data."""
    schema = await sync_to_async(tools.openapi_schema)()
    missing = await sync_to_async(tools.api_routes)() - set(schema["paths"])
    assert not missing, f"routes missing from the OpenAPI schema (so from this sweep): {sorted(missing)}"

    owner = await sync_to_async(seed_owner)()
    b, b_key, _ = await sync_to_async(seed_intruder)()
    a_ids = await sync_to_async(tools.owned_ids)(owner.pk)
    b_ids = set().union(*(await sync_to_async(tools.owned_ids)(b.pk)).values())
    a_all = set().union(*a_ids.values())
    candidates = sorted(a_all - b_ids) + tools.random_ids(8, b_ids) + [2**63, 10**30]
    before = await sync_to_async(tools.snapshot)(owner.pk)

    session = AsyncClient()
    await session.aforce_login(b)
    failures, requests, lists = [], 0, 0
    for client_name, client in (("key", tools.key_client(b_key)), ("session", session)):
        for operation in tools.operations(schema):
            path_ids = integer_params(operation, "path")
            query_ids = integer_params(operation, "query")
            body_ids = id_fields(schema, operation)
            body_schema = operation.body_schema(schema)
            values = {**tools.DEFAULT_VALUES, "model": "echo"}
            body = tools.example(schema, body_schema, values) if body_schema else None
            if operation.method == "GET" and not operation.params_in("path"):  # a list, a summary...
                for query in read_variants(schema, operation):
                    response, content = await request(client, operation, operation.path, query=query)
                    requests, lists = requests + 1, lists + 1
                    if found := leaks(content, owner):
                        failures.append((client_name, f"{operation} {query}", response.status_code, found))
            if not (path_ids or query_ids or body_ids):
                continue
            for candidate in candidates:
                url = operation.url(**dict.fromkeys(path_ids, candidate))
                query = dict.fromkeys(query_ids, candidate) or None
                payload = {**body, **dict.fromkeys(body_ids, candidate)} if body is not None else None
                response, content = await request(client, operation, url, payload, query)
                requests += 1
                found = leaks(content, owner)
                # A's ids: 404, whatever the slot. A random id may also fail validation first
                # (400: zero, out of range), and a query filter may answer an empty 200.
                allowed = {404} if candidate in a_all and (path_ids or body_ids) else {200, 400, 404}
                if found or response.status_code not in allowed:
                    failures.append((client_name, f"{operation} id={candidate}", response.status_code, found))

    ws_actions = await websocket_sweep(b_key, a_ids, b_ids, failures)
    after = await sync_to_async(tools.snapshot)(owner.pk)
    # The control: A's own reads do show A's data, so the needles would find a leak.
    seen_by_a = set()
    for operation in tools.operations(schema):
        if operation.method == "GET" and not operation.params_in("path"):
            for query in read_variants(schema, operation):
                _, content = await request(tools.key_client(owner.key), operation, operation.path, query=query)
                if leaks(content, owner):
                    seen_by_a.add(operation.path)
    analytics = [op.path for op in tools.operations(schema) if "/analytics/" in op.path and op.method == "GET"]
    assert set(analytics) <= seen_by_a and len(seen_by_a) >= 2, seen_by_a

    assert not failures, "\n".join(map(str, failures))
    assert after == before, "B's requests changed A's rows"
    figure = (
        f"{requests} requests (key and session): every id of A's 404, {lists} list/summary reads with none of "
        f"A's data (A's own reads show it on {len(seen_by_a)} endpoints); {ws_actions} WebSocket actions closed 4404"
    )
    record_property("figure", figure)


async def websocket_sweep(b_key: str, a_ids: dict, b_ids: set[int], failures: list) -> int:
    """Each WebSocket action that names an object, with A's conversations and messages
    and random ids: an error event and close 4404 every time."""
    from agentsflow.asgi import application

    conversations = sorted(a_ids["chat.Conversation"]) + tools.random_ids(3, b_ids, seed=7)
    messages = sorted(a_ids["chat.Message"]) + tools.random_ids(3, b_ids, seed=8)
    pairs = list(zip(cycle(conversations), messages, strict=False))
    count = 0
    for action in sorted(set(ChatConsumer.HANDLERS) - WS_NO_OBJECT):
        for conversation_id, message_id in pairs:
            ws = WebsocketCommunicator(
                application, "/ws/chat/", headers=[(b"authorization", f"Bearer {b_key}".encode())]
            )
            connected, _ = await ws.connect()
            assert connected
            assert orjson.loads(await ws.receive_from(timeout=5))["type"] == "ready"
            await ws.send_json_to(
                {
                    "type": action,
                    "conversation_id": conversation_id,
                    "message_id": message_id,
                    "content": "probe",
                    "last_seq": 0,
                    "model": "echo",
                }
            )
            event = orjson.loads(await ws.receive_from(timeout=5))
            try:
                closed = await ws.receive_output(timeout=5)
            except TimeoutError:  # the communicator has cancelled the application
                failures.append(
                    ("ws", f"{action} conversation={conversation_id} message={message_id}", event, "still open")
                )
                continue
            count += 1
            if event.get("code") != "not_found" or closed.get("code") != 4404 or MARK in str(event):
                failures.append(("ws", f"{action} conversation={conversation_id} message={message_id}", event, closed))
            await ws.disconnect()
    return count


# --- 2. mass assignment ----------------------------------------------------------------------

STAMP = "2001-02-03T04:05:06Z"
SENTINEL = 987_654


def forbidden_fields(a: User, a_conversation: int, a_message: int) -> dict:
    """Fields no client may set, with values no legitimate request produces."""
    return {
        "id": 987_654_321,
        "pk": 987_654_321,
        "user": a.pk,
        "user_id": a.pk,
        "owner": a.pk,
        "owner_id": a.pk,
        "tier": "premium",
        "is_staff": True,
        "is_superuser": True,
        "is_active": False,
        "email": "taken-over@example.com",
        "password": "taken-over-password",
        "created_at": STAMP,
        "updated_at": STAMP,
        "last_used_at": STAMP,
        "last_login": STAMP,
        "revoked_at": STAMP,
        "expires_at": STAMP,
        "prompt_tokens": SENTINEL,
        "completion_tokens": SENTINEL,
        "total_tokens": SENTINEL,
        "latency_ms": SENTINEL,
        "ttft_ms": SENTINEL,
        "rate_limit_per_minute": SENTINEL,
        "status": "cancelled",
        "role": "system",
        "error": "injected",
        "model_name": "injected-model",
        "prefix": "afk_injected",
        "secret_hash": "0" * 64,
        "fingerprint": "f" * 64,
        "conversation": a_conversation,
        "conversation_id": a_conversation,
        "reply_to": a_message,
        "reply_to_id": a_message,
        "message": a_message,
        "api_key": SENTINEL,
        "api_key_id": SENTINEL,
    }


def _same(stored, injected) -> bool:
    if isinstance(stored, datetime) and isinstance(injected, str):
        return stored == datetime.fromisoformat(injected.replace("Z", "+00:00")).astimezone(UTC)
    if isinstance(stored, bool) or isinstance(injected, bool):
        return stored is injected
    return stored == injected


def injected_values_found(before: dict, after: dict, injected: dict) -> list[str]:
    """Fields of rows that are new or changed and now hold an injected value."""
    found = []
    for label, rows in after.items():
        for pk, row in rows.items():
            if before.get(label, {}).get(pk) == row:
                continue
            for name, value in injected.items():
                if name in row and _same(row[name], value):
                    found.append(f"{label}#{pk}.{name}={row[name]!r}")
    return found


def owned_object_for(param: str, own: dict[str, int]) -> int:
    """B's own object for a path parameter (``conversation_id`` → B's conversation)."""
    stem = param.removesuffix("_id").replace("_", "")
    matches = [pk for label, pk in own.items() if label.endswith(stem)]
    assert matches, f"no object of B's fits the path parameter {param!r}: teach owned_object_for"
    return matches[0]


async def test_abuse2_mass_assignment_changes_nothing(fake_platform, record_property, generations_stopped):
    """Every writable operation (POST/PUT/PATCH in the schema) and the WebSocket send,
    on B's own objects, with a valid body plus every field a client must not set
    (owner, tier, staff, timestamps, token counts, status...): the request does what it
    would without them and no stored row takes an injected value."""
    schema = await sync_to_async(tools.openapi_schema)()
    owner = await sync_to_async(seed_owner)()
    b, b_key, own = await sync_to_async(seed_intruder)()
    a_conversation = await sync_to_async(lambda: Conversation.objects.filter(user=owner).first().pk)()
    a_message = await sync_to_async(lambda: Message.objects.filter(conversation__user=owner).first().pk)()
    injected_all = forbidden_fields(owner, a_conversation, a_message)
    client = tools.key_client(b_key)
    problems, count, fields = [], 0, 0
    for operation in tools.operations(schema):
        if operation.method.lower() not in tools.WRITE_METHODS:
            continue
        legit = tools.body_properties(schema, operation)
        injected = {name: value for name, value in injected_all.items() if name not in legit}
        body_schema = operation.body_schema(schema)
        values = {**tools.DEFAULT_VALUES, "model": "echo"}
        body = tools.example(schema, body_schema, values) if body_schema else {}
        url = operation.url(**{p["name"]: owned_object_for(p["name"], own) for p in operation.params_in("path")})
        before = await sync_to_async(tools.snapshot)(b.pk)
        before_a = await sync_to_async(tools.snapshot)(owner.pk)
        response, content = await request(client, operation, url, {**body, **injected})
        after = await sync_to_async(tools.snapshot)(b.pk)
        count, fields = count + 1, max(fields, len(injected))
        if response.status_code >= 500:
            problems.append(f"{operation}: {response.status_code} {content[:200]!r}")
        problems += [f"{operation}: {f}" for f in injected_values_found(before, after, injected)]
        if await sync_to_async(tools.snapshot)(owner.pk) != before_a:
            problems.append(f"{operation}: changed A's rows")

    problems += await websocket_send_with_forbidden_fields(b, b_key, owner, injected_all)
    user = await sync_to_async(User.objects.get)(pk=b.pk)
    assert (user.tier, user.is_staff, user.is_superuser, user.is_active, user.email) == (
        "regular",
        False,
        False,
        True,
        "intruder-b@example.com",
    )
    assert await sync_to_async(user.check_password)("pw-b-123456")
    assert not problems, problems
    record_property(
        "figure",
        f"{count + 1} writable operations (WebSocket send included) × up to {fields} forbidden fields: 0 changed",
    )


async def websocket_send_with_forbidden_fields(b: User, b_key: str, owner: User, injected_all: dict) -> list[str]:
    from agentsflow.asgi import application

    injected = {k: v for k, v in injected_all.items() if k not in {"conversation_id", "model"}}
    before = await sync_to_async(tools.snapshot)(b.pk)
    ws = WebsocketCommunicator(application, "/ws/chat/", headers=[(b"authorization", f"Bearer {b_key}".encode())])
    assert (await ws.connect())[0]
    await ws.receive_from(timeout=5)
    await ws.send_json_to({**injected, "type": "send", "content": "mass assignment", "model": "echo"})
    accepted = orjson.loads(await ws.receive_from(timeout=5))
    while True:
        event = orjson.loads(await ws.receive_from(timeout=10))
        if event["type"] in ("done", "error") and event.get("message_id") == accepted.get("message_id"):
            break
    await ws.disconnect()
    after = await sync_to_async(tools.snapshot)(b.pk)
    return [f"WS send: {f}" for f in injected_values_found(before, after, injected)]


# --- 4. CSRF on session-authenticated writes ------------------------------------------------

FOREIGN_ORIGIN = "https://evil.example"


async def test_abuse4_session_writes_need_a_csrf_token_and_our_origin(
    fake_platform, record_property, generations_stopped
):
    """A browser session (CSRF checks on, as in real browsers) on every unsafe operation
    of the schema: no token, a wrong token, or the right token from a foreign Origin are
    403 and change nothing; the right token from our origin gets past the check. HTML
    forms (sign-in, sign-out...) refuse a POST without a token too."""
    schema = await sync_to_async(tools.openapi_schema)()
    b, _, own = await sync_to_async(seed_intruder)()
    client = AsyncClient(enforce_csrf_checks=True)
    await client.aforce_login(b)
    await client.get("/accounts/login/")
    token = client.cookies["csrftoken"].value
    unsafe = [op for op in tools.operations(schema) if op.method in ("POST", "PUT", "PATCH", "DELETE")]
    values = {**tools.DEFAULT_VALUES, "model": "echo"}
    refused, problems = 0, []
    before = await sync_to_async(tools.snapshot)(b.pk)
    for operation in unsafe:
        url = operation.url(**{p["name"]: owned_object_for(p["name"], own) for p in operation.params_in("path")})
        body_schema = operation.body_schema(schema)
        body = json.dumps(tools.example(schema, body_schema, values) if body_schema else {})
        attempts = {
            "no token": {},
            "wrong token": {"X-CSRFToken": "x" * 64},
            "foreign origin": {"X-CSRFToken": token, "Origin": FOREIGN_ORIGIN},
            "null origin": {"X-CSRFToken": token, "Origin": "null"},
        }
        for name, headers in attempts.items():
            response = await client.generic(
                operation.method, url, body, content_type="application/json", headers=headers
            )
            refused += 1
            if response.status_code != 403 or "csrf" not in response.content.decode().lower():
                problems.append(f"{operation} {name}: {response.status_code} {response.content[:120]!r}")
    if await sync_to_async(tools.snapshot)(b.pk) != before:
        problems.append("a refused write changed B's rows")

    accepted = 0
    for operation in sorted(unsafe, key=lambda op: op.method == "DELETE"):  # deletions last
        url = operation.url(**{p["name"]: owned_object_for(p["name"], own) for p in operation.params_in("path")})
        body_schema = operation.body_schema(schema)
        body = json.dumps(tools.example(schema, body_schema, values) if body_schema else {})
        response = await client.generic(
            operation.method, url, body, content_type="application/json", headers={"X-CSRFToken": token}
        )
        await read_body(response)
        accepted += 1
        if response.status_code == 403 or response.status_code >= 500:
            problems.append(f"{operation} with the token: {response.status_code} {response.content[:120]!r}")

    pages = sorted(r for r in tools.all_routes() if not r.startswith(("/api/", "/v1/")) and "{" not in r)
    for path in pages:  # sign-in, sign-out, password forms, the admin...
        response = await client.post(path, {"username": b.email, "password": "pw-b-123456"})
        if not 400 <= response.status_code < 500:  # 403, or refused before CSRF matters (405, 415)
            problems.append(f"HTML POST {path} without a token: {response.status_code}")
    assert not problems, "\n".join(problems)
    record_property(
        "figure",
        f"{refused} session writes without a valid token or from a foreign origin, all 403; "
        f"{accepted} with the token accepted; POST without a token to {len(pages)} pages refused (4xx)",
    )
