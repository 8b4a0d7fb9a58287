"""Any OpenAI-compatible chat server: OpenAI, Mistral, Ollama, vLLM, llama.cpp server, LM Studio.

Streams ``POST {base_url}/chat/completions`` as server-sent events over one
connection pool per event loop (``http1``). Failures before the first byte of
the answer (refused or reset connections, 429 and 5xx answers) are retried with
a short backoff and end as ``ProviderUnavailable``; once the answer has begun
nothing is retried, so a user never sees text twice.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import AsyncIterator, Iterator
from http import HTTPStatus
from typing import Any

import orjson

from chat.providers import http1
from chat.providers.base import (
    Chunk,
    CompletionRequest,
    FinishReason,
    ProviderFailed,
    ProviderTimeout,
    ProviderUnavailable,
    Usage,
    estimate_prompt_tokens,
    estimate_tokens,
)

# Worth another try: the upstream is overloaded or restarting, and said so before answering.
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
MAX_ERROR_BODY_BYTES = 16 * 1024
_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, http1.Pool] = weakref.WeakKeyDictionary()
_clients_lock = threading.Lock()


def http_client() -> http1.Pool:
    """The connection pool of the running event loop, created on first use.

    Connections belong to the loop that opened them, so each loop has its own
    client: one per process under the ASGI server, one per test loop in tests.
    """
    loop = asyncio.get_running_loop()
    with _clients_lock:
        client = _clients.get(loop)
        if client is None or client.is_closed:
            # A client holds its loop alive through its connections; forget those of closed loops.
            for stale in [other for other in _clients if other.is_closed()]:
                del _clients[stale]
            client = _clients[loop] = http1.Pool(max_connections=1000, max_idle=200, idle_expiry=30)
    return client


async def close_http_client() -> None:
    """Close the running loop's pool and its idle connections (at shutdown, or when a test's loop ends)."""
    with _clients_lock:
        client = _clients.pop(asyncio.get_running_loop(), None)
    if client is not None:
        await client.aclose()


def backoff_delay(retry: int) -> float:
    """Seconds to wait before retry number ``retry`` (0-based): 0.1, 0.3, 0.9, … at most 2."""
    return min(0.1 * 3**retry, 2.0)


class OpenAIProvider:
    """A chat server that speaks OpenAI's ``/chat/completions`` with streaming."""

    def __init__(
        self,
        name: str,
        base_url: str,
        api_key: str = "",
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
        retries: int = 2,
    ) -> None:
        self.name = name
        self.base_url = base_url.rstrip("/")
        self.retries = retries
        self._url = f"{self.base_url}/chat/completions"
        self._headers = {"content-type": "application/json", "accept": "text/event-stream"}
        if api_key:
            self._headers["authorization"] = f"Bearer {api_key}"
        self._connect_timeout = connect_timeout
        # It bounds each wait for bytes: the time to first token, and every gap after it.
        self._read_timeout = read_timeout

    def __repr__(self) -> str:
        return f"<OpenAIProvider {self.name} {self.base_url}>"

    def count_tokens(self, text: str) -> int:
        return estimate_tokens(text)

    async def stream(self, request: CompletionRequest) -> AsyncIterator[Chunk]:
        """Yield the answer's deltas, then one chunk with the finish reason and usage.

        Raises ProviderUnavailable (unreachable, or 429/5xx after the retries),
        ProviderTimeout (no byte within the read timeout) or ProviderFailed (any
        other error answer, or a stream that breaks off). Closing the iterator
        closes the HTTP response at once, so the upstream sees the disconnect.
        """
        response = await self._open(request)
        try:
            if response.headers.get("content-type", "").startswith("application/json"):
                # Some servers ignore ``stream: true`` and answer in one piece.
                for chunk in await self._read_whole(response, request):
                    yield chunk
                return
            answer = StreamedAnswer(self.name, request)
            while True:
                piece = await self._receive(response)  # b"" once the body has ended
                for chunk in answer.feed(piece) if piece else answer.end():
                    yield chunk
                if not piece:
                    return
        finally:
            await response.aclose()

    def _payload(self, request: CompletionRequest) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "model": request.model,
            "messages": [{"role": message.role, "content": message.content} for message in request.messages],
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if request.stop:
            payload["stop"] = list(request.stop)
        return payload

    async def _open(self, request: CompletionRequest) -> http1.Response:
        """Send the request, retrying failures before the first byte; return a 200 response, body unread."""
        body = orjson.dumps(self._payload(request))
        retry = 0
        while True:
            try:
                response = await http_client().request(
                    b"POST", self._url, self._headers, body,
                    connect_timeout=self._connect_timeout, read_timeout=self._read_timeout,
                )  # fmt: skip
            except http1.ReadTimeout as exc:
                # The upstream took the request and is still working on it: asking again would only add load.
                raise ProviderTimeout(f"{self.name}: no answer within {self._read_timeout} s") from exc
            except http1.TransportError as exc:
                failure: ProviderUnavailable | ProviderFailed = ProviderUnavailable(
                    f"{self.name}: cannot reach {self.base_url}: {_describe(exc)}"
                )
                failure.__cause__ = exc
            else:
                if response.status_code == 200:
                    return response
                failure = await self._error_answer(response)
                if isinstance(failure, ProviderFailed):
                    raise failure
            if retry >= self.retries:
                raise failure
            await asyncio.sleep(backoff_delay(retry))
            retry += 1

    async def _error_answer(self, response: http1.Response) -> ProviderUnavailable | ProviderFailed:
        """The error an upstream's non-200 answer stands for, with the upstream's own message."""
        raw = b""
        try:
            raw = await response.read(limit=MAX_ERROR_BODY_BYTES)
        except http1.TransportError:
            pass  # the status alone says enough
        finally:
            await response.aclose()
        message = f"{self.name}: upstream answered {response.status_code}: {_error_message(raw, response)}"
        if response.status_code in RETRY_STATUSES:
            return ProviderUnavailable(message)
        return ProviderFailed(message)

    async def _receive(self, response: http1.Response) -> bytes:
        try:
            return await response.receive()
        except http1.ReadTimeout as exc:
            raise ProviderTimeout(f"{self.name}: the stream stalled for {self._read_timeout} s") from exc
        except http1.TransportError as exc:
            raise ProviderFailed(f"{self.name}: the stream broke off: {_describe(exc)}") from exc

    async def _read_whole(self, response: http1.Response, request: CompletionRequest) -> list[Chunk]:
        try:
            body = orjson.loads(await response.read())
            choice = body["choices"][0]
            content = (choice.get("message") or {}).get("content") or ""
            finish = _finish_reason(choice.get("finish_reason") or "stop")
        except http1.ReadTimeout as exc:
            raise ProviderTimeout(f"{self.name}: the answer stalled for {self._read_timeout} s") from exc
        except http1.TransportError as exc:
            raise ProviderFailed(f"{self.name}: the answer broke off: {_describe(exc)}") from exc
        except (ValueError, TypeError, AttributeError, KeyError, IndexError) as exc:
            raise ProviderFailed(f"{self.name}: unreadable answer: {exc}") from exc
        last = Chunk(finish_reason=finish, usage=_usage(body.get("usage")) or _estimated_usage(request, [content]))
        return [Chunk(delta=content), last] if content else [last]


