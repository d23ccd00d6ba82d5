"""STORE_TIMEOUT bounds every store call, however many round trips it makes.

With a socket timeout, redis-py writes each command under ``asyncio.wait_for``, which on Python
3.11 loses a cancellation that arrives just as the write completes (CPython gh-86296): the
store's own deadline then expired in silence and the call ran on past it (seen as ``audit``
reading a whole 100,000-entry stream long after its STORE_TIMEOUT). The store therefore leaves
redis-py without socket timeouts and bounds each call itself.
"""

from __future__ import annotations

import pytest

from ratelimit.store import Store, StoreUnavailable
from smtp_whitelist.settings import Settings
from tests.support import RedisServer

# Far more round trips than fit in the timeout below on any machine.
ROUND_TRIPS = 20_000


@pytest.mark.parametrize("attempt", range(5))
async def test_a_call_of_many_round_trips_ends_at_store_timeout(
    redis_server: RedisServer, attempt: int
) -> None:
    store = Store.from_settings(Settings(redis_url=redis_server.url, store_timeout=0.05))
    done = 0

    async def many() -> None:
        nonlocal done
        for _ in range(ROUND_TRIPS):
            await store._client.ping()
            done += 1

    try:
        await store.ping()
        with pytest.raises(StoreUnavailable, match="timed out"):
            await store.call(many)
    finally:
        await store.aclose()
    assert done < ROUND_TRIPS
