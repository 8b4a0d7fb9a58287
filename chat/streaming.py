"""Generations: one model reply being produced, its events, and who listens.

A generation runs as an asyncio task in the process that accepted the message,
independent of the request or socket that started it, so a client that drops
can come back and resume. Every event gets an increasing ``seq`` and goes to:

- local subscribers (the SSE response or non-streaming request that started it),
- the replay buffer (Redis list with a TTL, or memory when embedded), so a
  client reconnecting anywhere gets the events it missed,
- the conversation's channel group, so every socket open on the conversation
  (several tabs, any worker process) sees the same stream.

The reply is stored (``assistant_finish``) before the final ``done``/``error``
event is sent, so a client that sees ``done`` can read the stored message.

When nobody listens any more (no local subscriber and no socket renewing the
listener lease), the generation goes on for CHAT_STREAM_GRACE_SECONDS so a
reconnecting client can resume, then stops and keeps the partial reply as
``cancelled``. A cancel request stops it within a second from any process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import replace

import orjson
from channels.layers import get_channel_layer
from django.conf import settings
from django.utils import timezone

from chat import shared
from chat.models import Message
from chat.providers import get_provider
from chat.providers.base import Chunk, ProviderError, ProviderUnavailable, Usage, estimate_tokens
from chat.registry import ModelInfo, find_model
from chat.services import SendPlan, assistant_finish
from core import metrics, quotas
from core.db import database_sync_to_async
from core.loops import per_event_loop

logger = logging.getLogger("agentsflow.chat")

TERMINAL = frozenset({"done", "error"})
WATCH_INTERVAL = 0.25  # how often a generation checks for cancel requests and listeners
LEASE_TTL = 10.0  # a socket renews its listener lease every LEASE_TTL / 3 seconds
SUBSCRIBER_QUEUE_LIMIT = 10_000  # a subscriber this far behind is dropped, not buffered forever
YIELD_EVERY_CHUNKS = 16  # a burst of chunks gives the event loop back this often
PUBLISH_STALL_SECONDS = 5.0  # a publisher that ships nothing for this long is given up at the end

USER_CANCEL = "cancelled by the user"

_running: dict[int, Generation] = {}


def _finish_and_charge(*, user_id: int, **fields) -> None:
    if assistant_finish(**fields):
        usage = fields["usage"]
        quotas.charge(user_id, usage.prompt_tokens + usage.completion_tokens)


_layer_failing = False  # this process's last channel-layer send failed


def _layer_send_failed(exc: Exception) -> None:
    """Log the first failure of an outage, not one per batch of every reply."""
    global _layer_failing
    if not _layer_failing:
        logger.warning("channel layer send failed: %s (logged once until a send succeeds)", exc.__class__.__name__)
    _layer_failing = True


def _layer_send_succeeded() -> None:
    global _layer_failing
    if _layer_failing:
        logger.warning("channel layer send works again")
    _layer_failing = False


async def _group_send(layer, group: str, message: dict) -> None:
    try:
        await layer.group_send(group, message)
    except Exception as exc:  # a dead channel layer must not stop the reply
        _layer_send_failed(exc)
    else:
        _layer_send_succeeded()


def _pubsub_channel(layer, group: str) -> str | None:
    """The Redis pub/sub channel that ``layer.group_send(group, …)`` publishes on, when
    the layer is channels-redis's pub/sub layer on core.redis's server alone: a
    generation then publishes its batches itself, in the pipeline that appends them
    to the replay buffer. None for any other layer (it gets group_send)."""
    config = settings.CHANNEL_LAYERS["default"]
    hosts = config.get("CONFIG", {}).get("hosts") or []
    if (
        layer is None
        or not settings.REDIS_URL
        or config["BACKEND"] != "channels_redis.pubsub.RedisPubSubChannelLayer"
        or len(hosts) != 1
        or (hosts[0]["address"] if isinstance(hosts[0], dict) else hosts[0]) != settings.REDIS_URL
    ):
        return None
    # The layer's own naming (channels-redis is pinned; the WebSocket tests would see
    # no events if it changed): one host, so no sharding to follow.
    return layer._get_group_channel_name(group)


# This process's sockets in each conversation group (chat.consumers registers them),
# per event loop as the channel layer's subscriptions are: a generation here hands
# its batches to the sockets of its own loop directly, so a worker's own replies skip
# the round trip through Redis pub/sub and the channel layer's queue, its receiving
# task and msgpack. A socket on another loop is another subscriber to Redis.
_local_sockets = per_event_loop(dict)


def listen_here(group: str, socket) -> None:
    """``socket.take_local(message)`` gets the batches of this loop's generations in ``group``."""
    _local_sockets().setdefault(group, set()).add(socket)