class StreamedAnswer:
    """The chunks of a streamed answer, from the pieces of its body as they arrive."""

    def __init__(self, provider: str, request: CompletionRequest) -> None:
        self.provider = provider
        self.request = request
        self.parser = SSEDataParser()
        self.parts: list[str] = []
        self.finish: FinishReason | None = None
        self.usage: Usage | None = None
        self.done = False  # [DONE] came; what follows is read (so the connection can be reused) and ignored

    def feed(self, piece: bytes) -> Iterator[Chunk]:
        return self._chunks(self.parser.feed(piece))

    def end(self) -> Iterator[Chunk]:
        """The last chunks, with the finish reason and usage, once the body has ended."""
        yield from self._chunks(self.parser.close())
        if self.finish is None and not self.done:
            raise ProviderFailed(f"{self.provider}: the stream ended before the answer was complete")
        usage = self.usage or _estimated_usage(self.request, self.parts)
        yield Chunk(finish_reason=self.finish or "stop", usage=usage)

    def _chunks(self, events: list[bytes]) -> Iterator[Chunk]:
        """One chunk per event with content, as each is read: a bad event fails after those before it."""
        for data in events:
            if self.done:
                continue
            if data == b"[DONE]":
                self.done = True
                continue
            try:
                event = orjson.loads(data)
                if event.get("error"):
                    raise ProviderFailed(f"{self.provider}: upstream error mid-stream: {_message_of(event)}")
                content, finish = _first_choice(event)
                self.usage = _usage(event.get("usage")) or self.usage
            except (ValueError, TypeError, AttributeError) as exc:  # orjson.JSONDecodeError is a ValueError
                raise ProviderFailed(f"{self.provider}: unreadable stream event: {exc}") from exc
            self.finish = finish or self.finish
            if content:
                self.parts.append(content)
                yield Chunk(delta=content)


