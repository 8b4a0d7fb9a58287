"""One object per event loop, for the process-wide helpers of async code (a
Redis shipper, the reply and socket watches): each loop gets its own, created on
first use and forgotten with the loop (tests run many loops in one process)."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def per_event_loop(factory: Callable[[], T]) -> Callable[[], T]:
    """A function returning the running loop's instance of ``factory()``."""
    instances: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, T] = weakref.WeakKeyDictionary()

    def instance() -> T:
        loop = asyncio.get_running_loop()
        found = instances.get(loop)
        if found is None:
            found = instances[loop] = factory()
        return found

    return instance
