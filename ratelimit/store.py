"""The Redis connection, its key layout, and the one error every caller handles.

The store owns one connection pool, built once in ``main`` and passed in. Every call is bounded
by ``STORE_TIMEOUT`` and every failure becomes :class:`StoreUnavailable`, so the policy server can
answer ``ON_STORE_ERROR`` and the webhook 503 without knowing Redis' exception zoo.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any, Protocol, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError, ResponseError

from ratelimit.connections import build_client, close_client
from ratelimit.node_calls import Command, connection_for, execute_on_nodes, roundtrip

log = logging.getLogger(__name__)

T = TypeVar("T")

# Enough connections for the policy server's batches and the webhook's requests at once;
# beyond it callers wait for a free connection (bounded by STORE_TIMEOUT) instead of opening
# ever more sockets to Redis.
MAX_POOL_CONNECTIONS = 64


_Pending = tuple["Script", list[str], list[Any], "asyncio.Future[Any]"]


# Consecutive failed calls that open the circuit. One failure may be a dropped connection that
# the pool replaces at once; three in a row is an outage, and every caller waiting out
# STORE_TIMEOUT during it would only make Postfix slower.
BREAKER_THRESHOLD = 3
# While open, Redis is probed (PING) this often, so limits apply again within about this long
# after Redis returns, without a restart and without a request paying for the probe.
BREAKER_PROBE_INTERVAL = 0.5


# A kept connection that Redis has closed (its idle `timeout`, a restart, a NAT or firewall that
# forgets idle flows) is only found out when a command is written on it, and says nothing about
# Redis itself. Such a call is tried once more, on a fresh connection, within the same
# STORE_TIMEOUT. A timeout is never retried: Redis is slow or gone, and the deadline is spent.
STALE_CONNECTION_ERRORS = (RedisConnectionError, ConnectionError)


class _Stale(Exception):
    """A batch failed on a connection that had served before, with no reply read from it."""


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


class StoreUnavailable(Exception):
    """Redis failed, timed out, or is known to be down (circuit open)."""


class StoreError(StoreUnavailable):
    """Redis answered, with an error (out of memory, a read-only replica, a refused argument).

    Redis is reachable, so this is no outage: the circuit stays closed and the CLI says "Redis
    answered an error", not "unreachable". It is a StoreUnavailable all the same, because for a
    decision or a grant the outcome is the same: the call did not happen.
    """


class NotReplicated(StoreUnavailable):
    """The write was made on the master, but fewer replicas than required confirmed it in time:
    a failover now could lose it, so it must not be reported as kept."""


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
                self.last_error = _describe(error)
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


class KeyLayout:
    """Every key name, in one place (the README documents the same layout).

    Only normalised values (``ipaddress`` output, validated user names) are ever put in a key.
    The part in braces is the key's hash tag: on a Redis Cluster only it decides the slot, so
    every key one script touches carries the same tag. A client's log, the grants of the
    addresses in it and their audit records are tagged with the client's counted network; a
    user's grant index with the user.
    """

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def client_log(self, network: str) -> str:
        """Sorted set: one member per accepted message of a client network, scored by time."""
        return f"{self.prefix}c:{{{network}}}"

    def grant(self, ip: str, network: str) -> str:
        """String (JSON) with a TTL: the client at this exact address (counted under
        ``network``) is not limited."""
        return f"{self.prefix}wl:{{{network}}}:{ip}"

    @property
    def grant_pattern(self) -> str:
        return f"{self.prefix}wl:*"

    @staticmethod
    def address_of(key: str) -> str:
        """The address a grant or offender key is for."""
        return key.rsplit("}:", 1)[-1]

    def user_grants(self, user: str) -> str:
        """Sorted set: the addresses one user has granted, scored by expiry (ms)."""
        return f"{self.prefix}u:{{{user}}}"

    def audit(self, network: str) -> str:
        """Stream: grants, refreshes and removals of the addresses counted under ``network``
        (one stream per network, so a grant and its record are written in one slot)."""
        return f"{self.prefix}audit:{{{network}}}"

    @property
    def audit_pattern(self) -> str:
        return f"{self.prefix}audit:*"

    def offender(self, ip: str, network: str) -> str:
        """Hash with a TTL: a client address' refusals per hour, its last limit and refusal
        (tagged with the network it is counted under, as the decision script touches it)."""
        return f"{self.prefix}o:{{{network}}}:{ip}"

    @property
    def offender_pattern(self) -> str:
        return f"{self.prefix}o:*"

    def nonce(self, nonce: str) -> str:
        """String with a TTL: a webhook nonce already used."""
        return f"{self.prefix}nonce:{nonce}"


class Script:
    """A Lua script shipped with the package, run by its SHA (loaded on first NOSCRIPT)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.source = resources.files("ratelimit").joinpath(f"lua/{name}.lua").read_text()
        self.sha = hashlib.sha1(self.source.encode(), usedforsecurity=False).hexdigest()


