"""The fake upstream's behaviours that the benchmarks rely on."""

from __future__ import annotations

import time

import httpx
import orjson

from bench.fake_upstream import run_fake_upstream, upstream_stats


def _stream(client: httpx.Client, model: str) -> list[str]:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": True}
    tokens = []
    with client.stream("POST", "/chat/completions", json=body) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: {"):
                choices = orjson.loads(line.removeprefix("data: "))["choices"]
                if choices and choices[0]["delta"].get("content"):
                    tokens.append(choices[0]["delta"]["content"])
    return tokens


def test_a_paced_stream_leaves_its_keep_alive_connection_usable():
    """A paced stream watches for a hang-up with a pending read; the next request
    on the same connection must still be read whole."""
    with run_fake_upstream() as base_url, httpx.Client(base_url=base_url, limits=httpx.Limits(max_connections=1)) as c:
        first = _stream(c, "tps-500+tokens-3")
        second = _stream(c, "tps-500+tokens-4")
        third = _stream(c, "tokens-2")
        stats = upstream_stats(base_url)
    assert (len(first), len(second), len(third)) == (3, 4, 2)
    assert stats["connections"] == 1
    assert stats["completed"] == 3


def test_stamp_sends_each_token_as_the_time_it_was_sent():
    with run_fake_upstream() as base_url, httpx.Client(base_url=base_url) as client:
        before = time.time_ns()
        tokens = _stream(client, "stamp+tps-200+tokens-5")
        after = time.time_ns()
    stamps = [int(token) for token in tokens]
    assert len(stamps) == 5
    assert before <= stamps[0] <= stamps[-1] <= after
    assert stamps == sorted(stamps)