class SSEDataParser:
    """The data of server-sent events, from a body that arrives in pieces of bytes.

    ``feed`` returns the data of every event a piece completes (the values of its
    ``data:`` lines, joined by newlines; events without one carry nothing and are
    skipped, as are comments and other fields); ``close`` returns the last one when
    the body ends without a blank line. Lines may end with CRLF, LF or CR, split
    anywhere between pieces. Bytes, not text: the events are JSON, which orjson
    reads (and checks as UTF-8) itself, so nothing is decoded twice.
    """

    def __init__(self) -> None:
        self._pending = b""  # the start of an event whose blank line has not come yet

    def feed(self, piece: bytes) -> list[bytes]:
        pending = self._pending + piece
        if b"\r" in pending:
            # A CR at the very end may be the first half of a CRLF: keep it for the next piece.
            held = pending.endswith(b"\r")
            pending = pending[:-1] if held else pending
            pending = pending.replace(b"\r\n", b"\n").replace(b"\r", b"\n") + (b"\r" if held else b"")
        *events, self._pending = pending.split(b"\n\n")
        return [data for event in events if (data := _event_data(event)) is not None]

    def close(self) -> list[bytes]:
        rest, self._pending = self._pending.replace(b"\r\n", b"\n").replace(b"\r", b"\n"), b""
        return [data for event in rest.split(b"\n\n") if (data := _event_data(event)) is not None]


def _event_data(event: bytes) -> bytes | None:
    if event.startswith(b"data: ") and b"\n" not in event:
        return event[6:]  # the usual event: one data line
    values = [
        line[6:] if line.startswith(b"data: ") else line[5:] for line in event.split(b"\n") if line.startswith(b"data:")
    ]
    return b"\n".join(values) if values else None


def _first_choice(event: dict[str, Any]) -> tuple[str, FinishReason | None]:
    """The content delta and finish reason of choice 0 in a stream event (we never ask for more choices)."""
    for choice in event.get("choices") or ():
        if choice.get("index", 0) == 0:
            raw_finish = choice.get("finish_reason")
            return (choice.get("delta") or {}).get("content") or "", _finish_reason(raw_finish) if raw_finish else None
    return "", None


def _usage(raw: Any) -> Usage | None:
    if not isinstance(raw, dict):
        return None
    try:
        return Usage(prompt_tokens=int(raw["prompt_tokens"]), completion_tokens=int(raw["completion_tokens"]))
    except (KeyError, TypeError, ValueError):
        return None


def _estimated_usage(request: CompletionRequest, parts: list[str]) -> Usage:
    return Usage(estimate_prompt_tokens(request.messages), estimate_tokens("".join(parts)))


def _finish_reason(raw: str) -> FinishReason:
    # Others ("content_filter", "tool_calls") still end a complete answer.
    return "length" if raw == "length" else "stop"


def _error_message(raw: bytes, response: http1.Response) -> str:
    try:
        message = _message_of(orjson.loads(raw))
    except ValueError:
        message = raw.decode("utf-8", "replace").strip()
    return message[:500] or _reason(response.status_code)


def _message_of(body: Any) -> str:
    """The message in an error body: OpenAI's ``{"error": {"message"}}``, or the plainer shapes others use."""
    if not isinstance(body, dict):
        return str(body)
    error = body.get("error", body)
    if isinstance(error, dict):
        return str(error.get("message") or error.get("detail") or error)
    return str(error)


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return f"status {status}"


def _describe(exc: http1.TransportError) -> str:
    return str(exc) or type(exc).__name__
