"""Time to first token and tokens per second of the local provider, measured through its public stream().

    python -m bench.local_model [--threads 2] [--tokens 128] [--runs 3]

The first (two-token) generation loads the model and is reported separately.
Each run numbers its prompt, so it is not already in the model's cache (only
the chat template's system prompt is, as in real use). Tokens per second counts
the tokens after the first, over the time after it.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from chat.providers.base import ChatMessage, CompletionRequest
from chat.providers.local import LocalProvider


async def measure(provider: LocalProvider, request: CompletionRequest) -> tuple[float, float, int]:
    """(seconds to the first delta, tokens per second after it, completion tokens)."""
    started = time.perf_counter()
    first = None
    tokens = 0
    async for chunk in provider.stream(request):
        if first is None and chunk.delta:
            first = time.perf_counter()
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    ended = time.perf_counter()
    assert first is not None, "the model answered nothing"
    return first - started, (tokens - 1) / (ended - first), tokens


async def run(threads: int, max_tokens: int, runs: int, prompt: str) -> None:
    provider = LocalProvider("local", n_threads=threads)
    started = time.perf_counter()
    await measure(provider, CompletionRequest("smollm2", (ChatMessage("user", "Hi."),), 2, 0.7))
    print(f"load + first generation: {time.perf_counter() - started:.2f} s")
    ttfts, rates = [], []
    for number in range(1, runs + 1):
        messages = (ChatMessage("user", f"{number}. {prompt}"),)
        ttft, rate, tokens = await measure(provider, CompletionRequest("smollm2", messages, max_tokens, 0.7))
        ttfts.append(ttft)
        rates.append(rate)
        print(f"run {number}: first token {ttft * 1000:.0f} ms, {rate:.0f} tokens/s over {tokens} tokens")
    print(f"median: first token {statistics.median(ttfts) * 1000:.0f} ms, {statistics.median(rates):.0f} tokens/s")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.local_model", description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="LOCAL_MODEL_THREADS")
    parser.add_argument("--tokens", type=int, default=128, help="max_tokens of each run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--prompt", default="Write a short poem about the sea.")
    args = parser.parse_args()
    asyncio.run(run(args.threads, args.tokens, args.runs, args.prompt))


if __name__ == "__main__":
    main()
