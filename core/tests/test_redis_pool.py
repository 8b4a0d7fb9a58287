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


async def test_replies_are_parsed_by_hiredis():
    """requirements.txt installs hiredis, and redis-py then parses replies in C
    (python -m bench.redis_parser: about a quarter less CPU per round trip)."""
    from django_redis import get_redis_connection
    from redis._parsers import _AsyncHiredisParser, _HiredisParser

    for alias in ("default", "sessions"):
        pool = get_redis_connection(alias).connection_pool
        connection = pool.get_connection()
        try:
            assert connection._parser.__class__ is _HiredisParser, alias
        finally:
            pool.release(connection)
    connection = await redis.async_client().connection_pool.get_connection()
    try:
        assert connection._parser.__class__ is _AsyncHiredisParser
    finally:
        await redis.async_client().connection_pool.release(connection)
