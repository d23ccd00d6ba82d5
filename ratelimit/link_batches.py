"""Decision batches on a single Redis (or Sentinel's master), on a RedisLink: no task per batch.

A decision batch (batch.py) is one write and one reply per script call. Through redis-py each
batch woke a task, a stream reader and a timeout context, and at a thousand requests a second
a batch is one decision, so that was paid per decision. Here the batch is written on an asyncio
protocol and its replies are parsed by hiredis as they arrive, in ``data_received``, where each
decision's answer is written at once (issue 13).

On a Redis Cluster the batches go through batch.py's own path.

The rules are those of the pooled path before it: one batch in flight at a time; the batch's
deadline (``STORE_TIMEOUT`` from its oldest decision's arrival) bounds it and a timed-out
connection is never used again; a connection that had served before and is found closed
before any reply was read is tried once more on a fresh one within the same deadline (Redis'
idle ``timeout``, a restart, a NAT); NOSCRIPT loads the script and runs those calls again;
READONLY (a Sentinel failover made this master a replica) drops the connection, so the next
batch asks the pool, and through it the sentinels, for the master.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import hiredis
import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, ReadOnlyError, RedisError

from ratelimit.batch import (
    Keys,
    Pending,
    ReplySlot,
    ScriptCall,
    deliver_replies,
    fail_all,
    script_calls,
)
from ratelimit.breaker import CircuitBreaker
from ratelimit.deadline_watch import DeadlineWatch
from ratelimit.errors import StoreUnavailable, describe
from ratelimit.link import LinkLost, RedisLink
from ratelimit.scripts import Script

log = logging.getLogger("ratelimit.store")


class LinkBatcher:
    """The batches of one store on a single Redis (or Sentinel's master), on a RedisLink."""

    def __init__(self, client: aioredis.Redis, timeout: float, breaker: CircuitBreaker) -> None:
        self.client = client
        self.timeout = timeout
        self.breaker = breaker
        self._batch: list[Pending] = []
        self._batch_since = 0.0  # loop time the oldest decision of the next batch arrived
        self._busy = False  # a batch is out (or its connection is being opened)
        self._scheduled = False
        self._link: RedisLink | None = None
        self._tasks: set[asyncio.Task[None]] = set()  # opening and releasing connections
        self._closed = False  # aclose() was called: no connection is opened any more
        self._deadline = DeadlineWatch()  # the batch out's; one timer for every batch

    def submit(
        self, script: Script, shared: list[Any], keys: Keys, args: list[Any], slot: ReplySlot
    ) -> None:
        """As :meth:`ratelimit.batch.Batcher.submit`: the calls of one event-loop turn, and those
        that arrive while a batch is out, go together."""
        self.breaker.check()
        loop = asyncio.get_running_loop()
        if not self._batch:
            self._batch_since = loop.time()
        self._batch.append((script, shared, keys, args, slot))
        if not self._busy and not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._send_next)

    def _send_next(self) -> None:
        self._scheduled = False
        if self._busy or not self._batch:
            return
        batch, self._batch = self._batch, []
        deadline = self._batch_since + self.timeout
        self._busy = True
        link = self._link
        if link is not None and link.lost:
            self._drop(link)  # closed while idle (Redis' timeout, a restart): back to the pool
            link = None
        if link is None and self._closed:
            self._failed(batch, "the store is closed")
        elif link is None:
            self._spawn(self._open_then_send(batch, deadline, retried=False))
        else:
            self._send(link, batch, deadline, retried=False)

    def _send(
        self, link: RedisLink, batch: list[Pending], deadline: float, *, retried: bool
    ) -> None:
        try:
            calls = script_calls(batch, per_slot=False)
            payload = b"".join([hiredis.pack_command(call.command()) for call in calls])
        except Exception:  # a bug (an argument hiredis cannot pack): this batch only
            log.exception("a decision batch could not be packed")
            fail_all(batch, StoreUnavailable("the decision could not be sent to Redis"))
            self._finished()
            return
        if not calls:  # every caller went away
            self._finished()
            return
        self._deadline.watch(deadline, lambda: self._timed_out(link, batch))

        def replied(result: list[Any] | LinkLost) -> None:
            self._deadline.clear()
            if isinstance(result, LinkLost):
                self._lost(link, batch, deadline, result, retried=retried)
            else:
                self._replied(link, batch, calls, result, deadline)

        link.send(payload, len(calls), replied)

    def _replied(
        self,
        link: RedisLink,
        batch: list[Pending],
        calls: list[ScriptCall],
        replies: list[Any],
        deadline: float,
    ) -> None:
        missing = [i for i, r in enumerate(replies) if isinstance(r, NoScriptError)]
        if missing:
            # Redis restarted and lost its script cache: load it and run those calls again, on
            # the same connection, within the same deadline.
            self._reload_scripts(link, batch, calls, replies, missing, deadline)
            return
        self._deliver(link, batch, calls, replies)

    def _deliver(
        self, link: RedisLink, batch: list[Pending], calls: list[ScriptCall], replies: list[Any]
    ) -> None:
        """Every reply of the batch read: hand them out, then send what arrived meanwhile."""
        self.breaker.succeeded()
        deliver_replies(batch, calls, replies)
        if any(isinstance(r, ReadOnlyError) for r in replies):
            self._drop(link)  # no longer the master (Sentinel): ask the pool for it next time
        self._finished()

    def _reload_scripts(
        self,
        link: RedisLink,
        batch: list[Pending],
        calls: list[ScriptCall],
        replies: list[Any],
        missing: list[int],
        deadline: float,
    ) -> None:
        scripts = {calls[i].script.sha: calls[i].script for i in missing}
        commands: list[tuple[Any, ...]] = [("SCRIPT", "LOAD", s.source) for s in scripts.values()]
        commands += [calls[i].command() for i in missing]
        self._deadline.watch(deadline, lambda: self._timed_out(link, batch))

        def reloaded(result: list[Any] | LinkLost) -> None:
            self._deadline.clear()
            if isinstance(result, LinkLost):
                self._lost(link, batch, deadline, result, retried=True)
                return
            for i, reply in zip(missing, result[len(scripts) :], strict=True):
                replies[i] = reply
            self._deliver(link, batch, calls, replies)

        link.send(b"".join([hiredis.pack_command(c) for c in commands]), len(commands), reloaded)

    def _lost(
        self,
        link: RedisLink,
        batch: list[Pending],
        deadline: float,
        lost: LinkLost,
        *,
        retried: bool,
    ) -> None:
        self._drop(link)
        if lost.stale and not retried and not self._closed:
            log.debug("Redis connection found closed (%s); trying once more", lost)
            self._spawn(self._open_then_send(batch, deadline, retried=True))
            return
        self._failed(batch, str(lost))

    def _timed_out(self, link: RedisLink, batch: list[Pending]) -> None:
        link.forget()  # its replies may still come: this connection can never be trusted again
        self._drop(link)
        self._failed(batch, "timed out")

    def _failed(self, batch: list[Pending], why: str) -> None:
        # One failed round trip is one failure, however many decisions rode on it.
        self.breaker.failed(why)
        fail_all(batch, StoreUnavailable(why))
        self._finished()

    def _finished(self) -> None:
        """The batch is answered: send what arrived meanwhile, at once."""
        self._busy = False
        if self._batch:
            self._send_next()

    async def _open_then_send(
        self, batch: list[Pending], deadline: float, *, retried: bool
    ) -> None:
        try:
            async with asyncio.timeout_at(deadline):
                link = await self._open()
        except (RedisError, OSError, TimeoutError) as error:
            self._failed(batch, describe(error))
            return
        except Exception as error:  # a bug: logged, and the next batch still goes out
            log.exception("opening the batches' Redis connection failed")
            self._failed(batch, describe(error))
            return
        except BaseException:
            fail_all(batch, StoreUnavailable("stopped"))
            raise
        self._link = link
        self._send(link, batch, deadline, retried=retried)

    async def _open(self) -> RedisLink:
        """A connection from redis-py's pool (connected, authenticated, the database selected, on
        Sentinel the master's), its transport then read and written by a RedisLink."""
        pool = self.client.connection_pool
        connection = await pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            # One the pool kept open may have been closed by Redis meanwhile: like a kept link,
            # it is tried once more if found closed before any reply.
            kept = connection.is_connected
            if not kept:
                await connection.connect()
            transport = connection._writer.transport
            link = RedisLink(connection, transport.get_protocol())
            link.served = kept
            transport.set_protocol(link)
            link.connection_made(transport)
        except BaseException:
            await connection.disconnect(nowait=True)
            await pool.release(connection)
            raise
        return link

    def _drop(self, link: RedisLink) -> None:
        """Close ``link`` and give its redis-py connection back to the pool, disconnected."""
        if self._link is link:
            self._link = None
        link.close()
        self._spawn(self._release(link))

    async def _release(self, link: RedisLink) -> None:
        with contextlib.suppress(Exception):  # closed already, or closing: nothing to keep
            await link.connection.disconnect(nowait=True)
            await self.client.connection_pool.release(link.connection)

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)  # kept until done: the loop holds tasks only weakly
        task.add_done_callback(self._tasks.discard)

    async def aclose(self) -> None:
        self._closed = True
        self._deadline.close()
        if self._link is not None:
            self._drop(self._link)
        await asyncio.sleep(0)  # the closed link's connection_lost, and what it spawns, run now
        while self._tasks:
            task = self._tasks.pop()
            with contextlib.suppress(BaseException):
                await task
