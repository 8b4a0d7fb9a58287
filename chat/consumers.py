"""WebSocket chat (`/ws/chat/`). The protocol is documented in docs/websocket.md.

A socket joins the channel group of each conversation it sends to, subscribes
to or resumes, so every socket open on a conversation (several tabs, any worker)
sees the same stream; its channel on the channel layer is opened then, not at the
handshake, so an idle socket holds none. Per-connection state stays small: the
groups joined, the replies in flight and the last sequence number seen of each.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import time
from typing import NamedTuple

import orjson
from channels.consumer import get_handler_name
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import DatabaseError
from django.http import Http404
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from rest_framework.exceptions import APIException, ValidationError

from chat import selectors, services, shared, streaming
from chat.api_send import _prepare_regenerate, _prepare_send
from chat.http import Caller
from chat.models import Message
from chat.serializers import SendSerializer, content_too_long
from core import metrics, redis
from core.asgi import CLOSE_TRY_AGAIN
from core.db import database_sync_to_async
from core.exceptions import _flatten_details, database_error_as_api_exception
from core.loops import per_event_loop
from core.models import APIKey
from core.parsers import too_deep

logger = logging.getLogger("agentsflow.chat")

CLOSE_UNAUTHENTICATED = 4401
CLOSE_NOT_FOUND = 4404
CLOSE_UNSUPPORTED_DATA = 1003
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009

BURST = 30  # messages a client may send at once
REFILL_PER_SECOND = 10.0  # sustained messages per second
FLOOD_DROPS = 60  # throttled messages tolerated before the socket is closed (1008)
ENDED_KEPT = 32  # ended replies a socket remembers, to drop late copies of their events


_WAKE = object()  # in the inbox: batches are waiting in the local lane


class _SourceFailed(NamedTuple):
    error: Exception


class _NotYours(Exception):
    """Another user's conversation or message: the socket is closed with 4404."""


