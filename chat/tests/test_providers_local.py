"""The local provider with the real bundled SmolLM2-135M model (small: a load and a few tokens each)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
from llama_cpp import Llama

from chat.providers.base import (
    ChatMessage,
    CompletionRequest,
    ProviderFailed,
    ProviderUnavailable,
    estimate_tokens,
)
from chat.providers.local import LocalProvider, _StopScanner, bundled_model_path

# One thread: llama.cpp's threads spin-wait for each other, which a busy shared machine (CI) punishes.
TEST_THREADS = 1


@pytest.fixture(scope="module")
def local() -> Iterator[LocalProvider]:
    """One provider (one model load) for the module: one generation at a time, one waiting."""
    yield LocalProvider("local", n_ctx=2048, n_threads=TEST_THREADS, concurrency=1, queue_size=1)


@pytest.fixture(scope="module")
def vocabulary() -> Llama:
    """The bundled model's tokenizer on its own, to check the provider's counts independently."""
    return Llama(model_path=str(bundled_model_path()), vocab_only=True, verbose=False)


def make_request(text: str, max_tokens: int, **fields) -> CompletionRequest:
    return CompletionRequest(
        model="smollm2", messages=(ChatMessage("user", text),), max_tokens=max_tokens, temperature=0.0, **fields
    )


async def eventually_idle(provider: LocalProvider, *, within: float) -> float:
    started = time.monotonic()
    while provider.in_flight:
        if time.monotonic() - started > within:
            raise AssertionError(f"{provider.in_flight} generations still hold the model after {within} s")
        await asyncio.sleep(0.01)
    return time.monotonic() - started


async def test_the_bundled_model_streams_deltas_then_exact_usage(local, vocabulary):
    chunks = [chunk async for chunk in local.stream(make_request("Write a long story about a dragon.", 8))]

    deltas, final = chunks[:-1], chunks[-1]
    assert deltas and all(chunk.delta and chunk.finish_reason is None for chunk in deltas)
    assert "".join(chunk.delta for chunk in deltas).strip()
    assert final.finish_reason == "length"
    assert final.usage.completion_tokens == 8
    # SmolLM2's own chat template, default system prompt included.
    prompt = (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nWrite a long story about a dragon.<|im_end|>\n<|im_start|>assistant\n"
    )
    assert final.usage.prompt_tokens == len(vocabulary.tokenize(prompt.encode(), add_bos=False, special=True))


async def test_closing_the_stream_stops_the_thread_within_a_second_and_frees_the_slot(local):
    stream = local.stream(make_request("Write a long story about a dragon.", 1500))
    await anext(stream)
    await anext(stream)
    assert local.in_flight == 1

    await stream.aclose()

    assert await eventually_idle(local, within=1.0) < 1.0
    started = time.monotonic()
    chunks = [chunk async for chunk in local.stream(make_request("Say hi.", 2))]
    assert chunks[-1].usage.completion_tokens == 2
    assert time.monotonic() - started < 2.0  # it did not wait behind 1,500 tokens


async def test_cancelling_the_consuming_task_stops_the_thread_within_a_second(local):
    first = asyncio.Event()

    async def consume() -> None:
        async for _ in local.stream(make_request("Write a long story about a dragon.", 1500)):
            first.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first.wait(), 10)

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    await eventually_idle(local, within=1.0)


async def test_beyond_the_wait_queue_a_request_is_refused_at_once(local):
    running = local.stream(make_request("Write a long story about a dragon.", 1500))
    await anext(running)  # its thread now fills the buffer and waits, holding the one slot
    waiting = local.stream(make_request("Say hi.", 2))
    waiting_task = asyncio.create_task(anext(waiting))
    refused = local.stream(make_request("Say hi.", 2))
    try:
        while local.in_flight < 2:
            await asyncio.sleep(0.01)
        started = time.monotonic()

        with pytest.raises(ProviderUnavailable, match="local model busy"):
            await anext(refused)

        assert time.monotonic() - started < 0.1
        assert not waiting_task.done()
    finally:
        waiting_task.cancel()
        await asyncio.gather(waiting_task, return_exceptions=True)
        await running.aclose()
    await eventually_idle(local, within=1.0)


async def test_a_prompt_longer_than_the_context_fails(local):
    with pytest.raises(ProviderFailed, match="the model's context 2048"):
        await anext(local.stream(make_request("word " * 2100, 8)))
    await eventually_idle(local, within=1.0)


async def test_a_model_that_cannot_be_loaded_is_unavailable(tmp_path):
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"not a model")

    with pytest.raises(ProviderUnavailable, match="cannot load the model"):
        await anext(LocalProvider("broken", model_path=broken, n_threads=TEST_THREADS).stream(make_request("hi", 2)))


async def test_count_tokens_uses_the_models_tokenizer_once_loaded(local, vocabulary):
    text = "Tokenizers split text into pieces."
    assert LocalProvider("fresh").count_tokens(text) == estimate_tokens(text)

    [_ async for _ in local.stream(make_request("Say hi.", 1))]  # loaded by now, whatever ran before

    assert local.count_tokens(text) == len(vocabulary.tokenize(text.encode(), add_bos=False))
    assert local.count_tokens(text) != estimate_tokens(text)


def test_stop_sequences_cut_the_answer_and_hold_back_their_beginnings():
    scanner = _StopScanner(["END", "\n\n"])

    assert scanner.feed("Hello E") == ("Hello ", False)  # "E" may begin "END"
    assert scanner.feed("X") == ("EX", False)
    assert scanner.feed(" done\n") == (" done", False)
    assert scanner.feed("\nmore") == ("", True)


def test_without_a_stop_sequence_held_text_is_flushed():
    scanner = _StopScanner(["END"])

    assert scanner.feed("The EN") == ("The ", False)
    assert scanner.flush() == "EN"
