"""A fast OpenAI-compatible chat server on loopback, for the tests and the load benchmarks.

It speaks OpenAI's wire format (``GET /v1/models``, ``POST /v1/chat/completions``
streamed as server-sent events with the usage chunk and ``data: [DONE]``, or as
one JSON body) over plain asyncio with HTTP/1.1 keep-alive, so one process keeps
up with the platform under load. It is a raw asyncio server rather than an ASGI
app because the tests need what ASGI hides: dropping a connection mid-body, and
noticing at once that a client hung up.

One server serves every test: the requested model id picks the behaviour. Join
several with ``+``, e.g. ``echo+tps-20``; an id it does not know (``gpt-4o``)
gets the default reply.

=====================  ==============================================================
``echo``               reply with the last user message, split into word tokens
``tokens-N``           the default reply has N tokens (instead of ``--tokens``)
``tps-N``              send N tokens a second (instead of ``--tokens-per-second``)
``ttft-MS``            wait MS ms between the headers and the first token
``no-usage``           leave out the usage chunk even when it is asked for
``ignore-stream``      answer with one JSON body even when asked to stream
``fail-before``        answer 503 (an OpenAI error body) every time
``fail-first-N``       answer 503 to the first N attempts of the same request, then
                       succeed; attempts are keyed by the ``X-Fake-Key`` header, or
                       else by the request body (a retry sends the same body)
``status-S``           answer S instead of 503 for ``fail-before``/``fail-first-N``
``fail-mid``           send three content chunks, then drop the connection
``garbage``            send two content chunks, then a ``data:`` line that is not JSON
``hang``               send nothing at all until the client hangs up
``slow-first-byte-MS`` wait MS ms before sending anything (the status line included)
``bad-request``        answer 400 with an OpenAI error body
``stamp``              each streamed token is the wall-clock time it was sent, in
                       nanoseconds, and a space (the benchmarks' event latency)
=====================  ==============================================================

``GET /_stats`` reports what the server saw, so tests can prove, for example,
that a cancelled request was closed upstream: ``connections`` (TCP connections
that carried chat completion requests), ``requests`` (chat completion requests)
and ``by_model`` (the same per model id), ``unauthorized`` (refused for a missing
or wrong key), ``open_streams`` (chat completion requests being answered now),
``completed`` (answered to the end) and ``disconnects`` (the client hung up before
the answer was complete). Read it before and after, and compare.

Run it with ``python -m bench.fake_upstream --port 8100``; in tests use
``run_fake_upstream()``. It does not support pipelined requests (no HTTP client
in this project sends them): data from a client in the middle of an answer
counts as a hang-up.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import re
import select
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any

import httpx
import orjson

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_REPLY = "The quick brown fox jumps over the lazy dog while a patient cat watches from the warm windowsill"
MAX_HEADER_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class Options:
    """Server-wide defaults; a model id can override the last three per request."""

    api_key: str = ""
    first_token_ms: int = 0
    tokens_per_second: float = 0.0  # 0 = as fast as possible
    tokens: int = 16


@dataclass(slots=True)
class Behaviour:
    echo: bool = False
    tokens: int | None = None
    tokens_per_second: float | None = None
    ttft_ms: int | None = None
    usage: bool = True
    ignore_stream: bool = False
    fail_before: bool = False
    fail_first: int = 0
    status: int = 503
    fail_mid: bool = False
    garbage: bool = False
    hang: bool = False
    first_byte_ms: int = 0
    bad_request: bool = False
    stamp: bool = False


_PART = re.compile(r"([a-z-]+?)(?:-(\d+))?")


def parse_behaviour(model: str) -> Behaviour:
    """Read the behaviour out of a model id like ``echo+tps-20``; unknown parts are ignored."""
    behaviour = Behaviour()
    for part in model.lower().split("+"):
        match = _PART.fullmatch(part)
        if match is None:
            continue
        name, number = match[1], int(match[2]) if match[2] else None
        match name, number:
            case "echo", None:
                behaviour.echo = True
            case "tokens", int():
                behaviour.tokens = number
            case "tps", int():
                behaviour.tokens_per_second = float(number)
            case "ttft", int():
                behaviour.ttft_ms = number
            case "no-usage", None:
                behaviour.usage = False
            case "ignore-stream", None:
                behaviour.ignore_stream = True
            case "fail-before", None:
                behaviour.fail_before = True
            case "fail-first", int():
                behaviour.fail_first = number
            case "status", int():
                behaviour.status = number
            case "fail-mid", None:
                behaviour.fail_mid = True
            case "garbage", None:
                behaviour.garbage = True
            case "hang", None:
                behaviour.hang = True
            case "slow-first-byte", int():
                behaviour.first_byte_ms = number
            case "bad-request", None:
                behaviour.bad_request = True
            case "stamp", None:
                behaviour.stamp = True
    return behaviour


def split_words(text: str) -> list[str]:
    """Word tokens that join back into exactly ``text``."""
    return re.findall(r"\S+\s*|\s+", text)


def default_reply(count: int) -> list[str]:
    vocabulary = DEFAULT_REPLY.split(" ")
    words = [vocabulary[i % len(vocabulary)] + " " for i in range(count)]
    if words:
        words[-1] = words[-1].rstrip()
    return words


@dataclass(slots=True)
class Stats:
    connections: int = 0
    requests: int = 0
    by_model: Counter[str] = field(default_factory=Counter)
    unauthorized: int = 0
    open_streams: int = 0
    completed: int = 0
    disconnects: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "connections": self.connections,
            "requests": self.requests,
            "by_model": dict(self.by_model),
            "unauthorized": self.unauthorized,
            "open_streams": self.open_streams,
            "completed": self.completed,
            "disconnects": self.disconnects,
        }


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    keep_alive: bool


class ClientGoneError(Exception):
    """The client hung up before the answer was complete."""


class Connection:
    """One client connection: writes HTTP/1.1 and notices when the client hangs up."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self._hangup: asyncio.Future[bytes] | None = None
        self._read_ahead = b""  # what the hang-up watch read of the next request
        self.carried_chat = False

    async def read_request(self) -> Request | None:
        """The next request, or None when the client closed the connection between requests."""
        ahead, self._read_ahead = self._read_ahead, b""
        try:
            head = ahead + await self.reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            if (ahead + exc.partial).strip():
                raise ValueError("truncated request head") from None
            return None
        request_line, *header_lines = head.decode("latin-1").split("\r\n")
        method, target, version = request_line.split(" ", 2)
        headers = {}
        for line in header_lines:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        if "chunked" in headers.get("transfer-encoding", ""):
            raise ValueError("chunked request bodies are not supported")
        length = int(headers.get("content-length") or 0)
        body = await self.reader.readexactly(length) if length else b""
        keep_alive = version == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
        return Request(method, target.split("?", 1)[0], headers, body, keep_alive)

    def head(self, status: int, headers: list[tuple[str, str]], *, keep_alive: bool) -> None:
        lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}"]
        lines += [f"{name}: {value}" for name, value in headers]
        lines.append("connection: keep-alive" if keep_alive else "connection: close")
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))

    async def json(self, status: int, body: Any, *, keep_alive: bool) -> None:
        data = orjson.dumps(body)
        headers = [("content-type", "application/json"), ("content-length", str(len(data)))]
        self.head(status, headers, keep_alive=keep_alive)
        self.writer.write(data)
        await self.drain()

    def chunk(self, data: bytes) -> None:
        """One piece of a chunked body (an empty one ends the body)."""
        self.writer.write(b"%x\r\n%s\r\n" % (len(data), data))

    async def drain(self) -> None:
        if self.writer.transport.is_closing():
            raise ClientGoneError
        try:
            await self.writer.drain()
        except ConnectionError:
            raise ClientGoneError from None

    async def pause(self, seconds: float | None) -> None:
        """Wait ``seconds`` (None: for ever), raising ClientGoneError as soon as the client hangs up."""
        self._watch_hangup()
        done, _ = await asyncio.wait({self._hangup}, timeout=seconds)
        if done:
            raise ClientGoneError

    async def pace(self, until: float) -> None:
        """Wait until ``until`` (loop time) between two tokens; a hang-up meanwhile is
        seen at the next token. A plain sleep: ``pause`` costs a task wait a token,
        which at thousands of tokens a second took CPU from the platform measured."""
        self._watch_hangup()
        await asyncio.sleep(until - asyncio.get_running_loop().time())
        if self._hangup.done():
            raise ClientGoneError

    def _watch_hangup(self) -> None:
        if self._hangup is None:
            self._hangup = asyncio.ensure_future(self.reader.read(1))
            self._hangup.add_done_callback(_retrieve)

    async def answered(self) -> None:
        """Stop watching for a hang-up once an answer is complete.

        The watch is a pending one-byte read: it must be over before the next
        request is read (a StreamReader takes one reader at a time), and the
        byte it may have taken from a next request on a kept-alive connection
        belongs to that request.
        """
        hangup, self._hangup = self._hangup, None
        if hangup is None:
            return
        if not hangup.done():
            hangup.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await hangup
        if not hangup.cancelled() and hangup.exception() is None:
            self._read_ahead = hangup.result()


