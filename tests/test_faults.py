"""Issue 5: faults injected for real under a running daemon — Redis stopped, slow, paused,
restarted with persistence — and the daemon's lifecycle (SIGHUP, SIGTERM)."""

from __future__ import annotations

import asyncio
import ipaddress
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ratelimit.grants import Grants
from ratelimit.limiter import LimitConfig, Limiter, Outcome
from ratelimit.store import Store
from smtp_whitelist.settings import Settings
from tests.support import (
    BlockingPolicyClient,
    RedisServer,
    Service,
    free_port,
    policy_request,
    require_tool,
    wait_for,
)

STORE_ERROR = "451 4.3.0 store down, try later"


class Harness:
    """One ``smtp-whitelist policyd`` process under test, its Redis, and the connections the
    test opens to it; all stopped and closed after the test."""

    def __init__(self, redis: RedisServer, directory: Path) -> None:
        self.redis = redis
        self.directory = directory
        self.port = free_port()
        self.daemon: Service | None = None
        self.clients: list[BlockingPolicyClient] = []

    def start(self, **settings: str) -> Service:
        """Start the daemon with these settings on top of the fault tests' defaults."""
        base = {
            "REDIS_URL": self.redis.url,
            "POLICY_LISTEN": f"127.0.0.1:{self.port}",
            "MESSAGE_LIMITS": "3/1h",
            "RECIPIENT_LIMITS": "",
            "ON_STORE_ERROR": STORE_ERROR,
            "STORE_TIMEOUT": "0.5",
        }
        self.daemon = Service("policyd", base | settings, self.directory / "policyd")
        return self.daemon.start()

    def connect(self) -> BlockingPolicyClient:
        self.clients.append(BlockingPolicyClient("127.0.0.1", self.port))
        return self.clients[-1]

    def close(self) -> None:
        for client in self.clients:
            client.close()
        if self.daemon is not None:
            self.daemon.stop()


@pytest.fixture
def harness(redis_server: RedisServer, tmp_path: Path) -> Iterator[Harness]:
    running = Harness(redis_server, tmp_path)
    yield running
    running.close()


def _timed(client: BlockingPolicyClient, request: bytes) -> tuple[str | None, float]:
    began = time.monotonic()
    action = client.ask(request)
    return action, time.monotonic() - began


def test_starts_while_redis_is_down_and_limits_apply_once_it_is_up(harness: Harness) -> None:
    harness.redis.stop()
    daemon = harness.start()
    client = harness.connect()
    for _ in range(5):
        assert client.ask(policy_request("10.0.0.1")) == STORE_ERROR
    assert "Redis unreachable at start" in daemon.log()
    # The start-up line an operator reads the later decision lines by.
    assert (
        f"limits: messages 3/1h, recipients none, per /32 (IPv4) and /64 (IPv6); exempt none;"
        f" on a Redis failure {STORE_ERROR}" in daemon.log()
    )

    harness.redis.start()
    # The breaker's own probe finds Redis; no restart of the daemon, same connection.
    wait_for(lambda: client.ask(policy_request("10.0.0.2")) == "DUNNO", what="Redis back")
    answers = [client.ask(policy_request("10.0.0.3")) for _ in range(4)]
    assert answers[:3] == ["DUNNO"] * 3
    assert answers[3] is not None
    assert answers[3].startswith("450 4.7.1")


def test_paused_redis_opens_the_breaker_then_answers_at_once_and_logs_one_warning(
    harness: Harness,
) -> None:
    daemon = harness.start(STORE_TIMEOUT="1.0")
    client = harness.connect()
    assert client.ask(policy_request("10.0.1.1")) == "DUNNO"
    # The first DATA request also clears the "no DATA-stage requests" note, in the background
    # (a DEL): let it finish first, or it may time out in the pause too and count as one of
    # the three failures that open the breaker.
    wait_for(
        lambda: "cmdstat_del:" in harness.redis.cli("INFO", "commandstats"),
        what="the stage note cleared",
    )

    # Paused long enough for the ten requests below (3 x 1 s, then fast); it lifts by itself
    # (a new redis-cli could not UNPAUSE: its own connection handshake would be paused too).
    harness.redis.cli("CLIENT", "PAUSE", "5000", "ALL")
    timings = [_timed(client, policy_request("10.0.1.1")) for _ in range(10)]
    assert [action for action, _ in timings] == [STORE_ERROR] * 10
    # Before the breaker opens each request waits out STORE_TIMEOUT (1 s); after it opens,
    # none of them does: that difference is the breaker, not a speed target.
    spent = [round(seconds, 3) for _, seconds in timings]
    assert all(0.9 < s < 1.9 for s in spent[:3]), spent
    assert all(s < 0.5 for s in spent[3:]), spent
    log = daemon.log()
    assert log.count("circuit open") == 1
    assert log.count("store unavailable") == 1

    wait_for(lambda: client.ask(policy_request("10.0.1.2")) == "DUNNO", what="breaker closed")
    wait_for(lambda: "circuit closed" in daemon.log(), what="closing logged")


