"""Async access to state every process must see while a reply streams: the replay
buffer of events, cancel requests and listener leases (and two sync reads for the
REST views).

With ``REDIS_URL`` it lives in Redis (through redis.asyncio, so the event loop
never blocks); without it, in this process's memory, which is all there is in the
embedded single-process mode. Redis errors never break a stream: they are
logged, and the operation degrades (no replay, no cross-process cancel) until
Redis answers again.
"""

from __future__ import annotations

import asyncio
import bisect
import time

import hiredis
import orjson
from django.conf import settings

from core import redis
from core.loops import per_event_loop


class MemoryStore:
    def __init__(self) -> None:
        self._events: dict[str, tuple[float, list[tuple[int, bytes]]]] = {}
        self._values: dict[str, tuple[float, bytes]] = {}

    def _sweep(self) -> None:
        if len(self._events) + len(self._values) < 10_000:
            return
        now = time.monotonic()
        self._events = {k: v for k, v in self._events.items() if v[0] > now}
        self._values = {k: v for k, v in self._values.items() if v[0] > now}

    async def append_events(self, key: str, events: list[tuple[int, bytes]], ttl: int) -> None:
        self._sweep()
        _, items = self._events.get(key, (0.0, []))
        last = items[-1][0] if items else 0
        items.extend(event for event in events if event[0] > last)  # one producer, in seq order
        self._events[key] = (time.monotonic() + ttl, items)

    async def events_after(self, key: str, after_seq: int) -> list[bytes]:
        return self.events_after_now(key, after_seq)

    def events_after_now(self, key: str, after_seq: int) -> list[bytes]:
        expires, items = self._events.get(key, (0.0, []))
        if expires <= time.monotonic():
            return []
        return [raw for _, raw in items[bisect.bisect_right(items, after_seq, key=lambda item: item[0]) :]]

    async def set(self, key: str, value: bytes, ttl: float, *, attempts: int = 1) -> None:
        self._sweep()
        self._values[key] = (time.monotonic() + ttl, value)

    async def get(self, key: str, unknown: bytes | None = None) -> bytes | None:
        return self.get_now(key)

    def get_now(self, key: str, unknown: bytes | None = None) -> bytes | None:
        expires, value = self._values.get(key, (0.0, None))
        return value if expires > time.monotonic() else None

    async def get_many(self, keys: list[str]) -> list[bytes | None]:
        return [self.get_now(key) for key in keys]

    async def set_many(self, keys: list[str], value: bytes, ttl: float) -> None:
        for key in keys:
            await self.set(key, value, ttl)

    async def delete(self, key: str) -> None:
        self._values.pop(key, None)
        self._events.pop(key, None)

    async def started_within(self, seconds: float) -> bool:
        return False  # it lives as long as the process, and the marks with it

    def started_within_now(self, seconds: float) -> bool:
        return False


class RedisStore:
    """Through core.redis: per-loop async clients, short timeouts, a circuit breaker."""

    # Events in a sorted set scored by seq, not a list read by index: appends lost to
    # an outage would shift every later index, and a resume would skip or stall.
    async def append_events(self, key: str, events: list[tuple[int, bytes]], ttl: int) -> None:
        async def op(client):
            async with client.pipeline(transaction=False) as pipe:
                pipe.zadd(key, {raw: seq for seq, raw in events})
                pipe.expire(key, ttl)
                await pipe.execute()

        await redis.arun("replay append", None, op)

    async def append_events_and_publish(
        self, key: str, events: list[tuple[int, bytes]], ttl: int, channel: str | None, message: bytes
    ) -> bool:
        """``append_events``, then PUBLISH ``message`` on ``channel`` (unless None),
        shipped with what other replies on this loop hand in meanwhile; False when
        Redis did not take them (down, or the breaker is open)."""
        zadd = ["ZADD", key]
        for seq, raw in events:
            zadd += [seq, raw]
        commands = [zadd, ["EXPIRE", key, ttl]]
        if channel is not None:
            commands.append(["PUBLISH", channel, message])
        return await _shipper().ship(commands)

    async def subscribers(self, channels: list[str]) -> list[int] | None:
        """How many connections are subscribed to each pub/sub channel; None if Redis cannot say."""

        async def op(client):
            counts = dict(await client.pubsub_numsub(*channels))  # names as bytes: no decode_responses
            return [counts.get(channel.encode(), 0) for channel in channels]

        return await redis.arun("pubsub numsub", None, op)

    async def events_after(self, key: str, after_seq: int) -> list[bytes]:
        return await redis.arun("replay read", [], lambda client: client.zrangebyscore(key, f"({after_seq}", "+inf"))

    async def set(self, key: str, value: bytes, ttl: float, *, attempts: int = 1) -> None:
        await redis.arun("set", None, lambda client: client.set(key, value, px=int(ttl * 1000)), attempts=attempts)

    async def get(self, key: str, unknown: bytes | None = None) -> bytes | None:
        """The value, or ``unknown`` when Redis cannot answer."""
        return await redis.arun("get", unknown, lambda client: client.get(key))

    def get_now(self, key: str, unknown: bytes | None = None) -> bytes | None:
        return redis.run("get", unknown, lambda client: client.get(key))

    async def get_many(self, keys: list[str]) -> list[bytes | None]:
        """Each key's value in one round trip; all None when Redis cannot answer."""
        if not keys:
            return []
        return await redis.arun("get", [None] * len(keys), lambda client: client.mget(keys))

    async def set_many(self, keys: list[str], value: bytes, ttl: float) -> None:
        async def op(client):
            async with client.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.set(key, value, px=int(ttl * 1000))
                await pipe.execute()

        if keys:
            await redis.arun("set", None, op)

    def events_after_now(self, key: str, after_seq: int) -> list[bytes]:
        return redis.run("replay read", [], lambda client: client.zrangebyscore(key, f"({after_seq}", "+inf"))

    async def delete(self, key: str) -> None:
        await redis.arun("delete", None, lambda client: client.delete(key))

    async def started_within(self, seconds: float) -> bool:
        """Whether Redis (re)started less than ``seconds`` ago, losing what it held;
        True when it cannot say."""
        info = await redis.arun("uptime", None, lambda client: client.info("server"))
        return info is None or info["uptime_in_seconds"] < seconds

    def started_within_now(self, seconds: float) -> bool:
        info = redis.run("uptime", None, lambda client: client.info("server"))
        return info is None or info["uptime_in_seconds"] < seconds


