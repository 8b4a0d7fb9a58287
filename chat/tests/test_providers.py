"""The OpenAI-compatible provider against a real server on a real socket (bench.fake_upstream).

The fake upstream's model id picks its behaviour, and its /_stats show what it
saw: attempts, open streams, client disconnects. Counts are compared before
and after, since one server serves the whole module.
"""

from __future__ import annotations

import asyncio
import contextlib
import runpy
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import orjson
import pytest
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

from bench.fake_upstream import default_reply, parse_behaviour, run_fake_upstream, split_words, upstream_stats
from chat.providers import get_provider
from chat.providers.base import (
    ChatMessage,
    Chunk,
    CompletionRequest,
    ProviderFailed,
    ProviderTimeout,
    ProviderUnavailable,
    Usage,
    estimate_prompt_tokens,
    estimate_tokens,
)
from chat.providers.local import LocalProvider
from chat.providers.openai import OpenAIProvider, SSEDataParser, close_http_client, http_client


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    with run_fake_upstream() as base_url:
        yield base_url


@pytest.fixture(autouse=True)
async def _own_http_client() -> AsyncIterator[None]:
    """Each test's loop starts without a client and closes the one it made."""
    await close_http_client()
    yield
    await close_http_client()


def make_request(model: str, text: str | None = None, **fields: Any) -> CompletionRequest:
    # A unique text by default: fail-first-N counts attempts per request body.
    text = text if text is not None else f"hello {uuid.uuid4().hex}"
    fields = {"max_tokens": 64, "temperature": 0.0, **fields}
    return CompletionRequest(model=model, messages=(ChatMessage("user", text),), **fields)


def make_provider(base_url: str, **options: Any) -> OpenAIProvider:
    return OpenAIProvider("fake", base_url, **{"connect_timeout": 1.0, "read_timeout": 2.0, "retries": 2, **options})


async def collect(stream: AsyncIterator[Chunk]) -> list[Chunk]:
    return [chunk async for chunk in stream]


def attempts(base_url: str, model: str) -> int:
    return upstream_stats(base_url)["by_model"].get(model, 0)


