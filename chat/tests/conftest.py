"""Chat test fixtures: a real OpenAI-compatible upstream on loopback (bench.fake_upstream)
and models that point at it. The model's upstream id picks the fake's behaviour
(``echo``, ``fail-before``, ``fail-mid``, ``tps-N``, ``hang``…)."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Iterator

import orjson
import pytest
from asgiref.sync import sync_to_async
from django.test import AsyncClient

from agentsflow.testing import stop_running_generations
from bench.fake_upstream import run_fake_upstream
from chat.models import LanguageModel


@pytest.fixture(scope="session")
def upstream() -> Iterator[str]:
    with run_fake_upstream() as base_url:
        yield base_url


@pytest.fixture
def providers(settings, upstream):
    """A provider "fake" on the fake upstream and "dead" on a closed port."""
    common = {"kind": "openai", "api_key": "", "connect_timeout": 1.0, "read_timeout": 2.0, "retries": 0}
    settings.MODEL_PROVIDERS = {
        **settings.MODEL_PROVIDERS,
        "fake": {**common, "base_url": upstream},
        "dead": {**common, "base_url": "http://127.0.0.1:9/v1"},
    }
    return settings.MODEL_PROVIDERS


@pytest.fixture
def make_model(providers, transactional_db):
    def make(name: str, upstream_model: str = "echo", **fields) -> LanguageModel:
        fields.setdefault("provider", "fake")
        fields.setdefault("context_window", 4096)
        fields.setdefault("max_output_tokens", 256)
        return LanguageModel.objects.create(name=name, upstream_model=upstream_model, **fields)

    return make


@pytest.fixture
def echo_model(make_model) -> LanguageModel:
    return make_model("echo")


@pytest.fixture(autouse=True)
def _clean_streams(request):
    """Async tests end with no generation running and their HTTP client closed
    (sync tests get no event loop, so Playwright's sync API can run in them)."""
    if inspect.iscoroutinefunction(request.function):
        request.getfixturevalue("_stop_generations")


@pytest.fixture
async def _stop_generations():
    yield
    await stop_running_generations()


class KeyClient(AsyncClient):
    """An AsyncClient that sends an API key with every request (AsyncClient's own
    ``headers=`` default does not reach ASGI requests in Django 5.2)."""

    def __init__(self, plaintext: str) -> None:
        super().__init__()
        self.key = plaintext

    def generic(self, method, path, *args, headers=None, **kwargs):
        headers = {"Authorization": f"Bearer {self.key}", **(headers or {})}
        return super().generic(method, path, *args, headers=headers, **kwargs)


@pytest.fixture
def aclient_for():
    """A client for the given key (async views need one loop for the whole test)."""
    return KeyClient


@pytest.fixture
async def chat_client(transactional_db, make_user, aclient_for):
    user = await sync_to_async(make_user)(display_name="Chatter")
    from core.services import api_key_issue

    _, plaintext = await sync_to_async(api_key_issue)(
        user=user, name="t", scopes=["chat", "conversations:read", "admin"]
    )
    client = aclient_for(plaintext)
    client.user = user
    return client


async def post_json(client: AsyncClient, path: str, body: dict, **headers):
    return await client.post(path, orjson.dumps(body), content_type="application/json", headers=headers or None)


async def sse_events(response, limit: int | None = None) -> list[dict]:
    """Parse a streaming response's Server-Sent Events (up to ``limit`` events)."""
    events, buffer = [], b""
    async for chunk in response.streaming_content:
        buffer += chunk
        while b"\n\n" in buffer:
            frame, buffer = buffer.split(b"\n\n", 1)
            data = [line[6:] for line in frame.split(b"\n") if line.startswith(b"data: ")]
            if data:
                events.append(orjson.loads(data[0]))
                if limit is not None and len(events) >= limit:
                    return events
    return events


async def read_then_disconnect(response, count: int) -> list[dict]:
    """Read ``count`` events, then drop the connection the way the ASGI server does:
    by cancelling the task that is waiting for the next chunk."""
    events: list[dict] = []
    enough = asyncio.Event()

    async def reader() -> None:
        buffer = b""
        async for chunk in response.streaming_content:
            buffer += chunk
            while b"\n\n" in buffer:
                frame, buffer = buffer.split(b"\n\n", 1)
                data = [line[6:] for line in frame.split(b"\n") if line.startswith(b"data: ")]
                if data:
                    events.append(orjson.loads(data[0]))
            if len(events) >= count:
                enough.set()

    task = asyncio.create_task(reader())
    await asyncio.wait_for(enough.wait(), timeout=10)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return events
