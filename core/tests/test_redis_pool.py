"""Redis connection pools under more concurrent operations than connections."""

import asyncio

import pytest
import redis as redis_py

from core import redis

pytestmark = pytest.mark.redis


async def test_operations_beyond_the_pool_wait_for_a_connection(settings):
    """Found by the benchmark (10,000 sockets): with every connection busy, the plain
    pool failed "Too many connections", which tripped the breaker and sent the whole
    process to its fallbacks (local rate limits, no replay buffer) for 2 s."""
    settings.REDIS_MAX_CONNECTIONS = 2
    settings.REDIS_SOCKET_TIMEOUT = 5
    # Each BLPOP holds its connection 0.2 s: six of them on two connections.
    results = await asyncio.gather(
        *(redis.arun("pool test", "failed", lambda client: client.blpop(["pool-test-empty"], 0.2)) for _ in range(6))
    )
    assert results == [None] * 6
    assert not redis.breaker.open


def test_the_sync_pools_block_too():
    from django_redis import get_redis_connection

    for alias in ("default", "sessions"):
        assert isinstance(get_redis_connection(alias).connection_pool, redis_py.BlockingConnectionPool), alias