async def eventually(predicate: Callable[[], bool], *, within: float) -> float:
    """Seconds until ``predicate()`` held; fails after ``within``. Yields to the loop so closes complete."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > within:
            raise AssertionError(f"not within {within} s")
        await asyncio.sleep(0.01)
    return time.monotonic() - started


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- streaming -----------------------------------------------------------------------


async def test_streams_deltas_then_one_final_chunk_with_the_upstreams_usage(upstream):
    chunks = await collect(make_provider(upstream).stream(make_request("echo", "alpha beta gamma")))

    assert [chunk.delta for chunk in chunks[:-1]] == ["alpha ", "beta ", "gamma"]
    assert all(chunk.finish_reason is None and chunk.usage is None for chunk in chunks[:-1])
    # The fake counts words: 3 and 3, where the estimate would say 8 and 4.
    assert chunks[-1] == Chunk(finish_reason="stop", usage=Usage(prompt_tokens=3, completion_tokens=3))


async def test_max_tokens_cut_finishes_with_length(upstream):
    chunks = await collect(make_provider(upstream).stream(make_request("tokens-10", max_tokens=4)))

    assert len(chunks) == 5
    assert chunks[-1].finish_reason == "length"
    assert chunks[-1].usage.completion_tokens == 4


async def test_missing_usage_is_estimated(upstream):
    request = make_request("echo+no-usage", "alpha beta gamma")

    chunks = await collect(make_provider(upstream).stream(request))

    assert "".join(chunk.delta for chunk in chunks) == "alpha beta gamma"
    expected = Usage(estimate_prompt_tokens(request.messages), estimate_tokens("alpha beta gamma"))
    assert chunks[-1] == Chunk(finish_reason="stop", usage=expected)


async def test_an_upstream_that_ignores_stream_true_still_works(upstream):
    chunks = await collect(make_provider(upstream).stream(make_request("echo+ignore-stream", "one two")))

    assert chunks == [Chunk(delta="one two"), Chunk(finish_reason="stop", usage=Usage(2, 2))]


async def test_sends_the_api_key_and_a_wrong_one_fails_without_retry():
    with run_fake_upstream(api_key="sk-right") as base_url:
        chunks = await collect(make_provider(base_url, api_key="sk-right").stream(make_request("echo", "hi")))
        assert chunks[0] == Chunk(delta="hi")

        refused = upstream_stats(base_url)["unauthorized"]
        with pytest.raises(ProviderFailed, match="Incorrect API key provided"):
            await collect(make_provider(base_url, api_key="sk-wrong").stream(make_request("echo")))
        assert upstream_stats(base_url)["unauthorized"] - refused == 1


# --- errors before the first byte: retried, then ProviderUnavailable --------------------


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504])
async def test_overloaded_statuses_are_retried_then_unavailable(upstream, status):
    model = f"fail-before+status-{status}"
    before = attempts(upstream, model)

    with pytest.raises(ProviderUnavailable, match=f"answered {status}") as caught:
        await collect(make_provider(upstream, retries=1).stream(make_request(model)))

    assert attempts(upstream, model) - before == 2
    assert caught.value.status == 503


async def test_retries_back_off_briefly(upstream):
    before = attempts(upstream, "fail-before")
    started = time.monotonic()

    with pytest.raises(ProviderUnavailable):
        await collect(make_provider(upstream, retries=2).stream(make_request("fail-before")))

    assert attempts(upstream, "fail-before") - before == 3
    assert time.monotonic() - started >= 0.4  # it backed off: 0.1 s, then 0.3 s (no upper bound: shared machines)


async def test_a_request_that_fails_twice_succeeds_on_the_third_attempt(upstream):
    before = attempts(upstream, "fail-first-2")

    chunks = await collect(make_provider(upstream, retries=2).stream(make_request("fail-first-2", max_tokens=3)))

    assert [chunk.delta for chunk in chunks[:-1]] == ["The ", "quick ", "brown "]
    assert attempts(upstream, "fail-first-2") - before == 3


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ("bad-request", "Invalid value for 'messages'"),
        ("fail-before+status-404", "answered 404"),
        ("fail-before+status-422", "answered 422"),
    ],
)
async def test_other_error_answers_fail_at_once_with_the_upstreams_message(upstream, model, message):
    before = attempts(upstream, model)

    with pytest.raises(ProviderFailed, match=message) as caught:
        await collect(make_provider(upstream).stream(make_request(model)))

    assert attempts(upstream, model) - before == 1
    assert caught.value.status == 502


async def test_connection_refused_is_unavailable():
    provider = make_provider(f"http://127.0.0.1:{free_port()}/v1", retries=1)
    started = time.monotonic()

    with pytest.raises(ProviderUnavailable, match="cannot reach") as caught:
        await collect(provider.stream(make_request("echo")))

    assert caught.value.status == 503
    assert time.monotonic() - started < 1.0


async def test_no_first_byte_within_the_read_timeout_is_a_timeout_and_not_retried(upstream):
    model = "slow-first-byte-3000"
    before = attempts(upstream, model)
    started = time.monotonic()

    with pytest.raises(ProviderTimeout) as caught:
        await collect(make_provider(upstream, read_timeout=0.3).stream(make_request(model)))

    assert 0.3 <= time.monotonic() - started < 1.5
    assert caught.value.status == 504
    assert attempts(upstream, model) - before == 1


# --- errors after the first chunk: never retried ---------------------------------------


async def test_a_stream_that_breaks_off_fails_after_its_chunks_and_is_not_retried(upstream):
    before = attempts(upstream, "fail-mid")
    deltas: list[str] = []

    with pytest.raises(ProviderFailed, match="broke off"):
        async for chunk in make_provider(upstream).stream(make_request("fail-mid")):
            deltas.append(chunk.delta)

    assert deltas == ["The ", "quick ", "brown "]
    assert attempts(upstream, "fail-mid") - before == 1


async def test_garbage_mid_stream_fails(upstream):
    deltas: list[str] = []

    with pytest.raises(ProviderFailed, match="unreadable stream event"):
        async for chunk in make_provider(upstream).stream(make_request("garbage")):
            deltas.append(chunk.delta)

    assert deltas == ["The ", "quick "]


async def test_the_read_timeout_bounds_each_gap_not_the_whole_answer(upstream):
    started = time.monotonic()

    chunks = await collect(make_provider(upstream, read_timeout=0.3).stream(make_request("tps-10+tokens-8")))

    assert time.monotonic() - started > 0.6  # twice the timeout, in gaps of 0.1 s
    assert len(chunks) == 9 and chunks[-1].finish_reason == "stop"


async def test_a_stall_mid_stream_is_a_timeout(upstream):
    deltas: list[str] = []
    before = upstream_stats(upstream)

    with pytest.raises(ProviderTimeout, match="stalled"):
        async for chunk in make_provider(upstream, read_timeout=0.3).stream(make_request("tps-2")):
            deltas.append(chunk.delta)

    assert deltas == ["The "]
    # The upstream sees the hang-up at its next token, up to 0.5 s later: wait for it
    # here, or a later test that counts disconnects would count this one too (CI saw it).
    await eventually(lambda: upstream_stats(upstream)["disconnects"] == before["disconnects"] + 1, within=2.0)


# --- reading server-sent events ----------------------------------------------------------

SSE_BODY = (
    b": keep-alive comment\r\n\r\n"
    b'data: {"n": 1}\r\n\r\n'
    b"event: message\nid: 7\nretry: 1000\n"
    b'data: {"n":\ndata: 2}\n\n'
    b'data:{"n": 3}\r\r'
    b"\n\n\n"
    b"data: [DONE]\n\n"
)
SSE_DATA = [b'{"n": 1}', b'{"n":\n2}', b'{"n": 3}', b"[DONE]"]


def test_sse_events_are_the_same_however_the_body_is_cut():
    """Comments, other fields, multi-line data, CRLF, CR and LF line ends, extra blank
    lines: cut the body at every pair of places, the events stay the same."""
    for first in range(len(SSE_BODY) + 1):
        for second in range(first, len(SSE_BODY) + 1, 7):
            parser = SSEDataParser()
            pieces = [SSE_BODY[:first], SSE_BODY[first:second], SSE_BODY[second:]]
            events = [data for piece in pieces for data in parser.feed(piece)] + parser.close()
            assert events == SSE_DATA, (first, second)


def test_sse_several_events_in_one_piece_and_a_last_one_without_its_blank_line():
    parser = SSEDataParser()
    assert parser.feed(b"data: a\n\ndata: b\n\ndata: c") == [b"a", b"b"]
    assert parser.close() == [b"c"]


@contextlib.asynccontextmanager
async def raw_upstream(pieces: list[bytes]) -> AsyncIterator[str]:
    """A server on a real socket that answers every request with ``pieces``, each one
    HTTP chunk written on its own, a moment apart (so most arrive in reads of their own)."""

    answers = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        answers.append(asyncio.current_task())
        with contextlib.suppress(ConnectionError):  # the client may hang up first
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
            for piece in pieces:
                writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                await writer.drain()
                await asyncio.sleep(0.01)
            writer.write(b"0\r\n\r\n")
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1"
    finally:
        await asyncio.gather(*answers, return_exceptions=True)
        server.close()
        await server.wait_closed()


def _delta_event(content: str, finish: str | None = None) -> bytes:
    choice = {"index": 0, "delta": {"content": content}, "finish_reason": finish}
    return b"data: " + orjson.dumps({"choices": [choice]})


async def test_events_split_across_reads_and_packed_into_one_arrive_whole_and_in_order():
    body = (
        b": ping\r\n\r\n"
        + _delta_event("Hel")
        + b"\r\n\r\n"
        + _delta_event("lo ")
        + b"\n\n"
        + _delta_event("wor")
        + b"\n\n"
        + _delta_event("ld", "stop")
        + b"\n\n"
        + b'data: {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 4}}\n\n'
        + b"data: [DONE]\n\n"
    )
    # Cut mid-event, mid-CRLF and mid-"data:"; the last piece holds several events.
    cuts = [5, 30, body.index(b"\r\n\r\n", 30) + 1, body.index(b"lo ") + 2, body.index(b"wor")]
    assert cuts == sorted(cuts)
    pieces = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
    async with raw_upstream(pieces) as base_url:
        chunks = await collect(make_provider(base_url).stream(make_request("any")))
    assert [chunk.delta for chunk in chunks] == ["Hel", "lo ", "wor", "ld", ""]
    assert chunks[-1] == Chunk(finish_reason="stop", usage=Usage(prompt_tokens=5, completion_tokens=4))


async def test_a_malformed_json_event_is_a_provider_error_naming_it():
    pieces = [_delta_event("ok") + b"\n\n", b'data: {"choices": [\n\n', b"data: [DONE]\n\n"]
    deltas = []
    async with raw_upstream(pieces) as base_url:
        with pytest.raises(ProviderFailed, match="fake: unreadable stream event"):
            async for chunk in make_provider(base_url).stream(make_request("any")):
                deltas.append(chunk.delta)
    assert deltas == ["ok"]


async def test_events_after_done_are_read_but_ignored():
    pieces = [_delta_event("only", "stop") + b"\n\ndata: [DONE]\n\n", _delta_event("late") + b"\n\n"]
    async with raw_upstream(pieces) as base_url:
        chunks = await collect(make_provider(base_url).stream(make_request("any")))
    assert [chunk.delta for chunk in chunks] == ["only", ""]


# --- cancellation closes the upstream request ------------------------------------------


async def test_closing_the_stream_mid_answer_closes_the_upstream_within_a_second(upstream):
    stream = make_provider(upstream).stream(make_request("tps-20+tokens-200"))
    assert (await anext(stream)).delta == "The "
    before = upstream_stats(upstream)

    await stream.aclose()

    def closed() -> bool:
        stats = upstream_stats(upstream)
        return stats["disconnects"] == before["disconnects"] + 1 and stats["open_streams"] == before["open_streams"] - 1

    assert await eventually(closed, within=1.0) < 1.0


async def test_cancelling_the_consuming_task_closes_the_upstream_within_a_second(upstream):
    first = asyncio.Event()

    async def consume() -> None:
        async for _ in make_provider(upstream).stream(make_request("tps-20+tokens-200")):
            first.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first.wait(), 2)
    before = upstream_stats(upstream)

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    await eventually(lambda: upstream_stats(upstream)["disconnects"] == before["disconnects"] + 1, within=1.0)


async def test_cancelling_before_the_first_byte_closes_the_upstream_too(upstream):
    before = upstream_stats(upstream)
    task = asyncio.create_task(collect(make_provider(upstream).stream(make_request("hang"))))
    await eventually(lambda: upstream_stats(upstream)["open_streams"] == before["open_streams"] + 1, within=1.0)

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    await eventually(lambda: upstream_stats(upstream)["disconnects"] == before["disconnects"] + 1, within=1.0)


# --- connection pooling ----------------------------------------------------------------


async def test_one_client_per_event_loop_reuses_its_connections(upstream):
    before = upstream_stats(upstream)["connections"]

    await collect(make_provider(upstream).stream(make_request("echo", "one")))
    client = http_client()
    await collect(OpenAIProvider("another", upstream).stream(make_request("echo", "two")))

    assert http_client() is client
    assert upstream_stats(upstream)["connections"] - before == 1

    async def client_of_another_loop() -> httpx.AsyncClient:
        other = http_client()
        await close_http_client()
        return other

    assert await asyncio.to_thread(asyncio.run, client_of_another_loop()) is not client


async def test_a_connection_the_upstream_closed_while_idle_is_not_reused():
    """The upstream hangs up after each answer (as servers do with idle keep-alive
    connections): the next request must see it and open a new connection, not fail."""
    connections = []
    answered = asyncio.Event()

    async def answer_once_then_hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)
        await reader.readuntil(b"\r\n\r\n")
        body = b'data: {"choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": "stop"}]}\n\n'
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: %d\r\n\r\n" % len(body))
        writer.write(body)
        await writer.drain()
        writer.close()
        await writer.wait_closed()
        answered.set()

    server = await asyncio.start_server(answer_once_then_hang_up, "127.0.0.1", 0)
    base_url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1"
    provider = make_provider(base_url, retries=0)
    try:
        for _ in range(3):
            answered.clear()
            chunks = await collect(provider.stream(make_request("any")))
            assert chunks[0].delta == "hi" and chunks[-1].finish_reason == "stop"
            await answered.wait()
            await asyncio.sleep(0.05)  # the client's loop takes in the hang-up
    finally:
        server.close()
        await server.wait_closed()
    assert len(connections) == 3


async def test_a_reader_slower_than_the_upstream_still_gets_every_token_in_order(upstream):
    """While the reader waits, what arrives piles up to a limit, then the socket is
    no longer read until the reader catches up (flow control): nothing is lost."""
    deltas = []
    async for chunk in make_provider(upstream).stream(make_request("tokens-20000", max_tokens=20000)):
        if len(deltas) == 1:
            await asyncio.sleep(0.3)  # the upstream sends megabytes meanwhile
        deltas.append(chunk.delta)
    assert len(deltas) == 20001 and deltas[-1] == ""
    assert "".join(deltas) == "".join(default_reply(20000))


# --- the fake upstream itself ------------------------------------------------------------


def test_model_ids_combine_behaviours():
    behaviour = parse_behaviour("echo+tps-20+fail-first-2+status-429")

    assert (behaviour.echo, behaviour.tokens_per_second, behaviour.fail_first, behaviour.status) == (True, 20, 2, 429)
    assert parse_behaviour("gpt-4o-mini") == parse_behaviour("")
    assert "".join(split_words("  two  words ")) == "  two  words "


def test_fake_upstream_answers_in_openais_json_format(upstream):
    body = {"model": "echo", "messages": [{"role": "user", "content": "hi you"}], "max_tokens": 1}

    answer = httpx.post(f"{upstream}/chat/completions", json=body, trust_env=False).json()
    models = httpx.get(f"{upstream}/models", trust_env=False).json()

    assert answer["object"] == "chat.completion"
    assert answer["choices"][0]["message"] == {"role": "assistant", "content": "hi ", "refusal": None}
    assert answer["choices"][0]["finish_reason"] == "length"
    assert answer["usage"] == {"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 3}
    assert models["object"] == "list"
    assert "echo" in {model["id"] for model in models["data"]}


@pytest.mark.server
def test_fake_upstream_runs_as_a_separate_process_and_checks_the_key():
    with run_fake_upstream(separate_process=True, api_key="sk-bench") as base_url:
        refused = httpx.get(f"{base_url}/models", trust_env=False)
        allowed = httpx.get(f"{base_url}/models", headers={"Authorization": "Bearer sk-bench"}, trust_env=False)

    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "invalid_api_key"
    assert allowed.status_code == 200


# --- configuration -----------------------------------------------------------------------

PROVIDER_VARIABLES = [
    "LOCAL_MODEL_PATH",
    "LOCAL_MODEL_THREADS",
    "LOCAL_MODEL_CONCURRENCY",
    "LOCAL_MODEL_QUEUE",
    "LOCAL_MODEL_CONTEXT",
    "OPENAI_BASE_URL",
    "OPENAI_API_KEY",
    "EXTRA_PROVIDERS",
    "PROVIDER_CONNECT_TIMEOUT",
    "PROVIDER_READ_TIMEOUT",
    "PROVIDER_RETRIES",
]


def providers_from_env(monkeypatch: pytest.MonkeyPatch, **env: str) -> dict[str, dict[str, Any]]:
    """MODEL_PROVIDERS as the settings module computes it from ``env`` (run afresh, Django's copy untouched)."""
    for name in PROVIDER_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return runpy.run_path(str(settings.BASE_DIR / "agentsflow" / "settings.py"))["MODEL_PROVIDERS"]


def test_by_default_there_are_the_bundled_model_and_openai(monkeypatch):
    providers = providers_from_env(monkeypatch)

    assert providers == {
        "local": {"kind": "local", "model_path": "", "threads": 1, "concurrency": 1, "queue": 8, "context": 2048},
        "openai": {
            "kind": "openai",
            "base_url": "https://api.openai.com/v1",
            "api_key": "",
            "connect_timeout": 5.0,
            "read_timeout": 60.0,
            "retries": 2,
        },
    }


def test_extra_providers_are_openai_compatible_servers_named_by_their_variables(monkeypatch):
    providers = providers_from_env(
        monkeypatch,
        EXTRA_PROVIDERS="mistral, Ollama",
        MISTRAL_BASE_URL="https://api.mistral.ai/v1/",
        MISTRAL_API_KEY="mk-1",
        OLLAMA_BASE_URL="http://127.0.0.1:11434/v1",
        PROVIDER_READ_TIMEOUT="30",
        PROVIDER_RETRIES="0",
    )

    assert set(providers) == {"local", "openai", "mistral", "ollama"}
    assert providers["mistral"] == {
        "kind": "openai",
        "base_url": "https://api.mistral.ai/v1",
        "api_key": "mk-1",
        "connect_timeout": 5.0,
        "read_timeout": 30.0,
        "retries": 0,
    }
    assert providers["ollama"]["base_url"] == "http://127.0.0.1:11434/v1"
    assert providers["ollama"]["api_key"] == ""


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"EXTRA_PROVIDERS": "mistral"}, "MISTRAL_BASE_URL must be an http"),
        ({"EXTRA_PROVIDERS": "local", "LOCAL_BASE_URL": "http://x/v1"}, "'local' is already a provider"),
        ({"EXTRA_PROVIDERS": "lm-studio"}, "must be letters, digits and _"),
        ({"OPENAI_BASE_URL": "api.openai.com/v1"}, "OPENAI_BASE_URL must be an http"),
        ({"LOCAL_MODEL_PATH": "/nowhere/model.gguf"}, "LOCAL_MODEL_PATH must name a GGUF file"),
        ({"LOCAL_MODEL_CONCURRENCY": "0"}, "LOCAL_MODEL_CONCURRENCY must be >= 1"),
    ],
)
def test_a_bad_provider_setting_stops_start_up_naming_the_variable(monkeypatch, env, message):
    with pytest.raises(ImproperlyConfigured, match=message):
        providers_from_env(monkeypatch, **env)