class ChatConsumer(AsyncWebsocketConsumer):
    async def __call__(self, scope, receive, send) -> None:
        """Channels' AsyncConsumer.__call__, except that the socket's channel on the
        channel layer is opened when it first joins a conversation (``_channel``),
        not before the handshake: an idle socket holds no channel-layer subscription,
        queue or receiving task, and a handshake needs no Redis."""
        self.scope = scope
        self.channel_layer = get_channel_layer(self.channel_layer_alias)
        self.channel_name = None
        self.base_send = send
        with contextlib.suppress(StopConsumer):
            await self._dispatch_until_closed(receive)

    async def _dispatch_until_closed(self, receive) -> None:
        """Channels' await_many_dispatch over the client and, once opened, the
        socket's channel: one message handled at a time, in arrival order.

        Each source has a task that hands its messages to one queue. Channels instead
        waits on both with asyncio.wait and starts a new task per message: with a
        token every 20 ms per socket, that bookkeeping cost more than the frame.
        The queue holds one message, so neither source reads far ahead. Batches of
        this process's generations come first, from ``take_local``.
        """
        self._inbox: asyncio.Queue = asyncio.Queue(maxsize=1)
        self._local: collections.deque[dict] = collections.deque()
        self._idle = False  # waiting on the inbox
        self._pumps = [asyncio.create_task(self._pump(receive))]
        try:
            while True:
                while self._local:
                    await self.dispatch(self._local.popleft())
                self._idle = True
                message = await self._inbox.get()
                self._idle = False
                if message is _WAKE:
                    continue
                if isinstance(message, _SourceFailed):
                    raise message.error
                await self.dispatch(message)
        finally:
            for group in getattr(self, "groups_joined", ()):  # connect() may not have run
                streaming.stop_listening_here(group, self)
            for task in self._pumps:
                task.cancel()  # the channel's receive unsubscribes from the layer when cancelled
            for task in self._pumps:
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    def take_local(self, message: dict) -> None:
        """A batch of reply events from a generation in this process (chat.streaming),
        handed over directly rather than through the channel layer (unbounded, as the
        layer's queues are)."""
        self._local.append(message)
        if self._idle and not self._inbox.full():
            self._idle = False
            self._inbox.put_nowait(_WAKE)

    async def _pump(self, source) -> None:
        try:
            while True:
                await self._inbox.put(await source())
        except Exception as exc:  # raised in the dispatching task, as channels does
            await self._inbox.put(_SourceFailed(exc))

    async def _channel(self) -> str:
        """This socket's channel on the layer: opened on first use, listened to from then on."""
        if self.channel_name is None:
            try:
                self.channel_name = await self.channel_layer.new_channel()
            except RedisConnectionError:
                # The layer's pub/sub connection from before a Redis restart fails its
                # first command, then reconnects (resilience F1 caught it once in four).
                self.channel_name = await self.channel_layer.new_channel()
            receive = functools.partial(self.channel_layer.receive, self.channel_name)
            self._pumps.append(asyncio.create_task(self._pump(receive)))
        return self.channel_name

    async def connect(self) -> None:
        self.user = self.scope.get("user")
        self.caller = Caller(user=self.user, key=self.scope.get("auth"))
        self.groups_joined: set[str] = set()
        self.last_seq: dict[int, int] = {}
        self.ended: dict[int, None] = {}  # the replies whose end this socket sent lately, oldest first
        self.in_flight: set[int] = set()
        self.lease_task: asyncio.Task | None = None
        self.tokens, self.refilled_at, self.drops = float(BURST), time.monotonic(), 0
        await self.accept()
        metrics.WEBSOCKETS.inc()
        self.counted = True
        if not (self.user and self.user.is_authenticated):
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        if self.caller.key is not None and not self.caller.key.allows(APIKey.Scope.CHAT):
            await self._send(
                {"type": "error", "code": "permission_denied", "message": "This API key lacks the 'chat' scope."}
            )
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        await self._send({"type": "ready", "user": {"id": self.user.pk, "email": self.user.email}})
        _layer_watch().add(self)

    async def disconnect(self, code) -> None:
        _layer_watch().sockets.discard(self)
        if getattr(self, "counted", False):
            metrics.WEBSOCKETS.dec()
            self.counted = False
        if getattr(self, "lease_task", None) is not None:
            self.lease_task.cancel()
        for group in list(getattr(self, "groups_joined", ())):
            with contextlib.suppress(Exception):
                await self.channel_layer.group_discard(group, self.channel_name)

    # --- incoming ---------------------------------------------------------------------

    async def receive(self, text_data=None, bytes_data=None) -> None:
        if bytes_data is not None:
            await self.close(code=CLOSE_UNSUPPORTED_DATA)
            return
        if len(text_data) > settings.WS_MAX_MESSAGE_BYTES or len(text_data.encode()) > settings.WS_MAX_MESSAGE_BYTES:
            await self.close(code=CLOSE_TOO_BIG)
            return
        if not self._take_token():
            if self.drops > FLOOD_DROPS:
                await self.close(code=CLOSE_POLICY)
            else:
                await self._send({"type": "error", "code": "throttled", "message": "Too many messages; slow down."})
            return
        try:
            message = orjson.loads(text_data)
        except orjson.JSONDecodeError:
            await self._send({"type": "error", "code": "parse_error", "message": "Messages must be JSON objects."})
            return
        if not isinstance(message, dict) or too_deep(message):  # too deep: validation would recurse
            await self._send(
                {"type": "error", "code": "parse_error", "message": "Messages must be JSON objects, not nested deeply."}
            )
            return
        handler = self.HANDLERS.get(message.get("type"))
        if handler is None:
            await self._send(
                {
                    "type": "error",
                    "code": "unknown_type",
                    "message": f"Unknown message type {message.get('type')!r}; "
                    f"expected one of {sorted(self.HANDLERS)}.",
                }
            )
            return
        try:
            await handler(self, message)
        except _NotYours:
            await self._send({"type": "error", "code": "not_found", "message": "No such conversation or message."})
            await self.close(code=CLOSE_NOT_FOUND)
        except (ValidationError, APIException) as exc:
            await self._send(self._api_error(exc, message))
        except RedisError as exc:  # the channel layer is down: this socket would miss events
            logger.warning("websocket closed, channel layer unavailable: %s", exc.__class__.__name__)
            await self.close(code=CLOSE_TRY_AGAIN)
        except Exception as exc:  # the database or cache is down: say so, keep the socket
            mapped = database_error_as_api_exception(exc)
            if mapped is None:
                logger.exception("websocket handler %s failed", message.get("type"))
            await self._send(
                {
                    "type": "error",
                    "client_id": message.get("client_id"),
                    "code": mapped.default_code if mapped else "server_error",
                    "message": str(mapped.detail) if mapped else "Internal server error.",
                }
            )

    def _take_token(self) -> bool:
        now = time.monotonic()
        self.tokens = min(BURST, self.tokens + (now - self.refilled_at) * REFILL_PER_SECOND)
        self.refilled_at = now
        if self.tokens >= 1:
            self.tokens -= 1
            self.drops = 0
            return True
        self.drops += 1
        return False

    @staticmethod
    def _api_error(exc: APIException, message: dict) -> dict:
        event = {"type": "error", "client_id": message.get("client_id")}
        if isinstance(exc, ValidationError):
            event.update(code="invalid", message="Invalid input.", details=_flatten_details(exc.detail))
        else:
            codes = exc.get_codes()
            event.update(code=codes if isinstance(codes, str) else "error", message=str(exc.detail))
        return event

    @staticmethod
    def _int_field(message: dict, name: str, *, required: bool = True) -> int | None:
        value = message.get(name)
        if value is None and not required:
            return None
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValidationError({name: ["A non-negative integer is required."]})
        return value

    async def handle_send(self, message: dict) -> None:
        serializer = SendSerializer(data=message)
        if not serializer.is_valid():
            raise ValidationError(serializer.errors)
        data = serializer.validated_data
        if content_too_long(data["content"]):
            await self._send(
                {
                    "type": "error",
                    "code": "message_too_long",
                    "client_id": message.get("client_id"),
                    "message": f"The message is over the {settings.CHAT_MAX_MESSAGE_CHARS}-character limit.",
                }
            )
            return
        conversation_id = self._int_field(message, "conversation_id", required=False)
        plan = await self._db(_prepare_send, self.caller, conversation_id, data, None)
        await self._start(
            plan, {"type": "accepted", "client_id": message.get("client_id"), "user_message_id": plan.user_message_id}
        )

    async def handle_regenerate(self, message: dict) -> None:
        plan = await self._db(_prepare_regenerate, self.caller, self._int_field(message, "message_id"))
        await self._start(plan, {"type": "accepted", "client_id": message.get("client_id")})

    async def handle_subscribe(self, message: dict) -> None:
        conversation_id = self._int_field(message, "conversation_id")
        streaming_ids = await self._db(_streaming_replies, self.user, conversation_id)
        await self._join(conversation_id)
        await self._send({"type": "subscribed", "conversation_id": conversation_id, "streaming": streaming_ids})

    async def handle_unsubscribe(self, message: dict) -> None:
        group = streaming.conversation_group(self._int_field(message, "conversation_id"))
        if group in self.groups_joined:
            self.groups_joined.discard(group)
            streaming.stop_listening_here(group, self)
            await self.channel_layer.group_discard(group, self.channel_name)

    async def handle_cancel(self, message: dict) -> None:
        message_id = self._int_field(message, "message_id")
        await self._db(selectors.message_get, user=self.user, message_id=message_id)
        await streaming.cancel(message_id)

    async def handle_resume(self, message: dict) -> None:
        """Replay what was missed after ``last_seq``; live events follow through the group."""
        message_id = self._int_field(message, "message_id")
        last_seq = self._int_field(message, "last_seq")
        reply = await self._db(selectors.message_get, user=self.user, message_id=message_id)
        await self._join(reply.conversation_id)  # join first, so nothing falls between replay and live
        self.ended.pop(message_id, None)  # asked for again: send it again
        self.last_seq[message_id] = max(self.last_seq.get(message_id, 0), last_seq)
        missed = await shared.replay_read(message_id, last_seq)
        if not missed:
            reply = await self._db(selectors.message_get, user=self.user, message_id=message_id)
            if reply.status != Message.Status.STREAMING:
                missed = [streaming.final_event_from(reply, last_seq + 1)]
        ended = any(e["type"] in streaming.TERMINAL for e in missed)
        # No process produces it any more (its worker died): end it instead of waiting.
        if reply.status == Message.Status.STREAMING and not ended:
            settled = await streaming.settle_if_orphaned(reply)
            if settled is not None:
                reply = settled
                last = max([last_seq, *(e["seq"] for e in missed)])
                missed = [*missed, streaming.final_event_from(reply, last + 1)]
        if reply.status == Message.Status.STREAMING:
            self._track(message_id)
        await self.chat_events({"events": missed})

    async def handle_ping(self, message: dict) -> None:
        await self._send({"type": "pong"})

    HANDLERS = {
        "send": handle_send,
        "regenerate": handle_regenerate,
        "subscribe": handle_subscribe,
        "unsubscribe": handle_unsubscribe,
        "cancel": handle_cancel,
        "resume": handle_resume,
        "ping": handle_ping,
    }

    # --- outgoing ---------------------------------------------------------------------------

    async def dispatch(self, message: dict) -> None:
        # Channels' dispatch minus its hop to the sync thread to close stale database
        # connections, paid on every frame and every batch of reply events: every handler
        # here reaches the database through database_sync_to_async, which gives its
        # connections back itself.
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    async def chat_events(self, event: dict, *, fill_gaps: bool = True) -> None:
        """Reply events from the conversation groups (and replays), each sent once, in order.

        A generation sends ``packed``: its events already encoded, one JSON object
        a line, which go out as they are (a channel layer copies or serialises a
        list of dicts event by event; one bytes value costs next to nothing).

        Events this socket missed of a reply it follows (a generation in another
        process publishes only once it has seen this process listening, and an
        outage may lose a batch) are read from the replay buffer first.
        """
        if "packed" in event:
            items = [(raw, orjson.loads(raw)) for raw in event["packed"].split(b"\n")]
        else:
            items = [(None, item) for item in event["events"]]
        for raw, item in items:
            message_id = item["message_id"]
            if message_id in self.ended:
                continue  # a copy of an event already sent (Redis's echo of a local batch)
            last = self.last_seq.get(message_id, 0 if message_id in self.in_flight else None)
            if last is not None and item["seq"] <= last:
                continue
            if fill_gaps and last is not None and item["seq"] > last + 1:
                missed = [e for e in await shared.replay_read(message_id, last) if e["seq"] < item["seq"]]
                await self.chat_events({"events": missed}, fill_gaps=False)
            self.last_seq[message_id] = item["seq"]
            if item["type"] == "start":
                self._track(message_id)
            elif item["type"] in streaming.TERMINAL:
                self.in_flight.discard(message_id)
                self.last_seq.pop(message_id, None)
                self.ended[message_id] = None
                if len(self.ended) > ENDED_KEPT:
                    del self.ended[next(iter(self.ended))]
            if raw is None:
                await self._send(item)
            else:
                await self.send(text_data=raw.decode())

    async def _send(self, payload: dict) -> None:
        await self.send(text_data=orjson.dumps(payload).decode())

    # --- helpers ------------------------------------------------------------------------------

    async def _db(self, function, *args, **kwargs):
        try:
            return await database_sync_to_async(function)(*args, **kwargs)
        except Http404:
            raise _NotYours() from None

    async def _join(self, conversation_id: int) -> None:
        group = streaming.conversation_group(conversation_id)
        if group not in self.groups_joined:
            await self.channel_layer.group_add(group, await self._channel())
            self.groups_joined.add(group)
            streaming.listen_here(group, self)

    async def _start(self, plan: services.SendPlan, accepted: dict) -> None:
        try:
            await self._join(plan.conversation_id)
        finally:
            # The messages are stored: even if the channel layer failed (the socket is
            # then closed 1013), produce the reply and tell the client its id to resume.
            self._track(plan.assistant_message_id)
            await self._send(
                {**accepted, "conversation_id": plan.conversation_id, "message_id": plan.assistant_message_id}
            )
            streaming.start(plan)

    def _track(self, message_id: int) -> None:
        """Hold a listener lease on a reply while it streams, so it is not abandoned."""
        self.in_flight.add(message_id)
        if self.lease_task is None or self.lease_task.done():
            self.lease_task = asyncio.create_task(self._renew_leases())

    async def _renew_leases(self) -> None:
        while self.in_flight:
            for message_id in list(self.in_flight):
                await shared.renew_listener_lease(message_id, streaming.LEASE_TTL)
                with contextlib.suppress(DatabaseError):  # the database is down: look again next round
                    await self._end_if_orphaned(message_id)
            await asyncio.sleep(streaming.LEASE_TTL / 3)

    async def _end_if_orphaned(self, message_id: int) -> None:
        """A reply whose worker died sends no more events: end it for this socket."""
        if streaming.running(message_id) is not None or await shared.is_alive(message_id):
            return
        reply = await database_sync_to_async(streaming.load_reply)(message_id)
        if reply is None or reply.status != Message.Status.STREAMING:
            return
        settled = await streaming.settle_if_orphaned(reply)
        if settled is not None:
            final = streaming.final_event_from(settled, self.last_seq.get(message_id, 0) + 1)
            await self.chat_events({"events": [final]})