def _retrieve(future: asyncio.Future[bytes]) -> None:
    # A reset connection fails the pending read; nobody else looks at that error.
    if not future.cancelled():
        future.exception()


def _error_body(message: str, kind: str, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


class FakeUpstream:
    """The server's state and request handling; ``start()`` serves it on a socket."""

    def __init__(self, options: Options) -> None:
        self.options = options
        self.stats = Stats()
        self._attempts: Counter[str] = Counter()
        self._connections: dict[asyncio.Task[None], asyncio.StreamWriter] = {}

    async def start(self, sock: socket.socket) -> asyncio.Server:
        return await asyncio.start_server(self._serve_connection, sock=sock, limit=MAX_HEADER_BYTES)

    async def stop(self, server: asyncio.Server) -> None:
        """Stop listening and drop every open connection (Python 3.11's server does not)."""
        server.close()
        # Aborting ends each connection's task through its reads (cancelling it would make asyncio log noise).
        for writer in self._connections.values():
            writer.transport.abort()
        if self._connections:
            await asyncio.wait(self._connections, timeout=5)
        await server.wait_closed()

    async def _serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections[task] = writer
        # asyncio sets TCP_NODELAY only on sockets it created; without it, Nagle's algorithm and
        # delayed ACKs hold back each small write by 40 ms.
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        connection = Connection(reader, writer)
        try:
            while (request := await connection.read_request()) is not None:
                keep_alive = await self._dispatch(request, connection)
                await connection.answered()
                if not keep_alive:
                    break
        except (ValueError, asyncio.LimitOverrunError, asyncio.IncompleteReadError, ClientGoneError, ConnectionError):
            pass
        finally:
            del self._connections[task]
            writer.close()

    async def _dispatch(self, request: Request, connection: Connection) -> bool:
        """Answer one request; return whether the connection stays open."""
        keep_alive = request.keep_alive
        route = (request.method, request.path)
        if route == ("GET", "/_stats"):
            await connection.json(200, self.stats.as_dict(), keep_alive=keep_alive)
            return keep_alive
        if request.path not in {"/v1/models", "/v1/chat/completions"}:
            body = _error_body(f"Invalid URL ({request.method} {request.path})", "invalid_request_error")
            await connection.json(404, body, keep_alive=keep_alive)
            return keep_alive
        if self.options.api_key and request.headers.get("authorization") != f"Bearer {self.options.api_key}":
            self.stats.unauthorized += 1
            body = _error_body("Incorrect API key provided.", "invalid_request_error", "invalid_api_key")
            await connection.json(401, body, keep_alive=keep_alive)
            return keep_alive
        if route == ("GET", "/v1/models"):
            await connection.json(200, self._models(), keep_alive=keep_alive)
            return keep_alive
        if route == ("POST", "/v1/chat/completions"):
            return await self._chat(request, connection)
        body = _error_body(f"Method {request.method} not allowed for {request.path}", "invalid_request_error")
        await connection.json(405, body, keep_alive=keep_alive)
        return keep_alive

    def _models(self) -> dict[str, Any]:
        ids = ["default", "echo", "fail-before", "fail-first-2", "fail-mid", "garbage", "hang", "bad-request"]
        ids += ["slow-first-byte-2000", "echo+no-usage", "echo+ignore-stream", "tps-20"]
        return {
            "object": "list",
            "data": [{"id": ident, "object": "model", "created": 0, "owned_by": "fake-upstream"} for ident in ids],
        }

    async def _chat(self, request: Request, connection: Connection) -> bool:
        keep_alive = request.keep_alive
        try:
            payload = orjson.loads(request.body)
            model, messages = str(payload["model"]), list(payload["messages"])
            if not all(isinstance(message, dict) for message in messages):
                raise TypeError("messages must be objects")
        except (orjson.JSONDecodeError, KeyError, TypeError):
            body = _error_body("The body must be JSON with 'model' and 'messages'.", "invalid_request_error")
            await connection.json(400, body, keep_alive=keep_alive)
            return keep_alive
        self.stats.requests += 1
        self.stats.by_model[model] += 1
        if not connection.carried_chat:
            connection.carried_chat = True
            self.stats.connections += 1
        behaviour = parse_behaviour(model)
        if behaviour.bad_request:
            message = "Invalid value for 'messages': the fake upstream was asked to refuse this request."
            body = _error_body(message, "invalid_request_error", "invalid_value")
            await connection.json(400, body, keep_alive=keep_alive)
            return keep_alive
        if behaviour.fail_before or (behaviour.fail_first and self._attempt(request) <= behaviour.fail_first):
            message = f"The fake upstream answers {behaviour.status} to {model!r} (as asked)."
            await connection.json(behaviour.status, _error_body(message, "server_error"), keep_alive=keep_alive)
            return keep_alive

        self.stats.open_streams += 1
        try:
            if behaviour.hang:
                await connection.pause(None)
            if behaviour.first_byte_ms:
                await connection.pause(behaviour.first_byte_ms / 1000)
            words, finish = self._reply(payload, messages, behaviour)
            usage = {
                "prompt_tokens": sum(len(str(m.get("content", "")).split()) for m in messages),
                "completion_tokens": len(words),
                "total_tokens": 0,
            }
            usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
            if payload.get("stream") and not behaviour.ignore_stream:
                wants_usage = bool((payload.get("stream_options") or {}).get("include_usage"))
                await self._stream(connection, model, words, finish, usage if wants_usage else None, behaviour)
            else:
                await connection.json(200, self._completion(model, words, finish, usage), keep_alive=keep_alive)
        except ClientGoneError:
            self.stats.disconnects += 1
            return False
        finally:
            self.stats.open_streams -= 1
        if behaviour.fail_mid:
            return False
        self.stats.completed += 1
        return keep_alive

    def _attempt(self, request: Request) -> int:
        key = request.headers.get("x-fake-key") or hashlib.sha256(request.body).hexdigest()
        self._attempts[key] += 1
        return self._attempts[key]

    def _reply(self, payload: dict[str, Any], messages: list[Any], behaviour: Behaviour) -> tuple[list[str], str]:
        if behaviour.echo:
            last_user = next((m for m in reversed(messages) if m.get("role") == "user"), {})
            words = split_words(str(last_user.get("content", "")))
        else:
            words = default_reply(behaviour.tokens if behaviour.tokens is not None else self.options.tokens)
        limit = payload.get("max_completion_tokens") or payload.get("max_tokens")
        if isinstance(limit, int) and 0 < limit < len(words):
            return words[:limit], "length"
        return words, "stop"

    def _completion(self, model: str, words: list[str], finish: str, usage: dict[str, int]) -> dict[str, Any]:
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "".join(words), "refusal": None},
                    "logprobs": None,
                    "finish_reason": finish,
                }
            ],
            "usage": usage,
        }

    async def _stream(
        self,
        connection: Connection,
        model: str,
        words: list[str],
        finish: str,
        usage: dict[str, int] | None,
        behaviour: Behaviour,
    ) -> None:
        ident, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())

        def event(choices: list[dict[str, Any]], **extra: Any) -> bytes:
            body = {"id": ident, "object": "chat.completion.chunk", "created": created, "model": model}
            body["choices"] = choices
            if usage is not None:
                body["usage"] = None  # as OpenAI does when include_usage is on
            body.update(extra)
            return b"data: " + orjson.dumps(body) + b"\n\n"

        def delta(content: dict[str, str], finish_reason: str | None = None) -> bytes:
            return event([{"index": 0, "delta": content, "logprobs": None, "finish_reason": finish_reason}])

        tps = self.options.tokens_per_second if behaviour.tokens_per_second is None else behaviour.tokens_per_second
        ttft_ms = self.options.first_token_ms if behaviour.ttft_ms is None else behaviour.ttft_ms
        gap = 1 / tps if tps > 0 else 0.0
        headers = [("content-type", "text/event-stream"), ("cache-control", "no-cache")]
        connection.head(200, [*headers, ("transfer-encoding", "chunked")], keep_alive=True)
        connection.chunk(delta({"role": "assistant", "content": ""}))
        if ttft_ms:
            await connection.drain()
            await connection.pause(ttft_ms / 1000)
        # Token i goes out at first + i * gap: the offered rate is the rate asked for,
        # not a little under it (each sleep overshoots, and writing takes time too).
        first = asyncio.get_running_loop().time()
        for index, word in enumerate(words):
            if index and gap:
                await connection.pace(first + index * gap)
            if behaviour.fail_mid and index == 3:
                # A graceful close mid-body: the client reads the chunks sent so far, then an incomplete body.
                await connection.drain()
                connection.writer.close()
                return
            if behaviour.garbage and index == 2:
                connection.chunk(b"data: {this is not JSON\n\n")
            if behaviour.stamp:
                word = f"{time.time_ns()} "  # read by bench.ws_client: receive time minus this
            connection.chunk(delta({"content": word}))
            if gap:
                await connection.drain()
        connection.chunk(delta({}, finish))
        if usage is not None and behaviour.usage:
            connection.chunk(event([], usage=usage))
        connection.chunk(b"data: [DONE]\n\n")
        connection.chunk(b"")
        await connection.drain()