def stop_listening_here(group: str, socket) -> None:
    sockets = _local_sockets().get(group)
    if sockets is not None:
        sockets.discard(socket)
        if not sockets:
            del _local_sockets()[group]


def _deliver_locally(group: str, message: dict) -> None:
    for socket in _local_sockets().get(group, ()):
        socket.take_local(message)


def _subscribed_here(layer, channel: str) -> bool:
    """Whether this process's channel layer has subscribed to ``channel`` on Redis."""
    loop_layer = layer._get_layer()
    return channel in loop_layer._get_shard(channel)._subscribed_to


def conversation_group(conversation_id: int) -> str:
    return f"conv.{conversation_id}"


def running(message_id: int) -> Generation | None:
    return _running.get(message_id)


class Generation:
    def __init__(self, plan: SendPlan) -> None:
        self.plan = plan
        self.message_id = plan.assistant_message_id
        self.conversation_id = plan.conversation_id
        self.seq = 0
        self.events: list[dict] = []
        self.subscribers: set[asyncio.Queue] = set()
        self.model_used = plan.model.name
        self.cancel_reason: str | None = None
        self.final: dict | None = None
        self.done = asyncio.Event()
        # Whether a process other than this one may have sockets on the conversation's
        # group (the watch asks Redis); until it knows, assume so.
        self.heard_elsewhere = True
        self._outbox: asyncio.Queue[dict | None] = asyncio.Queue()
        self._published = 0  # events shipped to the replay buffer and the channel group
        self._stream_task: asyncio.Task | None = None
        self._last_listener = time.monotonic()
        self.task: asyncio.Task | None = None

    # --- listeners -------------------------------------------------------------------

    def subscribe(self, after_seq: int = 0) -> asyncio.Queue:
        """A queue of this generation's events with seq > after_seq, past ones first."""
        queue: asyncio.Queue = asyncio.Queue()
        for event in self.events:
            if event["seq"] > after_seq:
                queue.put_nowait(event)
        self.subscribers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue) -> None:
        self.subscribers.discard(queue)
        if not self.subscribers:
            self._last_listener = time.monotonic()

    def cancel(self, reason: str = USER_CANCEL) -> None:
        if self.cancel_reason is None:
            self.cancel_reason = reason
        if self._stream_task is not None and not self._stream_task.done():
            self._stream_task.cancel()

    # --- events --------------------------------------------------------------------------

    def _emit(self, kind: str, **data) -> dict:
        self.seq += 1
        event = {
            "type": kind,
            "seq": self.seq,
            "message_id": self.message_id,
            "conversation_id": self.conversation_id,
            **data,
        }
        self.events.append(event)
        for queue in list(self.subscribers):
            if queue.qsize() >= SUBSCRIBER_QUEUE_LIMIT:
                self.subscribers.discard(queue)
                continue
            queue.put_nowait(event)
        self._outbox.put_nowait(event)
        return event

    async def _publish(self) -> None:
        """Ship events to the replay buffer and the channel group, batching whatever
        accumulated while the previous batch was in flight (one Redis round trip
        per batch, not per token, when the channel layer publishes on core.redis's
        server; two otherwise)."""
        layer = get_channel_layer()
        group = conversation_group(self.conversation_id)
        channel = _pubsub_channel(layer, group)
        finished = False
        while not finished:
            batch = [await self._outbox.get()]
            while not self._outbox.empty():
                batch.append(self._outbox.get_nowait())
            if batch[-1] is None:
                finished = True
                batch.pop()
            if not batch:
                continue
            # Encoded once: the replay buffer stores these bytes and the sockets send
            # them as they are (JSON lines; orjson escapes newlines inside strings).
            encoded = [(event["seq"], orjson.dumps(event)) for event in batch]
            message = {"type": "chat.events", "packed": b"\n".join(raw for _, raw in encoded)}
            if channel is not None:
                # Redis publishes the batch only for other processes' sockets (and always
                # the end, which no socket may miss); this process's get it directly, once
                # it is in the replay buffer (where a socket that finds a gap looks).
                publish = self.heard_elsewhere or batch[-1]["type"] in TERMINAL
                data = layer.serialize(message) if publish else b""
                shipped = await shared.replay_append_and_publish(
                    self.message_id, encoded, channel if publish else None, data
                )
                _deliver_locally(group, message)
            else:
                await shared.replay_append_encoded(self.message_id, encoded)
                shipped = False
            if shipped:
                _layer_send_succeeded()
            elif layer is not None:
                # Redis refused the pipeline (or the breaker is open): the layer's own
                # connection may still get the events to the sockets, as before.
                await _group_send(layer, group, message)
            self._published += len(batch)

    # --- the run ---------------------------------------------------------------------------

    async def run(self) -> None:
        started = time.monotonic()
        publisher = asyncio.create_task(self._publish())
        _watch().add(self)
        self._emit("start", user_message_id=self.plan.user_message_id, model=self.plan.model.name)
        state = {"parts": [], "ttft_ms": None, "usage": None, "finish": None}
        status, error_code, error_text, http_status = Message.Status.COMPLETE, "", "", 200
        self._stream_task = asyncio.create_task(self._consume(state, started))
        try:
            await asyncio.wait_for(asyncio.shield(self._stream_task), settings.CHAT_GENERATION_TIMEOUT)
        except asyncio.CancelledError:
            # Either our own cancel() stopped the stream, or this task is being
            # cancelled (server shutdown): keep the partial reply either way.
            if self.cancel_reason is None:
                self.cancel(reason="the server is shutting down")
            status = Message.Status.CANCELLED
        except TimeoutError:
            self.cancel(reason="timeout")
            status, error_code, http_status = Message.Status.ERROR, "timeout", 504
            error_text = f"The reply took longer than {settings.CHAT_GENERATION_TIMEOUT:.0f} s and was stopped."
        except ProviderError as exc:
            status, error_code, error_text, http_status = Message.Status.ERROR, exc.code, str(exc), exc.status
        except Exception:
            logger.exception("generation %s failed", self.message_id)
            status, error_code, http_status = Message.Status.ERROR, "server_error", 500
            error_text = "The reply failed because of an internal error."
        else:
            if self.cancel_reason is not None or state["finish"] == "cancelled":
                status = Message.Status.CANCELLED
        finally:
            _watch().generations.discard(self)
        if self._stream_task is not None and not self._stream_task.done():
            with contextlib.suppress(BaseException):
                await self._stream_task

        content = "".join(state["parts"])
        usage = state["usage"] or Usage(
            prompt_tokens=sum(estimate_tokens(m.content) for m in self.plan.request.messages),
            completion_tokens=len(state["parts"]),
        )
        latency_ms = int((time.monotonic() - started) * 1000)
        await self._store(content, status, usage, latency_ms, state["ttft_ms"], error_text)
        final = {
            "status": status,
            "model": self.model_used,
            "finish_reason": state["finish"] if status == Message.Status.COMPLETE else status,
            "usage": {
                "prompt_tokens": usage.prompt_tokens,
                "completion_tokens": usage.completion_tokens,
                "total_tokens": usage.total_tokens,
            },
            "latency_ms": latency_ms,
            "ttft_ms": state["ttft_ms"],
            "content": content,
        }
        if status == Message.Status.ERROR:
            final.update(code=error_code, message=error_text, http_status=http_status)
            self.final = self._emit("error", **final)
        else:
            if self.cancel_reason and status == Message.Status.CANCELLED:
                final["reason"] = self.cancel_reason
            self.final = self._emit("done", **final)
        self._outbox.put_nowait(None)
        await self._drain(publisher)
        self.done.set()

    async def _drain(self, publisher: asyncio.Task) -> None:
        """Wait until the publisher has shipped every event, the final one included.

        Under load it may be seconds behind the model (many replies share one
        process and one channel-layer connection); cutting it off at a fixed time
        lost the end of replies for their sockets. It is given up only once it has
        shipped nothing for PUBLISH_STALL_SECONDS (a stalled Redis).
        """
        shipped = -1
        try:
            while not publisher.done() and shipped != self._published:
                shipped = self._published
                await asyncio.wait({publisher}, timeout=PUBLISH_STALL_SECONDS)
        except asyncio.CancelledError:  # the server is stopping
            publisher.cancel()
            raise
        if not publisher.done():
            publisher.cancel()
            logger.warning("reply %s: publishing stalled, %d events not shipped", self.message_id, self.seq - shipped)
        elif not publisher.cancelled() and publisher.exception() is not None:
            logger.warning("reply %s: publishing failed: %r", self.message_id, publisher.exception())

    async def _store(self, content, status, usage, latency_ms, ttft_ms, error_text) -> None:
        self._count(status, usage, latency_ms, ttft_ms)
        # database_sync_to_async gives the connection back at once: when the request that
        # started this reply has ended, the call runs on a thread nobody closes, and a
        # connection left there would never return to the pool.
        try:
            await database_sync_to_async(_finish_and_charge)(
                user_id=self.plan.user_id,
                message_id=self.message_id,
                content=content,
                status=status,
                usage=usage,
                latency_ms=latency_ms,
                ttft_ms=ttft_ms,
                model_name=self.model_used,
                error=error_text,
            )
        except Exception:
            # The database is unreachable: the reply stays `streaming` and the sweeper
            # marks it from the replay buffer later. The client still gets its events.
            logger.exception("could not store reply %s", self.message_id)

    def _count(self, status: str, usage: Usage, latency_ms: int, ttft_ms: int | None) -> None:
        model, tier = self.model_used, self.plan.tier
        metrics.REPLIES.labels(model, status).inc()
        metrics.TOKENS.labels(model, tier, "in").inc(usage.prompt_tokens)
        metrics.TOKENS.labels(model, tier, "out").inc(usage.completion_tokens)
        if ttft_ms is not None:
            metrics.TTFT.labels(model).observe(ttft_ms / 1000)
            generating = (latency_ms - ttft_ms) / 1000
            if usage.completion_tokens > 1 and generating > 0:
                metrics.TOKENS_PER_SECOND.labels(model).observe((usage.completion_tokens - 1) / generating)
        if status == Message.Status.CANCELLED and self.cancel_reason == USER_CANCEL:
            metrics.STREAM_CANCELS.inc()

    async def _consume(self, state: dict, started: float) -> None:
        async with contextlib.aclosing(self._chunks()) as chunks:
            count = 0
            async for chunk in chunks:
                count += 1
                if count % YIELD_EVERY_CHUNKS == 0:
                    # An upstream faster than us never makes the read wait, so this loop
                    # would hold the event loop for the whole reply: let the listeners
                    # (and every other request of this process) run now and then.
                    await asyncio.sleep(0)
                if chunk.delta:
                    if state["ttft_ms"] is None:
                        state["ttft_ms"] = int((time.monotonic() - started) * 1000)
                    state["parts"].append(chunk.delta)
                    self._emit("delta", text=chunk.delta)
                if chunk.finish_reason:
                    state["finish"] = chunk.finish_reason
                    state["usage"] = chunk.usage

    async def _chunks(self) -> AsyncIterator[Chunk]:
        """The primary model's chunks, or the fallback's when the primary cannot be
        reached before its first chunk (never in the middle of a stream)."""
        model, request = self.plan.model, self.plan.request
        try:
            async with contextlib.aclosing(get_provider(model.provider).stream(request)) as stream:
                async for chunk in stream:
                    yield chunk
            return
        except ProviderUnavailable:
            if self.seq > 1 or (fallback := _fallback_for(model)) is None:  # only "start" sent so far
                raise
        logger.warning("model %s unreachable, falling back to %s", model.name, fallback.name)
        self.model_used = fallback.name
        self._emit("fallback", model=fallback.name)
        request = replace(
            request, model=fallback.upstream_model, max_tokens=min(request.max_tokens, fallback.max_output_tokens)
        )
        async with contextlib.aclosing(get_provider(fallback.provider).stream(request)) as stream:
            async for chunk in stream:
                yield chunk

    def _check_listeners(self, lease: bool, now: float) -> None:
        """Stop once nobody has listened (here, or through a socket's lease) for the grace period."""
        if self.subscribers or lease:
            self._last_listener = now
        elif now - self._last_listener > settings.CHAT_STREAM_GRACE_SECONDS:
            self.cancel(reason="no listener for the grace period")