CLIENT_NAME = "af-shipper"  # in Redis's CLIENT LIST
GATHER_SECONDS = 0.002  # how long a round waits for other replies' events before it is written


class Shipper:
    """Ships reply events (replay appends and publishes) for every generation on one
    event loop through a Redis connection of its own: each round writes whatever the
    generations handed in while the previous round was in flight, in one write.

    The pooled client pays, per pipeline, a pool checkout that probes the socket, a
    retry wrapper, a task to time the write and a timeout per reply: more than Redis
    itself takes for a token. Here a round has one timeout, and under load many
    replies share it. A round that fails trips the breaker (callers fall back).
    """

    def __init__(self) -> None:
        self._waiting: list[tuple[list[list], asyncio.Future[bool]]] = []
        self._task: asyncio.Task | None = None
        self._connection = None

    async def ship(self, commands: list[list]) -> bool:
        """Run ``commands`` in order, in the next round; whether Redis took every one."""
        if redis.breaker.open:
            return False
        future = asyncio.get_running_loop().create_future()
        self._waiting.append((commands, future))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run())
        return await future

    async def _run(self) -> None:
        while self._waiting:
            # A round costs a write and wakes Redis and every subscriber, whatever it
            # carries: let other replies hand theirs in (a model's tokens come 20 ms apart).
            await asyncio.sleep(GATHER_SECONDS)
            batch, self._waiting = self._waiting, []
            ok = await self._round([command for commands, _ in batch for command in commands])
            for _, future in batch:
                if not future.done():
                    future.set_result(ok)

    async def _round(self, commands: list[list]) -> bool:
        from redis.exceptions import ConnectionError

        for attempt in range(2):
            try:
                async with asyncio.timeout(settings.REDIS_SOCKET_TIMEOUT):
                    await self._write_and_read(commands)
                return True
            except Exception as exc:
                # Replies may be left unread: this connection cannot be trusted again.
                if self._connection is not None:
                    await self._connection.disconnect(nowait=True)
                # A connection Redis closed (a restart, a client kill) gets one more try at
                # once on a fresh one, as core.redis does: the commands are safe to repeat
                # (a member added twice is stored once; sockets drop events seen twice).
                if attempt == 0 and isinstance(exc, ConnectionError):
                    continue
                redis.breaker.trip("replay append", exc)
        return False

    async def _write_and_read(self, commands: list[list]) -> None:
        connection = await self._connected()
        await connection.send_packed_command(pack_commands(commands), check_health=False)
        for _ in commands:
            await connection.read_response()  # raises on an error reply

    async def _connected(self):
        if self._connection is None:
            import redis.asyncio as aioredis

            # No socket timeout: each round is timed as a whole, not each read.
            pool = aioredis.ConnectionPool.from_url(
                settings.REDIS_URL,
                socket_timeout=None,
                socket_connect_timeout=settings.REDIS_SOCKET_TIMEOUT,
                client_name=CLIENT_NAME,
            )
            self._connection = pool.make_connection()
        if not self._connection.is_connected:
            await self._connection.connect()
        return self._connection