def test_slow_redis_is_answered_within_store_timeout(harness: Harness) -> None:
    harness.start()
    client = harness.connect()
    assert client.ask(policy_request("10.0.2.1")) == "DUNNO"
    sleeper = threading.Thread(target=harness.redis.cli, args=("DEBUG", "SLEEP", "3"))
    sleeper.start()
    time.sleep(0.2)
    try:
        action, spent = _timed(client, policy_request("10.0.2.1"))
        assert action == STORE_ERROR
        assert spent < 1.5, spent  # STORE_TIMEOUT is 0.5 s; Redis sleeps 3 s
    finally:
        sleeper.join()
    wait_for(lambda: client.ask(policy_request("10.0.2.3")) == "DUNNO", what="Redis awake")


def test_redis_restart_with_aof_keeps_grants_their_ttl_and_counts(tmp_path: Path) -> None:
    persistent = RedisServer(
        require_tool("redis-server"),
        tmp_path / "aof",
        ["--appendonly", "yes", "--appendfsync", "always", "--save", ""],
    )
    persistent.start()
    try:
        settings = Settings(redis_url=persistent.url, message_limits="5/1h")
        granted = ipaddress.ip_address("198.18.0.10")
        counted = ipaddress.ip_address("198.18.0.11")

        async def before() -> None:
            store = Store.from_settings(settings)
            await Grants(store, settings).grant(
                granted,
                user="alice",
                role="staff",
                status="normal",
                source="cli",
                max_per_user=None,
                ttl=600,
            )
            limiter = Limiter(store, LimitConfig.from_settings(settings))
            for _ in range(3):
                assert (await limiter.count_message(counted, 1)).outcome is Outcome.ACCEPTED
            await store.aclose()

        asyncio.run(before())
        persistent.kill()  # a crash, not a clean shutdown: only the AOF can bring it back
        persistent.start()

        async def after() -> None:
            store = Store.from_settings(settings)
            grant = await Grants(store, settings).get(granted)
            assert grant is not None
            assert grant.user == "alice"
            assert 590 <= grant.ttl <= 600
            limiter = Limiter(store, LimitConfig.from_settings(settings))
            usage = await limiter.usage(counted)
            assert [u.used for u in usage] == [3, 3]  # 3 messages, 3 recipients
            assert (await limiter.count_message(counted, 1)).outcome is Outcome.ACCEPTED
            assert (await limiter.count_message(counted, 1)).outcome is Outcome.ACCEPTED
            assert (await limiter.count_message(counted, 1)).outcome is Outcome.LIMITED
            assert (await limiter.count_message(granted, 1)).outcome is Outcome.WHITELISTED
            await store.aclose()

        asyncio.run(after())
    finally:
        persistent.stop()


def test_sighup_applies_new_limits_and_reply_without_dropping_connections(harness: Harness) -> None:
    env_file = harness.directory / "swl.env"
    env_file.write_text("SMTP_WHITELIST_MESSAGE_LIMITS=2/1h\n")
    # As systemd's EnvironmentFile= does: the file's lines are also in the environment. The
    # reload must still see the edited file, not the copy taken at start.
    daemon = harness.start(MESSAGE_LIMITS="2/1h", ENV_FILE=str(env_file))
    client = harness.connect()
    answers = [client.ask(policy_request("10.0.3.1")) for _ in range(3)]
    assert answers[:2] == ["DUNNO", "DUNNO"]
    assert answers[2] is not None
    assert answers[2].startswith("450")

    env_file.write_text(
        "SMTP_WHITELIST_MESSAGE_LIMITS=4/1h\n"
        "SMTP_WHITELIST_LIMIT_REPLY=550 5.7.1 stop now {ip} {limit} {window}\n"
        "SMTP_WHITELIST_EXEMPT_NETWORKS=10.0.9.0/24\n"
    )
    daemon.signal(signal.SIGHUP)
    wait_for(lambda: "settings reloaded" in daemon.log(), what="reload logged")
    # Same connection, still open: the new limit (4) lets two more through, then the new text.
    answers = [client.ask(policy_request("10.0.3.1")) for _ in range(3)]
    assert answers == ["DUNNO", "DUNNO", "550 5.7.1 stop now 10.0.3.1 4 messages 1h"]
    assert all(client.ask(policy_request("10.0.9.9")) == "DUNNO" for _ in range(6))

    env_file.write_text("SMTP_WHITELIST_MESSAGE_LIMITS=lots\n")
    daemon.signal(signal.SIGHUP)
    wait_for(lambda: "keeping the running ones" in daemon.log(), what="invalid reload logged")
    assert "SMTP_WHITELIST_MESSAGE_LIMITS" in daemon.log().split("keeping the running ones")[-1]
    assert client.ask(policy_request("10.0.3.1")) == "550 5.7.1 stop now 10.0.3.1 4 messages 1h"
    assert daemon.process is not None
    assert daemon.process.poll() is None


