"""Which thread database work from async code runs on (core.db): a request's own
thread, reused between requests (RequestThreads), or the pool of database
threads outside requests (WebSocket consumers, replies that outlive a request)."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from asgiref.sync import SyncToAsync, ThreadSensitiveContext, sync_to_async

from core.db import RequestThreads, database_sync_to_async

pytestmark = pytest.mark.asyncio


def _thread_name() -> str:
    return threading.current_thread().name


@pytest.mark.postgres  # with SQLite one thread does it all, as asgiref did (one writer at a time)
@pytest.mark.django_db(transaction=True)  # the pool's threads may hold a test connection
async def test_outside_a_request_calls_run_side_by_side_on_the_database_threads():
    """asgiref alone would run both on one thread for the whole process: the first
    would wait at the barrier for a second that never starts, and both would fail."""
    barrier = threading.Barrier(2, timeout=5)

    def meet() -> str:
        barrier.wait()
        return _thread_name()

    names = await asyncio.gather(database_sync_to_async(meet)(), database_sync_to_async(meet)())
    assert all(name.startswith("db") for name in names), names
    assert names[0] != names[1]


async def test_in_a_request_calls_run_on_the_request_thread():
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="the-request") as executor:
        async with ThreadSensitiveContext(executor=executor):
            names = [await database_sync_to_async(_thread_name)() for _ in range(3)]
            django_side = await sync_to_async(_thread_name)()  # Django's signals, sync middleware
    assert len({*names, django_side}) == 1 and names[0].startswith("the-request")


@pytest.mark.django_db(transaction=True)  # the pool's threads may hold a test connection
async def test_a_task_that_outlives_its_request_moves_to_the_database_threads():
    """A reply started by a request stores itself after the request ended: asgiref
    refuses thread-sensitive calls from the exited context; these go to the pool."""
    later = asyncio.Event()

    async def reply() -> tuple[str, str]:
        during = await database_sync_to_async(_thread_name)()
        await later.wait()
        return during, await database_sync_to_async(_thread_name)()

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="the-request") as executor:
        async with ThreadSensitiveContext(executor=executor):
            task = asyncio.create_task(reply())
            await asyncio.sleep(0.05)
    later.set()
    during, after = await asyncio.wait_for(task, 5)
    assert during.startswith("the-request") and after.startswith("db")
    assert SyncToAsync.thread_sensitive_context.get(None) is None  # nothing leaked out here


def _app_recording(threads: list[int], gate: asyncio.Event | None = None, blocker: threading.Event | None = None):
    async def app(scope, receive, send) -> None:
        threads.append(await sync_to_async(threading.get_ident)())
        if gate is not None:
            await gate.wait()
        if blocker is not None:
            await sync_to_async(blocker.wait)(10)

    return app


async def test_request_threads_are_reused_one_request_at_a_time():
    threads: list[int] = []
    app = RequestThreads(_app_recording(threads))
    for _ in range(3):
        await app({"type": "http"}, None, None)
    assert len(threads) == 3 and len(set(threads)) == 1


async def test_requests_at_the_same_time_get_threads_of_their_own():
    threads: list[int] = []
    gate = asyncio.Event()
    app = RequestThreads(_app_recording(threads, gate))
    first = asyncio.create_task(app({"type": "http"}, None, None))
    second = asyncio.create_task(app({"type": "http"}, None, None))
    await asyncio.sleep(0.1)
    gate.set()
    await asyncio.gather(first, second)
    assert len(set(threads)) == 2


async def test_a_thread_still_busy_when_its_request_ends_is_not_handed_on():
    """A request cancelled while its query runs (the client went away): the next
    request must not queue behind that query on the same thread."""
    threads: list[int] = []
    blocker = threading.Event()
    busy_app = RequestThreads(_app_recording(threads, blocker=blocker))
    busy = asyncio.create_task(busy_app({"type": "http"}, None, None))
    await asyncio.sleep(0.1)
    busy.cancel()
    with pytest.raises(asyncio.CancelledError):
        await busy
    try:
        busy_app.app = _app_recording(threads)
        await asyncio.wait_for(busy_app({"type": "http"}, None, None), 5)
    finally:
        blocker.set()
    assert len(threads) == 2 and threads[0] != threads[1]


async def test_websockets_and_lifespan_pass_through():
    seen = []

    async def app(scope, receive, send) -> None:
        seen.append(SyncToAsync.thread_sensitive_context.get(None))

    await RequestThreads(app)({"type": "websocket"}, None, None)
    assert seen == [None]
