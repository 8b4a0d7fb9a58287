"""Database connections of the model-calling async views, on a real ASGI server
with PostgreSQL's connection pool made tiny (2 connections, 3 s wait) and a
model slower than that wait, so a connection held across the model call, or
never given back, shows up as a 503."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from agentsflow.testing import run_platform_on_fake_upstream

pytestmark = [pytest.mark.server, pytest.mark.postgres]

MODELS = [
    # About 4 s a reply: 40 tokens at 10 a second.
    {"name": "slow", "provider": "fake", "upstream_model": "tps-10+tokens-40", "max_output_tokens": 64},
]


@pytest.fixture(scope="module")
def live(upstream, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pool")
    pool = {"DB_POOL_MIN_SIZE": "1", "DB_POOL_MAX_SIZE": "2", "DB_POOL_TIMEOUT": "3"}
    with run_platform_on_fake_upstream("pool", tmp, upstream, MODELS, **pool) as server:
        yield server


async def _send(client: httpx.AsyncClient, url: str, **extra) -> httpx.Response:
    return await client.post(f"{url}/api/chat", json={"content": "hello", "model": "slow", **extra})


async def _statuses_once_stored(client: httpx.AsyncClient, url: str) -> list[str]:
    """The messages' statuses once the reply is no longer streaming (at most 30 s)."""
    for _ in range(300):
        response = await client.get(url)
        assert response.status_code == 200, response.text
        statuses = [m["status"] for m in response.json()["results"]]
        if "streaming" not in statuses:
            return statuses
        await asyncio.sleep(0.1)
    return statuses


async def test_replies_waiting_for_the_model_hold_no_database_connection(live):
    """Six replies in flight at once with a pool of two: each one's database work
    is short, so none waits the pool's 3 s for a connection."""
    headers = {"Authorization": f"Bearer {live.key}"}
    async with httpx.AsyncClient(headers=headers, timeout=30) as client:
        responses = await asyncio.gather(*(_send(client, live.url) for _ in range(6)))
    assert [r.status_code for r in responses] == [201] * 6, [r.text for r in responses]


async def test_replies_that_outlive_their_request_give_their_connection_back(live):
    """Clients that hang up before the reply is done: the reply is still stored
    (by the generation, after its request ended), and the pool is whole after."""
    headers = {"Authorization": f"Bearer {live.key}"}
    async with httpx.AsyncClient(headers=headers, timeout=0.3) as impatient:
        for _ in range(4):
            with pytest.raises(httpx.ReadTimeout):
                await _send(impatient, live.url)
    async with httpx.AsyncClient(headers=headers, timeout=30) as client:
        listing = await client.get(f"{live.url}/api/conversations?page_size=4")
        assert listing.status_code == 200, listing.text
        for conversation in listing.json()["results"]:
            statuses = await _statuses_once_stored(
                client, f"{live.url}/api/conversations/{conversation['id']}/messages"
            )
            assert statuses == ["complete", "complete"]
        again = await asyncio.gather(*(_send(client, live.url) for _ in range(3)))
    assert [r.status_code for r in again] == [201] * 3, [r.text for r in again]