class _Watch:
    """Every WATCH_INTERVAL, for every generation on this event loop at once: stop
    those with a cancel request from another process, and those nobody has listened
    to for the grace period; every ALIVE_RENEW, renew their alive marks.

    One Redis round trip per check for all of them: a watcher per generation cost
    one or two per reply four times a second, as much as streaming its tokens.
    """

    def __init__(self) -> None:
        self.generations: set[Generation] = set()
        self.task: asyncio.Task | None = None
        self._alive_renewed: dict[Generation, float] = {}

    def add(self, generation: Generation) -> None:
        self.generations.add(generation)
        if self.task is None or self.task.done():
            self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while self.generations:
            try:
                await self._renew_alive_marks()
                await asyncio.sleep(WATCH_INTERVAL)
                await self._check()
            except Exception:  # one bad check must not leave every reply unwatched
                logger.exception("watching the replies failed")
                await asyncio.sleep(WATCH_INTERVAL)

    async def _renew_alive_marks(self) -> None:
        """Marks the new generations at once (their first check is a WATCH_INTERVAL away)."""
        now = time.monotonic()
        self._alive_renewed = {g: self._alive_renewed.get(g, 0.0) for g in self.generations}
        due = [g for g, renewed in self._alive_renewed.items() if now - renewed >= shared.ALIVE_RENEW]
        for generation in due:
            self._alive_renewed[generation] = now
        await shared.mark_alive([g.message_id for g in due])

    async def _check(self) -> None:
        watched = list(self.generations)
        if settings.REDIS_URL:
            cancels = await shared.cancels_requested([g.message_id for g in watched])
            for generation, requested in zip(watched, cancels, strict=True):
                if requested:
                    generation.cancel()
                    self.generations.discard(generation)
            watched = [g for g in watched if g in self.generations]
        await self._check_elsewhere(watched)
        unheard = [g for g in watched if not g.subscribers]
        leases = dict(zip(unheard, await shared.listener_leases([g.message_id for g in unheard]), strict=True))
        now = time.monotonic()
        for generation in watched:
            generation._check_listeners(leases.get(generation, False), now)
            if generation.cancel_reason is not None:
                self.generations.discard(generation)

    async def _check_elsewhere(self, watched: list[Generation]) -> None:
        """Whether any other process has sockets on each generation's conversation.

        A socket that joins elsewhere between two checks is not sent the batches
        shipped meanwhile; it reads them from the replay buffer when the next one it
        gets shows the gap (ChatConsumer.chat_events). A reply's end is always sent.
        """
        layer = get_channel_layer()
        channels = [_pubsub_channel(layer, conversation_group(g.conversation_id)) for g in watched]
        if not watched or channels[0] is None:
            return
        counts = await shared.subscriber_counts(channels)
        for generation, channel, count in zip(watched, channels, counts or [None] * len(watched), strict=True):
            here = 1 if _subscribed_here(layer, channel) else 0
            generation.heard_elsewhere = count is None or count > here