def upstream_stats(base_url: str) -> dict[str, Any]:
    """What the fake upstream at ``base_url`` (``http://host:port/v1``) has seen so far."""
    response = httpx.get(base_url.removesuffix("/v1") + "/_stats", timeout=5, trust_env=False)
    response.raise_for_status()
    return response.json()


@contextlib.contextmanager
def run_fake_upstream(
    *,
    separate_process: bool = False,
    host: str = "127.0.0.1",
    api_key: str = "",
    first_token_ms: int = 0,
    tokens_per_second: float = 0.0,
    tokens: int = 16,
) -> Iterator[str]:
    """Serve a fake upstream on a free port for the ``with`` block; yields its base URL (``.../v1``).

    In-process (the default) it runs on an event loop of its own in a thread, so
    it outlives the tests' event loops; ``separate_process=True`` runs
    ``python -m bench.fake_upstream`` instead (for benchmarks, so the server does
    not share a GIL with what is measured).
    """
    options = Options(api_key, first_token_ms, tokens_per_second, tokens)
    runner = _run_subprocess if separate_process else _run_in_thread
    with runner(options, host) as base_url:
        yield base_url


@contextlib.contextmanager
def _run_in_thread(options: Options, host: str) -> Iterator[str]:
    sock = socket.create_server((host, 0), backlog=1024)
    base_url = f"http://{host}:{sock.getsockname()[1]}/v1"
    app = FakeUpstream(options)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="fake-upstream", daemon=True)
    thread.start()
    try:
        server = asyncio.run_coroutine_threadsafe(app.start(sock), loop).result(timeout=5)
        try:
            yield base_url
        finally:
            asyncio.run_coroutine_threadsafe(app.stop(server), loop).result(timeout=5)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=5)
        loop.close()
        sock.close()