_shipper = per_event_loop(Shipper)


def pack_commands(commands: list[list]) -> bytes:
    """Commands of str, bytes, int and float arguments in Redis's protocol, packed by
    hiredis in C: redis-py's asyncio connection packs in Python, checking and
    encoding each argument in several calls, and with an argument per event that
    was 8 % of a streaming worker's py-spy samples."""
    return b"".join([hiredis.pack_command(tuple(command)) for command in commands])


_store: MemoryStore | RedisStore | None = None


def store() -> MemoryStore | RedisStore:
    global _store
    if _store is None:
        _store = RedisStore() if redis.configured() else MemoryStore()
    return _store


# A running generation renews its alive mark every ALIVE_RENEW seconds; a mark
# silent for ALIVE_TTL means no process produces the reply any more. A restarted
# Redis has lost every mark: each comes back at a generation's next renewal, which
# an open breaker may put off once, so within two lifetimes.
ALIVE_RENEW, ALIVE_TTL = 2.0, 6.0
MARKS_BACK_WITHIN = 2 * ALIVE_TTL


def replay_key(message_id: int) -> str:
    return f"af:events:{message_id}"  # a sorted set (was af:replay:, a list)


def alive_key(message_id: int) -> str:
    return f"af:alive:{message_id}"


async def replay_append(message_id: int, events: list[dict]) -> None:
    await replay_append_encoded(message_id, [(e["seq"], orjson.dumps(e)) for e in events])


async def replay_append_encoded(message_id: int, encoded: list[tuple[int, bytes]]) -> None:
    """The same, for events already encoded with orjson, as (seq, bytes): the
    generation encodes each once."""
    await store().append_events(replay_key(message_id), encoded, settings.CHAT_REPLAY_TTL_SECONDS)


async def replay_append_and_publish(
    message_id: int, encoded: list[tuple[int, bytes]], channel: str | None, message: bytes
) -> bool:
    """``replay_append_encoded``, then a Redis PUBLISH of ``message`` on ``channel`` (None:
    no publish), in one pipeline: one round trip per batch instead of two. Redis runs
    them in order, so whoever hears the message finds its events in the replay buffer.
    False when Redis did not take them (the caller publishes another way; the append
    is lost, as replay_append_encoded loses it in an outage). Needs Redis (RedisStore)."""
    append = store().append_events_and_publish
    return await append(replay_key(message_id), encoded, settings.CHAT_REPLAY_TTL_SECONDS, channel, message)


async def subscriber_counts(channels: list[str]) -> list[int] | None:
    """Redis's count of connections subscribed to each pub/sub channel (every process's
    channel layer counts once); None if Redis cannot say. Needs Redis (RedisStore)."""
    return await store().subscribers(channels)


async def replay_read(message_id: int, after_seq: int) -> list[dict]:
    """Events with seq > after_seq, in order (whatever an outage lost is skipped)."""
    return [orjson.loads(raw) for raw in await store().events_after(replay_key(message_id), after_seq)]


def _cancel_key(message_id: int) -> str:
    return f"af:cancel:{message_id}"


def _listen_key(message_id: int) -> str:
    return f"af:listen:{message_id}"


async def request_cancel(message_id: int) -> None:
    await store().set(_cancel_key(message_id), b"1", ttl=300, attempts=3)


async def renew_listener_lease(message_id: int, ttl: float) -> None:
    await store().set(_listen_key(message_id), b"1", ttl=ttl)


# What chat.streaming's watch asks for every reply a process produces, one round trip each.


async def cancels_requested(message_ids: list[int]) -> list[bool]:
    return [value is not None for value in await store().get_many([_cancel_key(m) for m in message_ids])]


async def listener_leases(message_ids: list[int]) -> list[bool]:
    return [value is not None for value in await store().get_many([_listen_key(m) for m in message_ids])]


async def mark_alive(message_ids: list[int], ttl: float = ALIVE_TTL) -> None:
    await store().set_many([alive_key(m) for m in message_ids], b"1", ttl=ttl)


async def is_alive(message_id: int) -> bool:
    """True when the reply's producer marked it alive lately; also when Redis cannot
    say, or restarted too lately to hold the marks again: an outage must not make
    every streaming reply look orphaned."""
    if await store().get(alive_key(message_id), unknown=b"unknown") is not None:
        return True
    return await store().started_within(MARKS_BACK_WITHIN)


# Sync reads, for the REST views' check on read (chat.sweeper.settle).


def is_alive_now(message_id: int) -> bool:
    if store().get_now(alive_key(message_id), unknown=b"unknown") is not None:
        return True
    return store().started_within_now(MARKS_BACK_WITHIN)


def replay_read_now(message_id: int) -> list[dict]:
    return [orjson.loads(raw) for raw in store().events_after_now(replay_key(message_id), 0)]
