"""The circuit breaker in front of Redis: fail at once while it is down, notice when it is back."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from redis.exceptions import RedisError

from ratelimit.errors import StoreUnavailable, describe

log = logging.getLogger("ratelimit.store")

# Consecutive failed calls that open the circuit. One failure may be a dropped connection that
# the pool replaces at once; three in a row is an outage, and every caller waiting out
# STORE_TIMEOUT during it would only make Postfix slower.
BREAKER_THRESHOLD = 3
# While open, Redis is probed (PING) this often, so limits apply again within about this long
# after Redis returns, without a restart and without a request paying for the probe.
BREAKER_PROBE_INTERVAL = 0.5


class CircuitBreaker:
    """Fails calls at once while Redis is known to be down, and finds out by itself when it is back.

    Closed: calls go to Redis. After BREAKER_THRESHOLD consecutive failures it opens: calls fail
    immediately (the policy server answers ON_STORE_ERROR in microseconds instead of
    STORE_TIMEOUT), and a background task pings Redis every BREAKER_PROBE_INTERVAL; the first
    answer closes it again.
    """

    def __init__(
        self,
        probe: Callable[[], Awaitable[object]],
        timeout: float,
        threshold: int = BREAKER_THRESHOLD,
        interval: float = BREAKER_PROBE_INTERVAL,
    ) -> None:
        self.probe = probe
        self.timeout = timeout
        self.threshold = threshold
        self.interval = interval
        self.failures = 0
        self.opened_at: float | None = None
        self.last_error = ""
        self._prober: asyncio.Task[None] | None = None

    @property
    def is_open(self) -> bool:
        return self.opened_at is not None

    def check(self) -> None:
        """Raise StoreUnavailable at once while the circuit is open."""
        if self.opened_at is not None:
            raise StoreUnavailable(f"circuit open after repeated failures: {self.last_error}")

    def succeeded(self) -> None:
        self.failures = 0

    def failed(self, error: str) -> None:
        self.failures += 1
        self.last_error = error
        if self.opened_at is None and self.failures >= self.threshold:
            loop = asyncio.get_running_loop()
            self.opened_at = loop.time()
            log.warning(
                "Redis failed %d times in a row (%s): circuit open, answering without it and"
                " probing every %.1fs",
                self.failures,
                error,
                self.interval,
            )
            self._prober = loop.create_task(self._probe_until_back())

    async def _probe_until_back(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.interval)
            try:
                async with asyncio.timeout(self.timeout):
                    await self.probe()
            except (RedisError, OSError, TimeoutError) as error:
                self.last_error = describe(error)
                continue
            opened, self.opened_at, self.failures = self.opened_at or loop.time(), None, 0
            self._prober = None
            log.warning("Redis answers again after %.1fs: circuit closed", loop.time() - opened)
            return

    async def aclose(self) -> None:
        if self._prober is not None:
            self._prober.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._prober
            self._prober = None
