"""Decisions batched onto one Redis round trip and one script call: the policy server's hot path.

A batch script (lua/decide.lua) takes the keys and arguments of many calls after the
arguments they share, and replies with one reply per call: one EVALSHA, one TIME and one
script start per batch instead of per decision. The calls of a batch run in order, atomically
as a whole, so each is as atomic as it was alone. On a Redis Cluster every call's keys share a
hash tag, so the calls are grouped per slot, one script call per slot, and the groups for each
node go in one write (:class:`Batcher`). On a single Redis or Sentinel's master the batches go
on a connection of their own (:mod:`ratelimit.link_batches`); both share the grouping and the
delivery of replies below.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any, Protocol

from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError, ResponseError

from ratelimit.breaker import CircuitBreaker
from ratelimit.errors import StoreError, StoreUnavailable, describe
from ratelimit.node_calls import Command, execute_on_nodes
from ratelimit.scripts import Script

log = logging.getLogger("ratelimit.store")


class ReplySlot(Protocol):
    """Where one call's reply goes: an ``asyncio.Future`` is one; so is a decision that writes
    its answer as soon as the reply is read (no task woken per decision)."""

    def cancelled(self) -> bool: ...
    def set_result(self, result: Any, /) -> None: ...
    def set_exception(self, exception: type | BaseException, /) -> None: ...
    def cancel(self, msg: Any | None = None) -> bool: ...


# One call's keys: any sequence (the limiter remembers each client's as a tuple).
Keys = Sequence[str]
# One call waiting for its batch: the script, the arguments its batch shares (the limits), its
# own keys and arguments, and where its reply goes.
Pending = tuple[Script, list[Any], Keys, list[Any], ReplySlot]


class ScriptCall:
    """One EVALSHA of a batch script: the calls (indices into the batch) it carries."""

    __slots__ = ("args", "calls", "keys", "route", "script", "shared")

    def __init__(self, script: Script, shared: list[Any], route: str) -> None:
        self.script = script
        self.shared = shared
        self.route = route  # a key of its slot: where a cluster sends it
        self.calls: list[int] = []
        self.keys: list[str] = []
        self.args: list[Any] = []

    def command(self) -> Command:
        return ("EVALSHA", self.script.sha, len(self.keys), *self.keys, *self.shared, *self.args)


def script_calls(batch: list[Pending], *, per_slot: bool) -> list[ScriptCall]:
    """The batch as few script calls as it can be: one per script and shared arguments (a SIGHUP
    may change the limits between two calls of one batch), and on a cluster one per slot too."""
    calls: dict[tuple[str, int, int], ScriptCall] = {}
    for index, (script, shared, keys, args, slot) in enumerate(batch):
        if slot.cancelled():  # its caller was cancelled (or went away): nothing to run
            continue
        hash_slot = key_slot(keys[0].encode()) if per_slot else 0
        group = (script.sha, id(shared), hash_slot)
        call = calls.get(group)
        if call is None:
            call = calls[group] = ScriptCall(script, shared, keys[0])
        call.calls.append(index)
        call.keys += keys
        call.args += args
    return list(calls.values())


def deliver_replies(batch: list[Pending], calls: list[ScriptCall], replies: list[Any]) -> None:
    """Each call of the batch gets its reply (or its script call's failure).

    A slot that is a decision writes its answer from here, so its own bug is logged and stops
    there: it must not cost the rest of the batch their replies. A slot is not asked whether it
    was cancelled first (two calls per decision, on the hot path): a future cancelled meanwhile
    refuses the reply with InvalidStateError, and a decision's slot takes its reply anyway."""
    for call, reply in zip(calls, replies, strict=True):
        if isinstance(reply, list) and len(reply) == len(call.calls):
            for index, result in zip(call.calls, reply, strict=True):
                try:
                    batch[index][-1].set_result(result)
                except asyncio.InvalidStateError:
                    pass  # its caller was cancelled meanwhile: nobody waits for the reply
                except Exception:
                    log.exception("delivering a Redis reply failed")
            continue
        failure = _call_failure(reply, len(call.calls))
        for index in call.calls:
            _fail(batch[index][-1], failure)


def fail_all(batch: list[Pending], failure: Exception) -> None:
    for *_, slot in batch:
        _fail(slot, failure)


def _fail(slot: ReplySlot, failure: Exception) -> None:
    """Hand one call its failure (as :func:`deliver_replies` hands one its reply)."""
    try:
        slot.set_exception(failure)
    except asyncio.InvalidStateError:
        pass
    except Exception:
        log.exception("delivering a Redis failure failed")


def _call_failure(reply: Any, calls: int) -> Exception:
    """What the calls of a script call get when it did not reply with one reply per call."""
    if isinstance(reply, ResponseError):
        return StoreError(f"Redis answered an error: {describe(reply)}")
    if isinstance(reply, Exception):  # on a cluster: the node of this slot failed
        return StoreUnavailable(describe(reply))
    return StoreError(f"the batch script answered {reply!r:.80} for {calls} calls")


class Batcher:
    """The batches of one store on a Redis Cluster: one round trip at a time, each script call
    on its slot's master (a single Redis or Sentinel's master: link_batches.LinkBatcher)."""

    def __init__(self, client: RedisCluster, timeout: float, breaker: CircuitBreaker) -> None:
        self.client = client
        self.timeout = timeout
        self.breaker = breaker
        self._batch: list[Pending] = []
        self._batch_since = 0.0  # loop time the oldest decision of the next batch arrived
        self._flusher: asyncio.Task[None] | None = None
        self._slot_reloader: asyncio.Task[None] | None = None

    def submit(
        self, script: Script, shared: list[Any], keys: Keys, args: list[Any], slot: ReplySlot
    ) -> None:
        """One call of a batch script, with the calls made together: those of one event-loop
        turn, and those that arrive while the previous round trip is out. Its reply, or the
        failure of its batch, goes to ``slot`` when read.

        The batch's own deadline (in :meth:`_flush`) bounds every caller's wait, so no timer is
        armed per call; a slot cancelled before its batch is sent is skipped.
        """
        self.breaker.check()
        if not self._batch:
            self._batch_since = asyncio.get_running_loop().time()
        self._batch.append((script, shared, keys, args, slot))
        if self._flusher is None:
            self._flusher = asyncio.get_running_loop().create_task(self._flush_while_pending())

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

    async def _flush(self, batch: list[Pending], deadline: float) -> None:
        calls = script_calls(batch, per_slot=True)
        try:
            async with asyncio.timeout_at(deadline):
                replies = await self._execute(calls)
                missing = [i for i, r in enumerate(replies) if isinstance(r, NoScriptError)]
                if missing:
                    # Redis restarted and lost its script cache: load once, run those again.
                    for script in {calls[i].script for i in missing}:
                        await self.client.script_load(script.source)
                    again = await self._execute([calls[i] for i in missing])
                    for i, reply in zip(missing, again, strict=True):
                        replies[i] = reply
        except (RedisError, OSError, TimeoutError) as error:
            # One failed round trip is one failure, however many decisions rode on it.
            self.breaker.failed(describe(error))
            fail_all(batch, StoreUnavailable(describe(error)))
            return
        except BaseException:
            for *_, slot in batch:
                if not slot.cancelled():
                    slot.cancel()
            raise
        self.breaker.succeeded()
        deliver_replies(batch, calls, replies)

    async def _execute(self, calls: list[ScriptCall]) -> list[Any]:
        """Script calls on a cluster: each carries the calls of one slot (KeyLayout's hash tags);
        the script calls for each node go in one write, all nodes at once. An error reply
        (NOSCRIPT after a restart) is a reply, so the caller can retry just those."""
        client = self.client
        replies = await execute_on_nodes(client, [(call.route, call.command()) for call in calls])
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
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            async with asyncio.timeout(self.timeout):
                await self.client.nodes_manager.initialize()
        await asyncio.sleep(self.breaker.interval)

    async def aclose(self) -> None:
        if self._slot_reloader is not None:
            self._slot_reloader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._slot_reloader
