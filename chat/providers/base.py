"""The one contract every model provider implements.

A ``CompletionRequest`` goes in; an async iterator of ``Chunk`` comes out:
text deltas, then one final chunk carrying the finish reason and token usage.
Cancelling is closing the iterator (``aclose()``) or cancelling the task that
iterates it: a provider must then stop its upstream request or local
generation promptly (within a second) and release what it holds.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Literal, Protocol

Role = Literal["system", "user", "assistant"]
FinishReason = Literal["stop", "length", "cancelled", "error"]


@dataclass(frozen=True, slots=True)
class ChatMessage:
    role: Role
    content: str


@dataclass(frozen=True, slots=True)
class CompletionRequest:
    model: str  # the provider's own model id (LanguageModel.upstream_model)
    messages: tuple[ChatMessage, ...]
    max_tokens: int
    temperature: float
    stop: tuple[str, ...] = field(default_factory=tuple)


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, slots=True)
class Chunk:
    """A text delta, or (last) the finish reason with the usage."""

    delta: str = ""
    finish_reason: FinishReason | None = None
    usage: Usage | None = None


class ProviderError(Exception):
    """Base of every provider failure. ``status`` is what the platform answers."""

    status = 502
    code = "provider_error"


class ProviderUnavailable(ProviderError):
    """The provider could not be reached or refused before sending anything.

    Only this error, raised before the first chunk, makes the platform try a
    fallback model.
    """

    status = 503
    code = "provider_unavailable"


class ProviderTimeout(ProviderError):
    status = 504
    code = "provider_timeout"


class ProviderFailed(ProviderError):
    """The provider answered with an error, or broke off in the middle of a stream."""

    status = 502
    code = "provider_failed"


class Provider(Protocol):
    name: str

    def stream(self, request: CompletionRequest) -> AsyncIterator[Chunk]:
        """Yield deltas then one final chunk with ``finish_reason`` and ``usage``."""
        ...

    def count_tokens(self, text: str) -> int:
        """Tokens ``text`` takes for this provider's models (an estimate is fine)."""
        ...


def estimate_tokens(text: str) -> int:
    """A conservative estimate (about four characters a token) for providers without a tokenizer."""
    return max(1, (len(text) + 3) // 4) if text else 0


# Chat framing (role markers, separators) costs a few tokens per message on every model.
MESSAGE_OVERHEAD_TOKENS = 4


def estimate_prompt_tokens(messages: Iterable[ChatMessage]) -> int:
    """Estimate of a prompt's tokens: each message's text plus its chat framing."""
    return sum(estimate_tokens(message.content) + MESSAGE_OVERHEAD_TOKENS for message in messages)