_watch = per_event_loop(_Watch)


def _fallback_for(model: ModelInfo) -> ModelInfo | None:
    if not model.fallback:
        return None
    fallback = find_model(model.fallback)
    return fallback if fallback is not None and fallback.enabled else None


def start(plan: SendPlan) -> Generation:
    """Start a generation on the running event loop; it outlives the request."""
    generation = Generation(plan)
    _running[generation.message_id] = generation
    generation.task = asyncio.create_task(generation.run(), name=f"generation-{generation.message_id}")
    generation.task.add_done_callback(lambda _: _running.pop(generation.message_id, None))
    return generation


async def cancel(message_id: int) -> None:
    """Stop a streaming reply wherever it runs (here at once; elsewhere within WATCH_INTERVAL)."""
    generation = _running.get(message_id)
    if generation is not None:
        generation.cancel()
    else:
        await shared.request_cancel(message_id)


async def settle_if_orphaned(message: Message) -> Message | None:
    """When no process produces a streaming reply any more: mark it interrupted (see
    chat.sweeper) and return it as stored now. None while some process does."""
    from chat import sweeper

    if running(message.pk) is not None or await shared.is_alive(message.pk):
        return None
    if timezone.now() - message.updated_at < sweeper.MIN_AGE:
        return None
    text = await sweeper.partial_text(message.pk)
    return await database_sync_to_async(_mark_interrupted_and_load)(message.pk, text)


