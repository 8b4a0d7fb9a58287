"""The two-tier cache: a per-process memory tier with a short TTL in front of the
shared cache (Redis in production) with a longer TTL.

A read tries memory, then the shared tier (refilling memory), then computes.
When a key is missing everywhere, one process takes a short lock in the shared
tier and computes; the others wait briefly for its result, so an expired hot
key cannot send every worker to the database at once. A write invalidates by
deleting from the shared tier; other processes see the change once their memory
copy expires (``local_ttl``, one second by default).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, TypeVar

from django.core.cache import cache as shared_cache

from core import redis

T = TypeVar("T")

_NONE = "__af_none__"  # stands for a cached None
_MISSING = object()

LOCAL_TTL = 1.0
LOCAL_MAX_ENTRIES = 10_000
LOCK_TTL = 5  # seconds a compute lock lives in the shared tier
LOCK_WAIT = 0.5  # how long a process waits for another's computation
LOCK_POLL = 0.01


class _LocalTier:
    """A small bounded LRU with per-entry expiry, safe to share between threads."""

    def __init__(self, max_entries: int) -> None:
        self._data: OrderedDict[str, tuple[float, Any]] = OrderedDict()
        self._lock = threading.Lock()
        self._max = max_entries

    def get(self, key: str) -> Any:
        with self._lock:
            item = self._data.get(key)
            if item is None:
                return _MISSING
            expires, value = item
            if expires < time.monotonic():
                del self._data[key]
                return _MISSING
            self._data.move_to_end(key)
            return value

    def set(self, key: str, value: Any, ttl: float) -> None:
        with self._lock:
            self._data[key] = (time.monotonic() + ttl, value)
            self._data.move_to_end(key)
            while len(self._data) > self._max:
                self._data.popitem(last=False)

    def delete(self, key: str) -> None:
        with self._lock:
            self._data.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()


class CacheStats:
    """Hits and misses per key family, exported as metrics by core.metrics."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts: dict[tuple[str, str], int] = {}
        self.listeners: list[Callable[[str, str], None]] = []

    def record(self, family: str, outcome: str) -> None:
        with self._lock:
            self.counts[(family, outcome)] = self.counts.get((family, outcome), 0) + 1
        for listener in self.listeners:
            listener(family, outcome)


class TwoTierCache:
    def __init__(self) -> None:
        self.local = _LocalTier(LOCAL_MAX_ENTRIES)
        self.stats = CacheStats()
        self._key_locks: dict[str, threading.Lock] = {}
        self._key_locks_guard = threading.Lock()

    def _key(self, family: str, key: str) -> str:
        return f"{family}:{key}"

    def get_or_compute(
        self,
        family: str,
        key: str,
        compute: Callable[[], T],
        *,
        ttl: float,
        local_ttl: float = LOCAL_TTL,
        cache_none: bool = False,
    ) -> T:
        full_key = self._key(family, key)
        value = self.local.get(full_key)
        if value is not _MISSING:
            self.stats.record(family, "hit_local")
            return None if value == _NONE else value

        value = self._shared_get(full_key)
        if value is not _MISSING:
            self.stats.record(family, "hit_shared")
            self.local.set(full_key, value, min(local_ttl, ttl))
            return None if value == _NONE else value

        self.stats.record(family, "miss")
        lock = self._process_lock(full_key)
        # The wait is bounded: a waiter may hold the database connection the computing
        # thread needs (N waiters, a pool of N), a deadlock until the pool times out.
        # After LOCK_WAIT it computes with its own connection instead.
        locked = lock.acquire(timeout=LOCK_WAIT)
        try:
            # Another thread of this process may have filled it while we waited.
            value = self.local.get(full_key) if locked else _MISSING
            if value is _MISSING:
                value = self._compute_once(full_key, compute, ttl, cache_none, wait=locked)
                self.local.set(full_key, value, min(local_ttl, ttl))
        finally:
            if locked:
                lock.release()
        return None if value == _NONE else value

    def _compute_once(
        self, full_key: str, compute: Callable[[], Any], ttl: float, cache_none: bool, *, wait: bool = True
    ) -> Any:
        """Compute and store; while another process computes (and ``wait``), wait
        briefly for its result instead."""
        lock_key = f"lock:{full_key}" if wait else None
        if lock_key and not self.claim(lock_key, LOCK_TTL):
            # Another process is computing: wait briefly for its result.
            deadline = time.monotonic() + LOCK_WAIT
            while time.monotonic() < deadline:
                time.sleep(LOCK_POLL)
                value = self._shared_get(full_key)
                if value is not _MISSING:
                    return value
            # It took too long (or died): compute ourselves rather than fail.
            lock_key = None
        try:
            result = compute()
            value = _NONE if result is None else result
            if result is not None or cache_none:
                self._shared_set(full_key, value, ttl)
            return value
        finally:
            if lock_key:
                self._shared_delete(lock_key)

    def _process_lock(self, full_key: str) -> threading.Lock:
        with self._key_locks_guard:
            lock = self._key_locks.get(full_key)
            if lock is None:
                if len(self._key_locks) > LOCAL_MAX_ENTRIES:
                    self._key_locks.clear()
                lock = self._key_locks[full_key] = threading.Lock()
            return lock

    def delete(self, family: str, key: str) -> None:
        full_key = self._key(family, key)
        self.local.delete(full_key)
        self._shared_delete(full_key)

    def claim(self, key: str, ttl: float) -> bool:
        """Atomically take ``key`` in the shared tier for ``ttl`` seconds (True if we got it).

        With the shared tier down every caller gets the claim: work may be done
        twice, but nothing waits on a lock nobody can hold.
        """
        return bool(self._shared(shared_cache.add, True, key, 1, timeout=ttl))

    def _shared(self, operation: Callable[..., Any], fallback: Any, *args: Any, **kwargs: Any) -> Any:
        """Run one shared-tier operation, failing open: an unreachable Redis is a miss.

        After an error Redis is skipped for a while (core.redis's breaker, which the
        rate limits and quotas share), so a dead or stalled Redis costs one socket
        timeout per process, not one per call, nor one per caller.
        """
        if redis.breaker.open:
            return fallback
        try:
            return operation(*args, **kwargs)
        except Exception as exc:
            redis.breaker.trip("cache", exc)
            self.stats.record("shared_tier", "error")
            return fallback

    def _shared_get(self, key: str) -> Any:
        return self._shared(shared_cache.get, _MISSING, key, _MISSING)

    def _shared_set(self, key: str, value: Any, ttl: float) -> None:
        self._shared(shared_cache.set, None, key, value, timeout=ttl)

    def _shared_delete(self, key: str) -> None:
        self._shared(shared_cache.delete, None, key)


two_tier = TwoTierCache()
