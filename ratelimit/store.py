"""The Redis connection and its bounded calls: the one door to Redis for every caller.

The store owns one connection pool, built once in ``main`` and passed in. Every call is bounded
by ``STORE_TIMEOUT`` and every failure becomes :class:`StoreUnavailable` (ratelimit.errors).
The raw client is private (``_client``): callers use the typed methods below, so every command
goes through the timeout, the breaker and the cluster rules (tests/test_architecture.py).
Beside it, by role: the key layout (keys.py), the scripts (scripts.py), the circuit breaker
(breaker.py) and the decision batches (batch.py; on a single Redis or Sentinel, link_batches.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar, cast

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import NoScriptError, RedisError, ResponseError

from ratelimit.batch import Batcher, Keys, ReplySlot
from ratelimit.breaker import BREAKER_PROBE_INTERVAL, BREAKER_THRESHOLD, CircuitBreaker
from ratelimit.connections import build_client, close_client
from ratelimit.errors import NotReplicated, StoreError, StoreUnavailable, describe
from ratelimit.keys import KeyLayout
from ratelimit.link_batches import LinkBatcher
from ratelimit.node_calls import connection_for
from ratelimit.scripts import Script, script_then

# Importers name these as ratelimit.store's: the store's errors, keys and scripts.
__all__ = [
    "BREAKER_PROBE_INTERVAL",
    "BREAKER_THRESHOLD",
    "CircuitBreaker",
    "KeyLayout",
    "NotReplicated",
    "ReplySlot",
    "Script",
    "Store",
    "StoreError",
    "StoreSettings",
    "StoreUnavailable",
]

T = TypeVar("T")

# Enough connections for the policy server's batches and the webhook's requests at once;
# beyond it callers wait for a free connection (bounded by STORE_TIMEOUT) instead of opening
# ever more sockets to Redis.
MAX_POOL_CONNECTIONS = 64


class StoreSettings(Protocol):
    """What the store reads of the settings (the app's Settings satisfies it; never imported)."""

    @property
    def redis_url(self) -> str: ...
    @property
    def key_prefix(self) -> str: ...
    @property
    def store_timeout(self) -> float: ...
    @property
    def grant_min_replicas(self) -> int: ...


class Store:
    """One Redis connection pool with bounded calls. Build it once; share it."""

    def __init__(
        self,
        client: aioredis.Redis | RedisCluster,
        keys: KeyLayout,
        timeout: float,
        min_replicas: int = 0,
    ) -> None:
        self._client = client
        self.keys = keys
        self.timeout = timeout
        self.min_replicas = min_replicas  # GRANT_MIN_REPLICAS: see run_script_confirmed
        self.cluster = isinstance(client, RedisCluster)
        self.breaker = CircuitBreaker(self._probe, timeout)
        self.batcher: Batcher | LinkBatcher = (
            Batcher(client, timeout, self.breaker)
            if isinstance(client, RedisCluster)
            else LinkBatcher(client, timeout, self.breaker)
        )

    @classmethod
    def from_settings(cls, settings: StoreSettings) -> Store:
        """A store for ``settings``; the pool connects lazily and reconnects by itself."""
        client = build_client(settings.redis_url, settings.store_timeout, MAX_POOL_CONNECTIONS)
        return cls(
            client,
            KeyLayout(settings.key_prefix),
            settings.store_timeout,
            settings.grant_min_replicas,
        )

    async def _probe(self) -> None:
        """The breaker's probe: PING, on a cluster every master (after reloading the slot map,
        so a promoted replica is found)."""
        if isinstance(self._client, RedisCluster):
            await self._client.nodes_manager.initialize()
            await self._client.ping(target_nodes=RedisCluster.PRIMARIES)
        else:
            await self._client.ping()

    async def call(self, operation: Callable[[], Awaitable[T]]) -> T:
        """Run one Redis operation within the timeout; any failure is StoreUnavailable."""
        self.breaker.check()
        try:
            async with asyncio.timeout(self.timeout):
                result = await operation()
        except ResponseError as error:
            self.breaker.succeeded()  # it answered: reachable
            raise StoreError(f"Redis answered an error: {describe(error)}") from error
        except (RedisError, OSError, TimeoutError) as error:
            self.breaker.failed(describe(error))
            raise StoreUnavailable(describe(error)) from error
        self.breaker.succeeded()
        return result

    async def run_script(self, script: Script, keys: list[str], args: list[Any]) -> Any:
        """EVALSHA, falling back to loading the script once (after a Redis restart)."""

        async def run() -> Any:
            try:
                return await self._client.evalsha(script.sha, len(keys), *keys, *args)
            except NoScriptError:
                await self._client.script_load(script.source)
                return await self._client.evalsha(script.sha, len(keys), *keys, *args)

        async def run_on_node() -> Any:
            # redis-py 8.1's cluster client breaks its connections on the SCRIPT LOAD that
            # follows a NOSCRIPT ("attached to a different loop"), so on a cluster the script
            # runs on a connection lent by the key's node, loaded there when missing.
            async with connection_for(self._client, keys[0]) as connection:
                result, _ = await script_then(connection, script, keys, args, None)
            if isinstance(result, Exception):
                raise result
            return result

        return await self.call(run_on_node if self.cluster else run)

    async def run_script_confirmed(self, script: Script, keys: list[str], args: list[Any]) -> Any:
        """Like :meth:`run_script`, then, with ``min_replicas`` set, ``WAIT`` for that many
        replicas on the same connection (WAIT counts that connection's writes only).

        Raises :class:`NotReplicated` when fewer confirm within STORE_TIMEOUT: the write is on
        the master but a failover could still lose it. The whole exchange may take twice
        STORE_TIMEOUT: the script's own time and WAIT's.
        """
        if not self.min_replicas:
            return await self.run_script(script, keys, args)
        wait = ("WAIT", self.min_replicas, max(1, round(self.timeout * 1000)))

        async def run() -> tuple[Any, Any]:
            async with connection_for(self._client, keys[0]) as connection:
                return await script_then(connection, script, keys, args, wait)

        self.breaker.check()
        try:
            async with asyncio.timeout(2 * self.timeout):
                result, acked = await run()
        except (RedisError, OSError, TimeoutError) as error:
            self.breaker.failed(describe(error))
            raise StoreUnavailable(describe(error)) from error
        self.breaker.succeeded()
        if isinstance(result, Exception):
            raise StoreError(f"Redis answered an error: {describe(result)}")
        if isinstance(acked, Exception) or int(acked) < self.min_replicas:
            confirmed = 0 if isinstance(acked, Exception) else int(acked)
            raise NotReplicated(
                f"only {confirmed} of {self.min_replicas} replicas confirmed the write in"
                f" {self.timeout:g}s: it may not have been kept"
            )
        return result

    def pipeline(self, *, transaction: bool = True) -> Any:
        """Commands sent together: a MULTI/EXEC transaction on one Redis (unless
        ``transaction=False``); on a cluster always a plain pipeline (each command atomic on its
        own), as redis-py 8.1's cluster transactions were seen to break the client's connections
        for the calls after them. Execute it inside :meth:`call`."""
        return self._client.pipeline(transaction=transaction and not self.cluster)

    # One command each, bounded by call(): the typed door for the modules beside the store.

    async def get(self, key: str) -> bytes | None:
        return cast(bytes | None, await self.call(lambda: self._client.get(key)))

    async def set(self, key: str, value: bytes | str, *, ex: int, nx: bool = False) -> bool:
        """SET with a lifetime (never a key that lives forever); False when ``nx`` found one."""
        return bool(await self.call(lambda: self._client.set(key, value, ex=ex, nx=nx)))

    async def delete(self, *keys: str) -> int:
        return int(await self.call(lambda: self._client.delete(*keys)))

    async def hgetall(self, key: str) -> dict[bytes, bytes]:
        return cast(dict[bytes, bytes], await self.call(lambda: self._client.hgetall(key)))

    async def zrem(self, key: str, member: str) -> int:
        return int(await self.call(lambda: self._client.zrem(key, member)))

    # Parts of a larger operation: call them inside call(), which bounds the whole.

    async def time(self) -> tuple[int, int]:
        """Redis' clock: (seconds, microseconds). On its own: a cluster pipeline refuses TIME."""
        seconds, micros = await self._client.time()
        return int(seconds), int(micros)

    async def entries_scored(self, key: str) -> list[tuple[bytes, float]]:
        """The members of a sorted set scored 0 or more, lowest first, with the scores: a
        client's entries without the running sums decide.lua keeps below zero."""
        reply = await self._client.zrange(key, 0, "+inf", byscore=True, withscores=True)
        return cast(list[tuple[bytes, float]], reply)

    async def xrevrange(
        self, key: bytes | str, upper: str, count: int
    ) -> list[tuple[bytes, dict[bytes, bytes]]]:
        """Up to ``count`` stream entries, newest first, from ``upper`` down."""
        reply = await self._client.xrevrange(key, max=upper, min="-", count=count)
        return cast(list[tuple[bytes, dict[bytes, bytes]]], reply)

    async def scan_keys(self, pattern: str, count: int = 1000) -> list[bytes]:
        """Every key matching ``pattern``, by SCAN (never KEYS); on a cluster, on every master.
        Call it inside :meth:`call`."""
        return [key async for key in self._client.scan_iter(pattern, count=count)]

    async def ping(self) -> None:
        """Raise StoreUnavailable unless Redis answers."""
        await self.call(self._client.ping)

    async def server_info(self) -> dict[str, Any]:
        """``INFO server`` as the client returns it (``check`` prints the version)."""
        info: dict[str, Any] = await self.call(lambda: self._client.info("server"))
        return info

    def submit_batched(
        self, script: Script, shared: list[Any], keys: Keys, args: list[Any], slot: ReplySlot
    ) -> None:
        """One call of a batch script (``shared`` arguments first, then each call's own), run
        with the calls made together in one script call and one round trip
        (:mod:`ratelimit.batch`, :mod:`ratelimit.link_batches`). Its reply (or
        StoreUnavailable) goes to ``slot`` as soon as it is read: the policy server's decisions
        answer from there; an ``asyncio.Future`` is a slot too. Raises
        :class:`StoreUnavailable` at once while the circuit breaker is open."""
        self.batcher.submit(script, shared, keys, args, slot)

    async def aclose(self) -> None:
        await self.batcher.aclose()
        await self.breaker.aclose()
        await close_client(self._client)