def _mark_interrupted_and_load(message_id: int, text: str | None) -> Message | None:
    from chat import sweeper

    sweeper.mark_interrupted(message_id, text)  # a no-op if it ended meanwhile: it is loaded as it ended
    return load_reply(message_id)


def load_reply(message_id: int) -> Message | None:
    return Message.objects.filter(pk=message_id, role=Message.Role.ASSISTANT).first()


def final_event_from(message: Message, seq: int) -> dict:
    """A reply's final event rebuilt from the database (its replay buffer has expired)."""
    usage = {
        "prompt_tokens": message.prompt_tokens,
        "completion_tokens": message.completion_tokens,
        "total_tokens": message.prompt_tokens + message.completion_tokens,
    }
    event = {
        "type": "error" if message.status == Message.Status.ERROR else "done",
        "seq": seq,
        "message_id": message.pk,
        "conversation_id": message.conversation_id,
        "status": message.status,
        "model": message.model_name,
        "finish_reason": "stop" if message.status == Message.Status.COMPLETE else message.status,
        "usage": usage,
        "latency_ms": message.latency_ms,
        "ttft_ms": message.ttft_ms,
        "content": message.content,
    }
    if message.status == Message.Status.ERROR:
        event.update(code="provider_error", message=message.error, http_status=502)
    return event