class Store:
    """One Redis connection pool with bounded calls. Build it once; share it."""

    def __init__(
        self,
        client: aioredis.Redis | RedisCluster,
        keys: KeyLayout,
        timeout: float,
        min_replicas: int = 0,
    ) -> None:
        self.client = client
        self.keys = keys
        self.timeout = timeout
        self.min_replicas = min_replicas  # GRANT_MIN_REPLICAS: see run_script_confirmed
        self.cluster = isinstance(client, RedisCluster)
        self._batch: list[_Pending] = []
        self._batch_since = 0.0  # loop time the oldest decision of the next batch arrived
        self._flusher: asyncio.Task[None] | None = None
        self._connection: Any = None  # the flusher's own connection, kept between batches
        self.breaker = CircuitBreaker(self._probe, timeout)
        self._slot_reloader: asyncio.Task[None] | None = None  # cluster only

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
        if isinstance(self.client, RedisCluster):
            await self.client.nodes_manager.initialize()
            await self.client.ping(target_nodes=RedisCluster.PRIMARIES)
        else:
            await self.client.ping()

    async def call(self, operation: Callable[[], Awaitable[T]]) -> T:
        """Run one Redis operation within the timeout; any failure is StoreUnavailable."""
        self.breaker.check()
        try:
            async with asyncio.timeout(self.timeout):
                result = await operation()
        except ResponseError as error:
            self.breaker.succeeded()  # it answered: reachable
            raise StoreError(f"Redis answered an error: {_describe(error)}") from error
        except (RedisError, OSError, TimeoutError) as error:
            self.breaker.failed(_describe(error))
            raise StoreUnavailable(_describe(error)) from error
        self.breaker.succeeded()
        return result

    async def run_script(self, script: Script, keys: list[str], args: list[Any]) -> Any:
        """EVALSHA, falling back to loading the script once (after a Redis restart)."""

        async def run() -> Any:
            try:
                return await self.client.evalsha(script.sha, len(keys), *keys, *args)
            except NoScriptError:
                await self.client.script_load(script.source)
                return await self.client.evalsha(script.sha, len(keys), *keys, *args)

        async def run_on_node() -> Any:
            # redis-py 8.1's cluster client breaks its connections on the SCRIPT LOAD that
            # follows a NOSCRIPT ("attached to a different loop"), so on a cluster the script
            # runs on a connection lent by the key's node, loaded there when missing.
            async with connection_for(self.client, keys[0]) as connection:
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
            async with connection_for(self.client, keys[0]) as connection:
                return await script_then(connection, script, keys, args, wait)

        self.breaker.check()
        try:
            async with asyncio.timeout(2 * self.timeout):
                result, acked = await run()
        except (RedisError, OSError, TimeoutError) as error:
            self.breaker.failed(_describe(error))
            raise StoreUnavailable(_describe(error)) from error
        self.breaker.succeeded()
        if isinstance(result, Exception):
            raise StoreError(f"Redis answered an error: {_describe(result)}")
        if isinstance(acked, Exception) or int(acked) < self.min_replicas:
            confirmed = 0 if isinstance(acked, Exception) else int(acked)
            raise NotReplicated(
                f"only {confirmed} of {self.min_replicas} replicas confirmed the write in"
                f" {self.timeout:g}s: it may not have been kept"
            )
        return result

    def pipeline(self) -> Any:
        """Commands sent together: a MULTI/EXEC transaction on one Redis; on a cluster a plain
        pipeline (each command atomic on its own), as redis-py 8.1's cluster transactions were
        seen to break the client's connections for the calls after them."""
        return self.client.pipeline(transaction=not self.cluster)

    async def scan_keys(self, pattern: str, count: int = 1000) -> list[bytes]:
        """Every key matching ``pattern``, by SCAN (never KEYS); on a cluster, on every master.
        Call it inside :meth:`call`."""
        return [key async for key in self.client.scan_iter(pattern, count=count)]

    async def run_script_batched(self, script: Script, keys: list[str], args: list[Any]) -> Any:
        """Like :meth:`run_script`, but calls made together share one round trip: those of one
        event-loop turn, and those that arrive while the previous round trip is out.

        Each script still runs atomically on its own; the batch only saves the network and
        syscall cost that would otherwise be paid once per decision. The batch's own deadline
        (in :meth:`_flush`) bounds every caller's wait, so no timer is armed per call; a caller
        that is cancelled cancels its future, which the flush then skips.
        """
        self.breaker.check()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if not self._batch:
            self._batch_since = loop.time()
        self._batch.append((script, keys, args, future))
        if self._flusher is None:
            self._flusher = loop.create_task(self._flush_while_pending())
        return await future

    async def _flush_while_pending(self) -> None:
        """One round trip at a time: what arrives while a batch is out goes in the next one.

        Every decision that comes in during a round trip rides on the next, so under load the
        batches grow by themselves and the syscalls per decision shrink; when idle, a decision
        waits for nothing but its own round trip.
        """
        try:
            while self._batch:
                batch, self._batch = self._batch, []
                # STORE_TIMEOUT counts from the arrival of the batch's oldest decision, time
                # spent waiting behind the previous round trip included.
                await self._flush(batch, self._batch_since + self.timeout)
        finally:
            self._flusher = None

    async def _flush(self, batch: list[_Pending], deadline: float) -> None:
        try:
            async with asyncio.timeout_at(deadline):
                try:
                    results = await self._execute(batch)
                except _Stale as stale:
                    log.debug("Redis connection found closed (%s); trying once more", stale)
                    results = await self._execute(batch)
                missing = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
                if missing:
                    # Redis restarted and lost its script cache: load once, run those again.
                    for script in {batch[i][0] for i in missing}:
                        await self.client.script_load(script.source)
                    again = await self._execute([batch[i] for i in missing])
                    for i, result in zip(missing, again, strict=True):
                        results[i] = result
        except (RedisError, OSError, TimeoutError) as error:
            # One failed round trip is one failure, however many decisions rode on it.
            self.breaker.failed(_describe(error))
            failure = StoreUnavailable(_describe(error))
            for *_, future in batch:
                if not future.done():
                    future.set_exception(failure)
            return
        except BaseException:
            for *_, future in batch:
                future.cancel()
            raise
        self.breaker.succeeded()
        for (*_, future), result in zip(batch, results, strict=True):
            if future.done():
                continue
            if isinstance(result, ResponseError):
                future.set_exception(StoreError(f"Redis answered an error: {_describe(result)}"))
            elif isinstance(result, Exception):  # on a cluster: the node of this decision failed
                future.set_exception(StoreUnavailable(_describe(result)))
            else:
                future.set_result(result)

    async def _execute(self, batch: list[_Pending]) -> list[Any]:
        """The whole batch in one write on one pooled connection, then its replies in order.

        Packed by hiredis (C) and written on a connection from redis-py's pool, without redis-py's
        Pipeline: its per-command bookkeeping and pure-Python packing cost more than all the rest
        of a decision (profiled, BENCHMARKS.md). An error reply (NOSCRIPT after a Redis restart)
        is a result, so the caller can retry just those.
        """
        if isinstance(self.client, RedisCluster):
            return await self._execute_on_cluster(batch)
        pool = self.client.connection_pool
        connection = self._connection
        kept = connection is not None
        if connection is None:
            connection = await pool.get_connection()  # type: ignore[no-untyped-call]
            # The batch's own deadline bounds every read (the pool sets no socket timeout).
            self._connection = connection
        results: list[Any] = []
        try:
            await roundtrip(
                connection,
                [
                    ("EVALSHA", script.sha, len(keys), *keys, *args)
                    for script, keys, args, _ in batch
                ],
                results,
            )
        except BaseException as error:
            # Replies may still be on their way: this connection can never be trusted again.
            self._connection = None
            await connection.disconnect(nowait=True)
            await pool.release(connection)
            if kept and not results and isinstance(error, STALE_CONNECTION_ERRORS):
                # Found closed before any reply: the connection died while idle (before the batch
                # reached a running Redis), so a second try cannot count a message twice.
                raise _Stale(_describe(error)) from error
            raise
        return results

    async def _execute_on_cluster(self, batch: list[_Pending]) -> list[Any]:
        """A batch on a cluster: each decision's keys share one slot (KeyLayout's hash tags);
        the decisions for each node go in one write, all nodes at once."""
        client = self.client
        if not isinstance(client, RedisCluster):  # pragma: no cover - only called for a cluster
            raise TypeError("not a cluster client")
        replies = await execute_on_nodes(
            client,
            [
                (keys[0], ("EVALSHA", script.sha, len(keys), *keys, *args))
                for script, keys, args, _ in batch
            ],
        )
        failed = [
            r for r in replies if isinstance(r, RedisConnectionError | OSError | TimeoutError)
        ]
        if failed and (self._slot_reloader is None or self._slot_reloader.done()):
            self._slot_reloader = asyncio.get_running_loop().create_task(self._reload_slots())
        if failed and len(failed) == len(replies):
            raise failed[0]  # every node failed: one failure for the breaker
        return replies

    async def _reload_slots(self) -> None:
        """After a node failed: reload the slot map (a replica may have been promoted), then
        pause a probe interval, so a long failover reloads it twice a second, not per batch."""
        if not isinstance(self.client, RedisCluster):  # pragma: no cover - cluster only
            return
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            async with asyncio.timeout(self.timeout):
                await self.client.nodes_manager.initialize()
        await asyncio.sleep(self.breaker.interval)

    async def ping(self) -> None:
        """Raise StoreUnavailable unless Redis answers."""
        await self.call(self.client.ping)

    async def aclose(self) -> None:
        if self._connection is not None and not isinstance(self.client, RedisCluster):
            await self.client.connection_pool.release(self._connection)
            self._connection = None
        await self.breaker.aclose()
        if self._slot_reloader is not None:
            self._slot_reloader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._slot_reloader
        await close_client(self.client)


async def script_then(
    connection: Any, script: Script, keys: list[str], args: list[Any], then: Command | None
) -> tuple[Any, Any]:
    """Run ``script`` on ``connection`` (loading it there on NOSCRIPT), then ``then`` on the same
    connection; both replies (an error reply as its exception; ``then``'s None when not run)."""
    evalsha = ("EVALSHA", script.sha, len(keys), *keys, *args)
    # ``then`` only once the script has run: a WAIT after a NOSCRIPT would wait in vain.
    [result] = await roundtrip(connection, [evalsha])
    if isinstance(result, NoScriptError):
        result = (await roundtrip(connection, [("SCRIPT", "LOAD", script.source), evalsha]))[1]
    if isinstance(result, Exception) or then is None:
        return result, None
    [answer] = await roundtrip(connection, [then])
    return result, answer


def _describe(error: BaseException) -> str:
    if isinstance(error, TimeoutError):
        return "timed out"
    text = str(error) or type(error).__name__
    return text.splitlines()[0][:200]