class _LayerWatch:
    """While sockets are open in this process, check every second that Redis (the
    channel layer) answers. When it fails three times in a row, close them all with 1013: a
    socket on a dead channel layer would otherwise wait for events that never come,
    while its client could reconnect and resume once Redis is back."""

    INTERVAL = 1.0
    FAILURES = 3  # a busy Redis (or machine) may miss one ping; a stopped one misses them all

    def __init__(self) -> None:
        self.sockets: set[ChatConsumer] = set()
        self.task: asyncio.Task | None = None

    def add(self, consumer: ChatConsumer) -> None:
        self.sockets.add(consumer)
        if settings.REDIS_URL and (self.task is None or self.task.done()):
            self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        failures = 0
        while self.sockets:
            await asyncio.sleep(self.INTERVAL)
            failures = 0 if await _redis_answers() else failures + 1
            if failures >= self.FAILURES:
                logger.warning("channel layer unavailable: closing %d websockets (1013)", len(self.sockets))
                for consumer in list(self.sockets):
                    self.sockets.discard(consumer)
                    with contextlib.suppress(Exception):
                        await consumer.close(code=CLOSE_TRY_AGAIN)


_layer_watch = per_event_loop(_LayerWatch)


async def _redis_answers() -> bool:
    try:
        return bool(await redis.async_client().ping())
    except Exception:
        return False


def _streaming_replies(user, conversation_id: int) -> list[int]:
    conversation = selectors.conversation_get(user=user, conversation_id=conversation_id)
    return list(
        Message.objects.filter(conversation=conversation, status=Message.Status.STREAMING).values_list("id", flat=True)
    )
