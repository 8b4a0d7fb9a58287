"""Database work from async code, and the threads it runs on.

``database_sync_to_async`` is asgiref's ``sync_to_async`` that gives the thread's
database connections back (to the pool) after each call, as Django does at the
end of a request. Async views that wait on a model, and replies that outlive
their request, use it: with plain ``sync_to_async`` a request keeps its
connection until it ends (so DB_POOL_MAX_SIZE requests waiting on a model starve
the worker), and a reply that finishes after its request stores itself on a
thread nobody ever closes, so its connection never returns to the pool.

Unlike channels' helper of the same name, it leaves a connection alone while a
transaction is open on it (tests run each test inside one).

Which thread: during an HTTP request, the request's own (asgiref's
thread-sensitive mode, as Django runs its signals and sync middleware; a thread
reused from earlier requests, see ``RequestThreads``), or the caller's when a sync
caller waits above (Django's test client). Anywhere else (a WebSocket consumer, a
reply that outlives its request) asgiref would use one thread for the whole
process, so every socket's queries waited in one line: they go to a pool of
DB_POOL_MAX_SIZE threads instead, as many as the connections they can use (one
thread with SQLite, as before).
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from asgiref.sync import AsyncToSync, SyncToAsync, ThreadSensitiveContext
from django.conf import settings
from django.db import connections


def release_connections() -> None:
    """Close (return to the pool) this thread's connections that are not in a transaction."""
    for connection in connections.all(initialized_only=True):
        if not connection.in_atomic_block:
            connection.close_if_unusable_or_obsolete()


class DatabaseSyncToAsync(SyncToAsync):
    def thread_handler(self, loop, *args, **kwargs):
        try:
            return super().thread_handler(loop, *args, **kwargs)
        finally:
            release_connections()


_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def database_threads() -> ThreadPoolExecutor:
    """The threads for database work outside any request (created on first use):
    one per pooled connection; one for SQLite, which takes one writer at a time
    (two threads writing at once get "database is locked")."""
    global _pool
    with _pool_lock:
        if _pool is None:
            count = 1 if connections["default"].vendor == "sqlite" else settings.DB_POOL_MAX_SIZE
            _pool = ThreadPoolExecutor(max_workers=count, thread_name_prefix="db")
        return _pool


def _sync_caller_waits() -> bool:
    """Whether a sync caller waits above (Django's test client): thread-sensitive
    calls then run on its thread."""
    return getattr(AsyncToSync.executors, "current", None) is not None


def _on_a_request_thread() -> bool:
    """Whether thread-sensitive calls have a thread of their own here: a sync caller
    waiting above, or an entered ThreadSensitiveContext (an HTTP request). A task that
    outlived its request still sees that context, exited (its token is gone)."""
    if _sync_caller_waits():
        return True
    context = SyncToAsync.thread_sensitive_context.get(None)
    return context is not None and context.token is not None


def database_sync_to_async(function) -> DatabaseSyncToAsync:
    if _on_a_request_thread():
        return DatabaseSyncToAsync(function)
    return DatabaseSyncToAsync(function, thread_sensitive=False, executor=database_threads())


class _CountingExecutor(ThreadPoolExecutor):
    """One thread; knows whether work is still queued or running on it."""

    def __init__(self) -> None:
        super().__init__(max_workers=1, thread_name_prefix="request")
        self.pending = 0
        self._count_lock = threading.Lock()

    def submit(self, fn, /, *args, **kwargs):
        with self._count_lock:
            self.pending += 1
        future = super().submit(fn, *args, **kwargs)
        future.add_done_callback(self._finished)
        return future

    def _finished(self, _future) -> None:
        with self._count_lock:
            self.pending -= 1


class RequestThreads:
    """ASGI middleware: each HTTP request's thread-sensitive work (Django's request
    signals and sync middleware, the views' database calls) on a thread kept from
    earlier requests.

    Django enters asgiref's ThreadSensitiveContext() for every request: its first
    thread-sensitive call starts a thread, and leaving it starts another to join
    the first, so two thread starts a request. Here the request's context gets an
    executor of one thread from a free list (Django's own context nests inside
    it). A thread still busy when its request ends (a query the client stopped
    waiting for) is not handed to the next request: it finishes alone and exits.
    """

    def __init__(self, app, *, keep: int = 64) -> None:
        self.app = app
        self.keep = keep
        self._idle: list[_CountingExecutor] = []

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or _sync_caller_waits():
            return await self.app(scope, receive, send)
        executor = self._idle.pop() if self._idle else _CountingExecutor()
        try:
            async with ThreadSensitiveContext(executor=executor):
                await self.app(scope, receive, send)
        finally:
            if executor.pending == 0 and len(self._idle) < self.keep:
                self._idle.append(executor)
            else:
                executor.shutdown(wait=False)