def test_sigterm_exits_zero_promptly_with_idle_connections_open(harness: Harness) -> None:
    daemon = harness.start()
    clients = [harness.connect() for _ in range(20)]
    assert all(c.ask(policy_request("10.0.4.1", state="RCPT")) == "DUNNO" for c in clients)
    began = time.monotonic()
    assert daemon.stop(timeout=10) == 0
    assert time.monotonic() - began < 5
    assert all(c.sock.recv(1) == b"" for c in clients)  # closed cleanly by the server


def test_five_thousand_idle_connections_keep_memory_bounded(harness: Harness) -> None:
    daemon = harness.start(MAX_CONNECTIONS="6000")
    first = harness.connect()
    assert first.ask(policy_request("10.0.5.1")) == "DUNNO"
    before = daemon.rss_kib()
    idle = [harness.connect() for _ in range(5000)]
    # Each one has been accepted: a request on the last still gets its answer.
    assert idle[-1].ask(policy_request("10.0.5.2")) == "DUNNO"
    grown = daemon.rss_kib() - before
    # Per idle connection the daemon keeps a transport, a parser and a timer: a few KiB.
    # Unbounded buffering would show as far more than 10 KiB each.
    assert grown < 5000 * 10, f"{grown} KiB for 5000 idle connections"
    assert first.ask(policy_request("10.0.5.1")) == "DUNNO"


def test_a_client_that_never_reads_its_answers_is_held_back_not_buffered(harness: Harness) -> None:
    # Every answer to the flooder is a 4 KB refusal, larger than its request: unread, the
    # answers pile up faster than requests arrive, which is what backpressure must stop.
    long_reply = "450 4.7.1 " + "x" * 4000 + " {ip}"
    daemon = harness.start(MESSAGE_LIMITS="1/1h", LIMIT_REPLY=long_reply)
    other = harness.connect()
    assert other.ask(policy_request("10.0.6.1", state="RCPT")) == "DUNNO"
    limited = harness.connect()
    assert limited.ask(policy_request("10.0.6.2")) == "DUNNO"  # its one message: now at limit
    before = daemon.rss_kib()
    flooder = harness.connect()
    flooder.sock.setblocking(False)
    request = policy_request("10.0.6.2", state="RCPT")
    burst = request * 200
    sent = 0
    deadline = time.monotonic() + 3.0
    # Pipelined requests, never a read: the daemon must stop reading from this client once its
    # unsent answers pile up (backpressure), so our sends soon block instead of filling its
    # memory with answers nobody reads.
    while time.monotonic() < deadline and sent < 200 * 1024 * 1024:
        try:
            sent += flooder.sock.send(burst)
        except BlockingIOError:
            time.sleep(0.01)
    grown = daemon.rss_kib() - before
    # What the kernel's socket buffers hold is all that may be in flight (a few MB at most).
    assert sent < 64 * 1024 * 1024, f"the daemon kept reading: {sent} bytes accepted"
    assert grown < 30 * 1024, f"{grown} KiB grown while flooded"
    # Everybody else is still served while the flooder is held back.
    assert other.ask(policy_request("10.0.6.1", state="RCPT")) == "DUNNO"


def test_a_request_trickled_byte_by_byte_is_cut_off_after_request_timeout(harness: Harness) -> None:
    daemon = harness.start(REQUEST_TIMEOUT="1", IDLE_TIMEOUT="30")
    trickler = harness.connect()
    request = policy_request("10.0.7.1")
    began = time.monotonic()
    closed_after = None
    # One byte every 0.1 s: each byte is progress, but the whole request is not there after
    # REQUEST_TIMEOUT (1 s), counted from its first byte, so the daemon must close it.
    for byte in request[:60]:
        try:
            trickler.sock.sendall(bytes([byte]))
        except OSError:
            closed_after = time.monotonic() - began
            break
        time.sleep(0.1)
        trickler.sock.settimeout(0.001)
        try:
            if trickler.sock.recv(1) == b"":
                closed_after = time.monotonic() - began
                break
        except TimeoutError:
            pass
        finally:
            trickler.sock.settimeout(10)
    assert closed_after is not None, "a trickled request kept its connection beyond 6 s"
    assert 0.9 < closed_after < 3.0, closed_after
    assert "request not completed" in daemon.log()
    assert harness.connect().ask(policy_request("10.0.7.2")) == "DUNNO"