@contextlib.contextmanager
def _run_subprocess(options: Options, host: str) -> Iterator[str]:
    command = [sys.executable, "-m", "bench.fake_upstream", "--host", host, "--port", "0"]
    command += ["--first-token-ms", str(options.first_token_ms), "--tokens", str(options.tokens)]
    command += ["--tokens-per-second", str(options.tokens_per_second)]
    if options.api_key:
        command += ["--api-key", options.api_key]
    process = subprocess.Popen(command, cwd=PROJECT_ROOT, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    try:
        # The server prints its base URL once it listens; never wait for ever on a broken start.
        readable, _, _ = select.select([process.stdout], [], [], 10)
        line = process.stdout.readline() if readable else ""
        if not line.startswith("http://"):
            raise RuntimeError(f"the fake upstream did not start (exit code {process.poll()})")
        yield line.strip()
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        process.stdout.close()


async def _serve_forever(options: Options, sock: socket.socket) -> None:
    server = await FakeUpstream(options).start(sock)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.fake_upstream", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8100, help="0 picks a free port")
    parser.add_argument("--first-token-ms", type=int, default=0, help="delay before the first token")
    parser.add_argument("--tokens-per-second", type=float, default=0.0, help="0 sends as fast as possible")
    parser.add_argument("--tokens", type=int, default=16, help="tokens in the default reply")
    parser.add_argument("--api-key", default="", help="require Authorization: Bearer <key>")
    args = parser.parse_args(argv)
    options = Options(
        api_key=args.api_key,
        first_token_ms=args.first_token_ms,
        tokens_per_second=args.tokens_per_second,
        tokens=args.tokens,
    )
    sock = socket.create_server((args.host, args.port), backlog=2048)
    # The first line on stdout is the base URL: run_fake_upstream() reads it to learn the port.
    print(f"http://{args.host}:{sock.getsockname()[1]}/v1", flush=True)
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:
        loop_factory = None
    with contextlib.suppress(KeyboardInterrupt), asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(_serve_forever(options, sock))


if __name__ == "__main__":
    main()
