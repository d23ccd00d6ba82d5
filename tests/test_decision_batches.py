"""Decisions made together are one script call: one EVALSHA, one TIME, the same answers.

Against a real redis-server; Redis' own command statistics count the script calls.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
from collections.abc import AsyncIterator
from ipaddress import ip_address as parse_ip
from typing import Any

import pytest

from ratelimit.connections import build_client
from ratelimit.limiter import Decided, LimitConfig, Limited, Limiter, Mode, Outcome, Passed
from ratelimit.store import KeyLayout, Script, Store, StoreError, StoreUnavailable
from ratelimit.verdicts import ScriptReply, verdict_of
from tests.support import RedisServer, require_tool
from tests.support.settings import make_settings

DECIDE = Script("decide")


def script_calls(redis_server: RedisServer) -> int:
    """EVALSHA calls Redis has run so far (INFO commandstats)."""
    stats = redis_server.cli("INFO", "commandstats")
    found = re.search(r"cmdstat_evalsha:calls=(\d+)", stats)
    return int(found.group(1)) if found else 0


def entries(redis_server: RedisServer, log: str) -> str:
    """The entries in a client's log: its members scored 0 or more (decide.lua keeps its running
    sums beside them, scored below zero)."""
    return redis_server.cli("ZCOUNT", log, "0", "+inf")


def run_batched(
    store: Store, script: Script, shared: list[Any], keys: list[str], args: list[Any]
) -> asyncio.Future[Any]:
    """One batched script call, its reply in a future."""
    future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    store.submit_batched(script, shared, keys, args, future)
    return future


@pytest.fixture
async def store(redis_server: RedisServer) -> AsyncIterator[Store]:
    settings = make_settings(redis_server.url)
    store = Store.from_settings(settings)
    try:
        yield store
    finally:
        await store.aclose()


def limiter_for(store: Store, redis_server: RedisServer, **limits: Any) -> Limiter:
    settings = make_settings(redis_server.url, key_prefix=store.keys.prefix, **limits)
    return Limiter(store, LimitConfig.from_settings(settings))


async def test_decisions_made_together_are_one_script_call(
    store: Store, redis_server: RedisServer
) -> None:
    limiter = limiter_for(store, redis_server, message_limits="5/1m")
    await limiter.count_message(parse_ip("192.0.2.1"), 1)  # loads the script
    before = script_calls(redis_server)
    addresses = [parse_ip(f"198.51.100.{n}") for n in range(1, 41)]
    verdicts = await asyncio.gather(*(limiter.count_message(a, 1) for a in addresses))
    assert script_calls(redis_server) - before == 1
    assert all(isinstance(v, Passed) and v.outcome is Outcome.ACCEPTED for v in verdicts)
    # Each was counted under its own network.
    for address in addresses:
        assert entries(redis_server, store.keys.client_log(f"{address}/32")) == "1"


async def test_one_client_many_times_in_one_batch_is_counted_exactly(
    store: Store, redis_server: RedisServer
) -> None:
    limiter = limiter_for(store, redis_server, message_limits="3/1m", recipient_limits="7/1m")
    await limiter.count_message(parse_ip("192.0.2.1"), 1)  # loads the script
    before = script_calls(redis_server)
    client = parse_ip("203.0.113.9")
    # In one batch, in this order: each decision sees the ones before it.
    verdicts = await asyncio.gather(
        limiter.count_message(client, 2),  # 2 recipients: accepted
        limiter.count_message(client, 5),  # 2 + 5 = 7: accepted
        limiter.count_message(client, 1),  # 8 recipients: refused by the recipient limit
        limiter.count_message(client, 0),  # 2 messages, 7 recipients: accepted
        limiter.count_message(client, 0),  # the fourth message: refused by the message limit
        limiter.check(client),  # RCPT: already at 3 messages
    )
    assert script_calls(redis_server) - before == 1
    assert [v.outcome for v in verdicts] == [
        Outcome.ACCEPTED,
        Outcome.ACCEPTED,
        Outcome.LIMITED,
        Outcome.ACCEPTED,
        Outcome.LIMITED,
        Outcome.LIMITED,
    ]
    by_recipients, by_messages, at_rcpt = verdicts[2], verdicts[4], verdicts[5]
    assert isinstance(by_recipients, Limited)
    assert by_recipients.used == 7
    assert str(by_recipients.limit) == "7/1m"
    assert isinstance(by_messages, Limited)
    assert by_messages.used == 3
    assert isinstance(at_rcpt, Limited)
    assert str(at_rcpt.limit) == "3/1m"
    # Three accepted messages in the log, each its own member although all share one TIME.
    assert entries(redis_server, store.keys.client_log("203.0.113.9/32")) == "3"
    usage = await limiter.usage(client)
    assert [u.used for u in usage] == [3, 7]


async def test_calls_with_different_limits_in_one_batch_are_each_judged_by_their_own(
    store: Store, redis_server: RedisServer
) -> None:
    """A SIGHUP can change the limits between two calls of one batch: each call keeps the
    limits it was made with (one script call per set of limits)."""
    strict = LimitConfig.from_settings(make_settings(redis_server.url, message_limits="1/1m"))
    loose = LimitConfig.from_settings(make_settings(redis_server.url, message_limits="5/1m"))
    keys = store.keys

    def call(ip: str, config: LimitConfig) -> asyncio.Future[Any]:
        network = f"{ip}/32"
        return run_batched(
            store,
            DECIDE,
            config.script_args(),
            [keys.client_log(network), keys.grant(ip, network), keys.offender(ip, network)],
            ["count", 1],
        )

    replies = await asyncio.gather(
        *(call("192.0.2.7", strict) for _ in range(3)),
        *(call("192.0.2.8", loose) for _ in range(3)),
    )
    # Accepted: the bare code; refused: [code, index, used, compromised].
    assert replies == [
        Decided.ACCEPTED,
        [Decided.MESSAGE_LIMIT, 1, 1, 0],
        [Decided.MESSAGE_LIMIT, 1, 1, 0],
        Decided.ACCEPTED,
        Decided.ACCEPTED,
        Decided.ACCEPTED,
    ]


async def test_a_grant_inside_a_batch_lets_only_its_own_address_through(
    store: Store, redis_server: RedisServer
) -> None:
    limiter = limiter_for(store, redis_server, message_limits="1/1m")
    granted, other = parse_ip("192.0.2.20"), parse_ip("192.0.2.21")
    redis_server.cli("SET", store.keys.grant("192.0.2.20", "192.0.2.20/32"), "{}", "EX", "60")
    verdicts = await asyncio.gather(
        *(limiter.count_message(granted, 1) for _ in range(3)),
        *(limiter.count_message(other, 1) for _ in range(3)),
    )
    assert [v.outcome for v in verdicts] == [Outcome.WHITELISTED] * 3 + [
        Outcome.ACCEPTED,
        Outcome.LIMITED,
        Outcome.LIMITED,
    ]


async def test_windows_read_once_or_counted_give_the_same_counts(
    store: Store, redis_server: RedisServer
) -> None:
    """A message limit longer than every recipient window is counted with ZCOUNT, shorter ones
    from the recipient window read: both agree with what was sent."""
    limiter = limiter_for(store, redis_server, message_limits="3/2s,4/1h", recipient_limits="6/2s")
    client = parse_ip("192.0.2.30")
    assert [(await limiter.count_message(client, 2)).outcome for _ in range(4)] == [
        Outcome.ACCEPTED,
        Outcome.ACCEPTED,
        Outcome.ACCEPTED,
        Outcome.LIMITED,  # 3/2s (and 6 recipients in 2 s)
    ]
    assert [u.used for u in await limiter.usage(client)] == [3, 3, 6]
    await asyncio.sleep(2.1)  # the 2 s windows are empty again; the hour still holds 3
    assert [u.used for u in await limiter.usage(client)] == [0, 3, 0]
    verdicts = [await limiter.count_message(client, 1) for _ in range(2)]
    assert [v.outcome for v in verdicts] == [Outcome.ACCEPTED, Outcome.LIMITED]
    refused = verdicts[1]
    assert isinstance(refused, Limited)
    assert str(refused.limit) == "4/1h"
    assert refused.used == 4


async def test_entries_past_the_longest_window_are_dropped_when_the_next_is_counted(
    store: Store, redis_server: RedisServer
) -> None:
    limiter = limiter_for(store, redis_server, message_limits="5/1s", recipient_limits="9/2s")
    client = parse_ip("192.0.2.31")
    key = store.keys.client_log("192.0.2.31/32")
    for _ in range(3):
        await limiter.count_message(client, 3)
    assert entries(redis_server, key) == "3"
    assert (await limiter.count_message(client, 1)).outcome is Outcome.LIMITED  # 10 > 9 in 2 s
    await asyncio.sleep(2.1)
    assert (await limiter.check(client)).outcome is Outcome.ACCEPTED  # reading drops nothing
    assert entries(redis_server, key) == "3"
    assert (await limiter.count_message(client, 9)).outcome is Outcome.ACCEPTED
    assert entries(redis_server, key) == "1"  # the three stale ones went as it was added


class Waiter:
    """A VerdictWaiter that keeps what it is given (the policy server's decisions are these)."""

    def __init__(self) -> None:
        self.verdicts: list[Any] = []
        self.expected = 0
        self.all_in = asyncio.Event()

    def decided(self, verdict: Any) -> None:
        self.verdicts.append(verdict)
        if len(self.verdicts) >= self.expected:
            self.all_in.set()

    def failed(self, error: Any) -> None:
        self.decided(error)

    def cancelled(self) -> bool:
        return False


async def test_callers_cancelled_while_their_batch_is_out_cost_the_others_nothing(
    store: Store, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Replies are handed out without asking each slot first whether it was cancelled: a
    future cancelled meanwhile refuses its reply quietly, a decision awaited by a cancelled
    task drops it, and every other call of the batch gets its own."""
    limiter = limiter_for(store, redis_server, message_limits="100/1m")
    await limiter.count_message(parse_ip("192.0.2.1"), 1)  # opens the connection, loads the script
    config = limiter.config
    keys = store.keys
    futures = [
        run_batched(
            store,
            DECIDE,
            config.script_args(),
            [
                keys.client_log(f"{ip}/32"),
                keys.grant(ip, f"{ip}/32"),
                keys.offender(ip, f"{ip}/32"),
            ],
            ["count", 1],
        )
        for ip in (f"198.51.100.{n}" for n in range(4))
    ]
    tasks = [
        asyncio.create_task(limiter.count_message(parse_ip(f"203.0.113.{n}"), 1)) for n in range(4)
    ]
    await asyncio.sleep(0)  # the tasks submit their decisions
    await asyncio.sleep(0)  # the batch is written
    futures[1].cancel()
    tasks[2].cancel()
    with caplog.at_level("ERROR", logger="ratelimit.store"):
        done = await asyncio.gather(*futures, *tasks, return_exceptions=True)
    assert caplog.records == []
    raw, awaited = done[:4], done[4:]
    assert [type(d).__name__ for d in raw] == ["int", "CancelledError", "int", "int"]
    assert [type(d).__name__ for d in awaited] == ["Passed", "Passed", "CancelledError", "Passed"]
    # Redis decided every call of the batch (the cancelled ones were already on their way).
    assert int(redis_server.cli("ZCOUNT", keys.client_log("198.51.100.1/32"), "0", "+inf")) == 1


async def test_decisions_on_a_kept_connection_wake_no_task(
    store: Store, redis_server: RedisServer
) -> None:
    """Issue 13: a decision completes by callback from its batch's reply. Once the connection
    to Redis is open, deciding creates no asyncio task at all, however many batches it takes."""
    limiter = limiter_for(store, redis_server, message_limits="100/1m")
    await limiter.count_message(parse_ip("192.0.2.1"), 1)  # opens the connection, loads the script
    loop = asyncio.get_running_loop()
    created: list[Any] = []

    def counting_factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> Any:
        created.append(coro)
        return asyncio.Task(coro, loop=loop, **kwargs)

    waiter = Waiter()
    loop.set_task_factory(counting_factory)
    try:
        for round_ in range(5):  # five batches, one after the other
            waiter.expected = 10 * (round_ + 1)
            waiter.all_in.clear()
            for n in range(10):
                client = limiter.client(f"198.51.100.{n}")
                assert client is not None
                assert limiter.submit(client, Mode.COUNT, 1, waiter) is None
            async with asyncio.timeout(5):  # (wait_for would create a task)
                await waiter.all_in.wait()
    finally:
        loop.set_task_factory(None)
    assert created == []
    assert all(isinstance(v, Passed) and v.outcome is Outcome.ACCEPTED for v in waiter.verdicts)


@pytest.mark.parametrize("database", [0, 3])
async def test_the_kept_connection_is_opened_as_the_url_says(tmp_path: Any, database: int) -> None:
    """Over a UNIX socket, with a password and a database number: the pool opens the connection
    (so every URL form works as elsewhere), then the batches take it over."""
    socket_path = tmp_path / "redis.sock"
    server = RedisServer(
        require_tool("redis-server"),
        tmp_path / "redis",
        ["--save", "", "--appendonly", "no", "--unixsocket", str(socket_path),
         "--unixsocketperm", "700", "--requirepass", "s3cret-for-this-test"],
    )  # fmt: skip
    server.start()
    try:
        url = f"unix://:s3cret-for-this-test@{socket_path}?db={database}"
        settings = make_settings(url, message_limits="2/1m")
        store = Store.from_settings(settings)
        limiter = Limiter(store, LimitConfig.from_settings(settings))
        try:
            client = parse_ip("192.0.2.40")
            verdicts = await asyncio.gather(*(limiter.count_message(client, 1) for _ in range(3)))
            assert [v.outcome for v in verdicts] == [
                Outcome.ACCEPTED,
                Outcome.ACCEPTED,
                Outcome.LIMITED,
            ]
        finally:
            await store.aclose()
        key = store.keys.client_log("192.0.2.40/32")
        zcard = server.cli(
            "-a",
            "s3cret-for-this-test",
            "--no-auth-warning",
            "-n",
            str(database),
            "ZCOUNT",
            key,
            "0",
            "+inf",
        )
        assert zcard == "2"
    finally:
        server.stop()


async def test_connections_redis_closed_while_idle_go_back_to_the_pool(
    redis_server: RedisServer,
) -> None:
    """Each time Redis drops the batches' idle connection (its `timeout`, CLIENT KILL, a
    restart) the next decision opens another: the dropped one must go back to the pool, or a
    pool of two is used up after two such events and every decision after fails."""
    settings = make_settings(redis_server.url, message_limits="100/1m")
    store = Store(
        build_client(settings.redis_url, settings.store_timeout, 2),
        KeyLayout(settings.key_prefix),
        settings.store_timeout,
    )
    limiter = Limiter(store, LimitConfig.from_settings(settings))
    try:
        client = parse_ip("192.0.2.50")
        for _ in range(5):
            assert (await limiter.count_message(client, 1)).outcome is Outcome.ACCEPTED
            redis_server.cli("CLIENT", "KILL", "TYPE", "normal")
            await asyncio.sleep(0.05)  # the close reaches the link while it is idle
        assert (await limiter.count_message(client, 1)).outcome is Outcome.ACCEPTED
    finally:
        await store.aclose()


async def test_a_store_closed_with_a_batch_out_opens_no_connection_after(
    redis_server: RedisServer,
) -> None:
    """At shutdown the batches' connection is closed under a batch still waiting for Redis:
    that batch fails (StoreUnavailable, as any outage), and no connection is opened again."""
    settings = make_settings(redis_server.url, message_limits="5/1m")
    store = Store.from_settings(settings)
    limiter = Limiter(store, LimitConfig.from_settings(settings))
    client = parse_ip("192.0.2.70")
    await limiter.count_message(client, 1)  # the connection is open and has served
    redis_server.cli("CLIENT", "PAUSE", "800", "WRITE")  # the script writes: it waits
    pending = asyncio.ensure_future(limiter.count_message(client, 1))
    await asyncio.sleep(0.1)
    await store.aclose()
    with pytest.raises(StoreUnavailable):
        await asyncio.wait_for(pending, 2)
    await asyncio.sleep(1.0)  # the pause is over: a connection opened meanwhile would show
    connected = redis_server.cli("CLIENT", "LIST").splitlines()
    assert len(connected) == 1, connected  # redis-cli's own
    assert entries(redis_server, store.keys.client_log("192.0.2.70/32")) == "1"


async def test_a_batch_that_cannot_be_sent_fails_alone(
    store: Store, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A bug that makes a batch unpackable fails that batch's decisions as an outage (logged
    with its traceback); the decisions after it are made as ever."""
    limiter = limiter_for(store, redis_server, message_limits="5/1m")
    client = parse_ip("192.0.2.80")
    assert (await limiter.count_message(client, 1)).outcome is Outcome.ACCEPTED
    network = "192.0.2.81/32"
    keys = [store.keys.client_log(network), store.keys.grant("192.0.2.81", network), "x"]
    unpackable = run_batched(store, DECIDE, [object()], keys, ["count", 1])
    with pytest.raises(StoreUnavailable):
        await asyncio.wait_for(unpackable, 2)
    assert "could not be packed" in caplog.text
    verdict = await asyncio.wait_for(limiter.count_message(client, 1), 2)
    assert verdict.outcome is Outcome.ACCEPTED


@pytest.mark.parametrize("reply", [[9], b"not a list", [2, 7, 0, 0], None])
def test_a_reply_decide_lua_does_not_give_fails_that_decision_answered(reply: Any) -> None:
    """Pure: a reply that is not decide.lua's (index 7 of a single limit, a code it never
    answers, not a list) reaches the decision as a store error, so it is answered (by
    ON_STORE_ERROR) instead of waiting for ever."""
    config = LimitConfig.from_settings(
        make_settings("redis://127.0.0.1:1/0", message_limits="5/1m")
    )
    waiter = Waiter()
    waiter.expected = 1
    accepted = Passed(Outcome.ACCEPTED, "192.0.2.90/32")
    ScriptReply(config, accepted, waiter).set_result(reply)
    [outcome] = waiter.verdicts
    assert isinstance(outcome, StoreError)
    assert "unreadable reply from decide.lua" in str(outcome)


def test_a_networks_accepted_verdict_is_shared_and_the_others_name_its_network() -> None:
    """Pure: the accepted verdict the limiter made for a client network is the verdict of its
    every accepted decision (no object per decision on the hot path); a whitelisted or refused
    one is made from the reply and names the same network."""
    config = LimitConfig.from_settings(
        make_settings("redis://127.0.0.1:1/0", message_limits="5/1m", recipient_limits="9/1h")
    )
    accepted = Passed(Outcome.ACCEPTED, "192.0.2.0/24")
    assert verdict_of(config, accepted, 0) is accepted
    whitelisted = verdict_of(config, accepted, 1)
    assert whitelisted == Passed(Outcome.WHITELISTED, "192.0.2.0/24")
    refused = verdict_of(config, accepted, [Decided.RECIPIENT_LIMIT, 1, 8, 0])
    assert isinstance(refused, Limited)
    assert (refused.network, refused.limit.count, refused.used) == ("192.0.2.0/24", 9, 8)
    # Anything else is no reply of decide.lua: an error (the decision fails as a store error),
    # never a verdict guessed from it.
    for unreadable in (2, 4, [0, 0, 0, 0], [Decided.USAGE, 1, 2, 3], [2, 1]):
        with pytest.raises((ValueError, TypeError)):
            verdict_of(config, accepted, unreadable)


async def test_a_batch_times_out_at_its_own_deadline_after_earlier_batches(
    redis_server: RedisServer,
) -> None:
    """STORE_TIMEOUT counts from a batch's own oldest decision, though one timer serves every
    batch: a batch sent after earlier ones, into a Redis that then hangs, fails neither at an
    earlier batch's deadline nor never."""
    timeout = 0.6
    store = Store.from_settings(make_settings(redis_server.url, store_timeout=timeout))
    limiter = limiter_for(store, redis_server, message_limits="100/1m")
    loop = asyncio.get_running_loop()
    assert redis_server.process is not None
    try:
        for n in range(3):  # earlier batches, answered: the timer was armed by the first
            verdict = await limiter.count_message(parse_ip(f"192.0.2.{n}"), 1)
            assert verdict.outcome is Outcome.ACCEPTED
        await asyncio.sleep(timeout / 2)
        os.kill(redis_server.process.pid, signal.SIGSTOP)
        try:
            sent = loop.time()
            with pytest.raises(StoreUnavailable, match="timed out"):
                await asyncio.wait_for(limiter.count_message(parse_ip("192.0.2.9"), 1), 5)
            waited = loop.time() - sent
        finally:
            os.kill(redis_server.process.pid, signal.SIGCONT)
        # Not at the first batch's deadline (half a timeout after this one was sent)...
        assert waited >= timeout * 0.9
        # ...and the next batch, on a fresh connection, is answered.
        verdict = await asyncio.wait_for(limiter.count_message(parse_ip("192.0.2.10"), 1), 5)
        assert verdict.outcome is Outcome.ACCEPTED
    finally:
        await store.aclose()