async def follow(message_id: int, after_seq: int = 0, *, poll: float = 0.05) -> AsyncIterator[dict]:
    """Every event of a reply after ``after_seq``, live, until the final one.

    Served from this process's generation when it runs here, otherwise from the
    replay buffer (polled), so a client may reconnect to any worker. A reply that
    finished long ago (buffer expired) yields one final event rebuilt from the
    database; one whose producer vanished ends with a ``stream_lost`` error.
    """
    generation = _running.get(message_id)
    if generation is not None:
        queue = generation.subscribe(after_seq)
        try:
            while True:
                event = await queue.get()
                yield event
                if event["type"] in TERMINAL:
                    return
        finally:
            generation.unsubscribe(queue)

    if after_seq:
        metrics.STREAM_RESUMES.inc()
    last = after_seq
    lease_renewed = next_db_check = 0.0  # renew the lease and look at the stored reply at once
    while True:
        batch = [event for event in await shared.replay_read(message_id, last) if event["seq"] > last]
        for event in batch:
            last = event["seq"]
            yield event
            if event["type"] in TERMINAL:
                return
        now = time.monotonic()
        if now - lease_renewed >= LEASE_TTL / 3:
            lease_renewed = now
            await shared.renew_listener_lease(message_id, LEASE_TTL)
        if not batch and now >= next_db_check:
            next_db_check = now + 1.0
            message = await database_sync_to_async(load_reply)(message_id)
            if message is None:
                return
            if message.status == Message.Status.STREAMING:
                message = await settle_if_orphaned(message) or message
            if message.status != Message.Status.STREAMING:
                tail = [e for e in await shared.replay_read(message_id, last) if e["seq"] > last]
                if tail and tail[-1]["type"] in TERMINAL:
                    for event in tail:
                        yield event
                    return
                yield final_event_from(message, last + 1)
                return
        await asyncio.sleep(poll)