def test_get_provider_builds_each_configured_provider_once():
    configured = {
        "local": {"kind": "local", "model_path": "", "threads": 1, "concurrency": 2, "queue": 3, "context": 1024},
        "openai": {
            "kind": "openai",
            "base_url": "https://api.openai.com/v1",
            "api_key": "sk-x",
            "connect_timeout": 5.0,
            "read_timeout": 60.0,
            "retries": 2,
        },
    }
    with override_settings(MODEL_PROVIDERS=configured):
        local, remote = get_provider("local"), get_provider("openai")

        assert isinstance(local, LocalProvider)
        assert (local.name, local.concurrency, local.queue_size) == ("local", 2, 3)
        assert isinstance(remote, OpenAIProvider)
        assert (remote.name, remote.base_url, remote.retries) == ("openai", "https://api.openai.com/v1", 2)
        assert get_provider("local") is local
        assert get_provider("openai") is remote


def test_an_unknown_provider_is_unavailable_and_names_the_configured_ones():
    configured = {"zeta": {"kind": "local"}, "alpha": {"kind": "local"}}
    with override_settings(MODEL_PROVIDERS=configured), pytest.raises(ProviderUnavailable) as caught:
        get_provider("nope")

    assert str(caught.value) == "no model provider is called 'nope' (configured: alpha, zeta)"
    assert caught.value.status == 503


async def test_a_provider_from_settings_streams(upstream):
    configured = {
        "fake": {
            "kind": "openai",
            "base_url": upstream,
            "api_key": "",
            "connect_timeout": 1.0,
            "read_timeout": 2.0,
            "retries": 0,
        }
    }
    with override_settings(MODEL_PROVIDERS=configured):
        chunks = await collect(get_provider("fake").stream(make_request("echo", "via settings")))

    assert "".join(chunk.delta for chunk in chunks) == "via settings"
