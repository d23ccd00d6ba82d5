"""The policy server over real sockets against a real redis-server (INTERFACE.md's replies table).

The server is built as ``main`` builds it (Store, Limiter, PolicyDecider, PolicyServer) and
listens on loopback port 0; clients speak the protocol with asyncio streams. The cross-process
tests run ``smtp-whitelist policyd`` itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from policyd.protocol import MAX_ATTRIBUTES, MAX_LINE_BYTES, encode_request
from ratelimit.addresses import parse_ip
from ratelimit.grants import Grants
from ratelimit.listen import ListenAddress
from ratelimit.store import KeyLayout
from tests.redis_ha import RedisEndpoint
from tests.support import (
    LOOPBACK_V4,
    LOOPBACK_V6,
    POSTFIX_37_REQUEST,
    PolicyClient,
    PolicydProcess,
    RedisServer,
    RunningServer,
    ask_once,
    elapsed,
    limit_reply,
    make_settings,
    policy_server,
)

DUNNO = "DUNNO"
IP = "198.51.100.23"


def refused(limit: str, window: str, ip: str = IP) -> str:
    return limit_reply(ip, limit, window)


async def send_messages(
    client: PolicyClient, count: int, ip: str = IP, recipients: int = 1
) -> list[str]:
    return [
        await client.ask(protocol_state="DATA", client_address=ip, recipient_count=str(recipients))
        for _ in range(count)
    ]


async def grant(running: RunningServer, ip: str, ttl: int) -> None:
    address = parse_ip(ip)
    assert address is not None
    await Grants(running.store, running.settings).grant(
        address,
        user="alice",
        role="staff",
        status="normal",
        source="test",
        ttl=ttl,
        max_per_user=None,
    )


# -- exact limits ---------------------------------------------------------------------------


async def test_message_limit_is_exact_with_several_windows(redis_server: RedisServer) -> None:
    settings = make_settings(redis_server.url, message_limits="3/1m,5/1h")
    async with policy_server(settings) as running:
        client = await running.connect()
        assert await send_messages(client, 3) == [DUNNO] * 3
        assert await send_messages(client, 2) == [refused("3 messages", "1m")] * 2
        # Refused messages are not counted: both windows hold exactly the 3 accepted.
        usage = await running.limiter.usage(parse_ip(IP))  # type: ignore[arg-type]
        assert [u.used for u in usage] == [3, 3]
        await client.aclose()


async def test_the_longer_window_takes_over(redis_server: RedisServer) -> None:
    # 2/1s and 3/1h: the short window refuses first, frees up, then the long one refuses.
    settings = make_settings(redis_server.url, message_limits="2/1s,3/1h")
    async with policy_server(settings) as running:
        client = await running.connect()
        assert await send_messages(client, 3) == [DUNNO, DUNNO, refused("2 messages", "1s")]
        await asyncio.sleep(1.2)
        assert await send_messages(client, 2) == [DUNNO, refused("3 messages", "1h")]
        await asyncio.sleep(1.2)
        assert await send_messages(client, 1) == [refused("3 messages", "1h")]
        await client.aclose()


async def test_recipient_limit_is_exact_with_several_windows(redis_server: RedisServer) -> None:
    settings = make_settings(redis_server.url, recipient_limits="5/1s,8/1h")
    async with policy_server(settings) as running:
        client = await running.connect()
        assert await send_messages(client, 1, recipients=3) == [DUNNO]
        # 3 + 3 > 5: refused whole, and not counted, so exactly 5 still fits.
        assert await send_messages(client, 1, recipients=3) == [refused("5 recipients", "1s")]
        assert await send_messages(client, 1, recipients=2) == [DUNNO]
        assert await send_messages(client, 1, recipients=1) == [refused("5 recipients", "1s")]
        await asyncio.sleep(1.2)
        assert await send_messages(client, 1, recipients=3) == [DUNNO]  # 8 of 8 in the hour
        assert await send_messages(client, 1, recipients=1) == [refused("8 recipients", "1h")]
        usage = await running.limiter.usage(parse_ip(IP))  # type: ignore[arg-type]
        assert [u.used for u in usage] == [3, 8]
        await client.aclose()


async def test_one_message_with_too_many_recipients(redis_server: RedisServer) -> None:
    settings = make_settings(redis_server.url, message_limits="10/1m", recipient_limits="5/1m")
    async with policy_server(settings) as running:
        client = await running.connect()
        # It can never pass: TOO_BIG_REPLY (permanent), not LIMIT_REPLY.
        too_big = settings.too_big_reply.format(ip=IP, limit="5 recipients", window="1m")
        assert too_big.startswith("550 5.7.1 ")
        assert await send_messages(client, 1, recipients=6) == [too_big]
        assert await send_messages(client, 1, recipients=5) == [DUNNO]
        await client.aclose()


async def test_window_slides(redis_server: RedisServer) -> None:
    # 3/2s. A fixed window would free all 3 slots at once; a sliding one frees each message's
    # slot 2 s after that message.
    settings = make_settings(redis_server.url, message_limits="3/2s")
    async with policy_server(settings) as running:
        client = await running.connect()
        start = time.monotonic()
        assert await send_messages(client, 1) == [DUNNO]
        await asyncio.sleep(1.0)
        assert await send_messages(client, 3) == [DUNNO, DUNNO, refused("3 messages", "2s")]
        await asyncio.sleep(2.3 - elapsed(start))
        # Only the first message left the window: exactly one slot.
        assert await send_messages(client, 2) == [DUNNO, refused("3 messages", "2s")]
        await asyncio.sleep(3.3 - elapsed(start))
        # The two from t=1 s left; the one from t=2.3 s has not.
        assert await send_messages(client, 3) == [DUNNO, DUNNO, refused("3 messages", "2s")]
        await client.aclose()


# -- listeners and client grouping ----------------------------------------------------------


async def test_ipv4_ipv6_and_unix_listeners_share_one_count(redis_server: RedisServer) -> None:
    # Not tmp_path: an AF_UNIX path must fit in 108 bytes, and pytest's can be longer.
    socket_dir = Path(tempfile.mkdtemp(prefix="swl-", dir="/tmp"))
    unix = ListenAddress(None, None, str(socket_dir / "policy.sock"))
    settings = make_settings(redis_server.url, message_limits="3/1m")
    try:
        async with policy_server(settings, [LOOPBACK_V4, LOOPBACK_V6, unix]) as running:
            v4, v6, path = running.server.bound
            assert v4.host == "127.0.0.1"
            assert v6.host == "::1"
            assert path.path == unix.path
            assert oct(os.stat(str(unix.path)).st_mode & 0o777) == "0o660"
            answers = [
                await ask_once(address, protocol_state="DATA", client_address=IP)
                for address in (v4, v6, path, v4)
            ]
            assert answers == [DUNNO, DUNNO, DUNNO, refused("3 messages", "1m")]
        assert not (socket_dir / "policy.sock").exists(), "the socket file is removed on stop"
    finally:
        os.rmdir(socket_dir)


async def test_ipv6_clients_in_one_64_share_a_count(redis_server: RedisServer) -> None:
    settings = make_settings(redis_server.url, message_limits="3/1m")
    async with policy_server(settings, [LOOPBACK_V6]) as running:
        client = await running.connect()
        same = ["2001:db8:1:2::1", "2001:db8:1:2::2", "2001:db8:1:2:ffff:ffff:ffff:fffe"]
        for ip in same:
            assert await send_messages(client, 1, ip=ip) == [DUNNO]
        other = "2001:db8:1:2:abcd::9"
        assert await send_messages(client, 1, ip=other) == [refused("3 messages", "1m", other)]
        assert await send_messages(client, 3, ip="2001:db8:1:3::1") == [DUNNO] * 3
        assert await running.log_size("2001:db8:1:2::/64") == 3
        assert await running.log_size("2001:db8:1:3::/64") == 3
        await client.aclose()


async def test_ipv4_mapped_client_is_the_ipv4_client(redis_server: RedisServer) -> None:
    settings = make_settings(redis_server.url, message_limits="2/1m")
    async with policy_server(settings) as running:
        client = await running.connect()
        assert await send_messages(client, 1, ip=f"::ffff:{IP}") == [DUNNO]
        assert await send_messages(client, 2, ip=IP) == [DUNNO, refused("2 messages", "1m")]
        await client.aclose()


# -- exempt and whitelisted clients --------------------------------------------------------


async def test_exempt_networks_pass_uncounted(redis_server: RedisServer) -> None:
    settings = make_settings(
        redis_server.url, message_limits="1/1m", exempt_networks="192.0.2.0/24,2001:db8:ff::/48"
    )
    async with policy_server(settings) as running:
        client = await running.connect()
        assert await send_messages(client, 5, ip="192.0.2.77", recipients=50) == [DUNNO] * 5
        assert await send_messages(client, 5, ip="2001:db8:ff:1::5") == [DUNNO] * 5
        rcpt = await client.ask(protocol_state="RCPT", client_address="192.0.2.77")
        assert rcpt == DUNNO
        assert await running.keys() == [], "an exempt client never reaches Redis"
        # The limit is live for everyone else.
        assert await send_messages(client, 2) == [DUNNO, refused("1 messages", "1m")]
        await client.aclose()


async def test_whitelisted_client_passes_uncounted_until_the_grant_expires(
    redis_server: RedisServer,
) -> None:
    # /24 counting, so the neighbour below shares the whitelisted client's count.
    settings = make_settings(
        redis_server.url, message_limits="3/1m", recipient_limits="5/1m", ipv4_prefix=24
    )
    network = "198.51.100.0/24"
    async with policy_server(settings) as running:
        await grant(running, IP, ttl=1)
        client = await running.connect()
        assert await send_messages(client, 6, recipients=10) == [DUNNO] * 6
        assert await client.ask(protocol_state="RCPT", client_address=IP) == DUNNO
        assert await running.log_size(network) == 0, "whitelisted mail is not counted"
        # The grant is for the exact address, not the network it is counted under.
        assert await send_messages(client, 1, ip="198.51.100.24") == [DUNNO]
        assert await running.log_size(network) == 1
        grants = Grants(running.store, running.settings)
        deadline = time.monotonic() + 5
        while await grants.get(parse_ip(IP)) is not None:  # type: ignore[arg-type]
            assert time.monotonic() < deadline, "the grant did not expire"
            await asyncio.sleep(0.05)
        # Expired: the limit applies again, and the 6 messages sent meanwhile do not count
        # (1 from the neighbour + 2 = 3).
        assert await send_messages(client, 3) == [DUNNO, DUNNO, refused("3 messages", "1m")]
        await client.aclose()


async def test_grant_lifts_a_limit_already_reached(redis_server: RedisServer) -> None:
    settings = make_settings(redis_server.url, message_limits="1/1m")
    async with policy_server(settings) as running:
        client = await running.connect()
        assert await send_messages(client, 2) == [DUNNO, refused("1 messages", "1m")]
        await grant(running, IP, ttl=60)
        # Effective for the very next request on the same connection.
        assert await send_messages(client, 1) == [DUNNO]
        assert await client.ask(protocol_state="RCPT", client_address=IP) == DUNNO
        await client.aclose()


# -- stages ---------------------------------------------------------------------------------


async def test_rcpt_checks_without_counting(redis_server: RedisServer) -> None:
    settings = make_settings(redis_server.url, message_limits="2/1m", recipient_limits="3/1m")
    async with policy_server(settings) as running:
        client = await running.connect()
        for _ in range(10):
            assert await client.ask(protocol_state="RCPT", client_address=IP) == DUNNO
        assert await running.keys() == [], "RCPT counts nothing"
        assert await send_messages(client, 1, recipients=3) == [DUNNO]
        # At the recipient limit but not a message limit: RCPT only checks message limits.
        assert await client.ask(protocol_state="RCPT", client_address=IP) == DUNNO
        await running.store._client.delete(running.store.keys.client_log(f"{IP}/32"))
        assert await send_messages(client, 2, recipients=0) == [DUNNO, DUNNO]
        rcpt = await client.ask(protocol_state="RCPT", client_address=IP)
        assert rcpt == refused("2 messages", "1m")
        assert await running.log_size(f"{IP}/32") == 2
        await client.aclose()


async def test_bdat_is_counted_like_data(redis_server: RedisServer) -> None:
    settings = make_settings(redis_server.url, message_limits="1/1m")
    async with policy_server(settings) as running:
        client = await running.connect()
        assert await client.ask(protocol_state="BDAT", client_address=IP) == DUNNO
        assert await client.ask(protocol_state="DATA", client_address=IP) == refused(
            "1 messages", "1m"
        )
        await client.aclose()


@pytest.mark.parametrize(
    "state", ["CONNECT", "EHLO", "HELO", "MAIL", "VRFY", "ETRN", "END-OF-MESSAGE", "", "BOGUS"]
)
async def test_other_states_are_dunno(redis_server: RedisServer, state: str) -> None:
    settings = make_settings(redis_server.url, message_limits="1/1m")
    async with policy_server(settings) as running:
        client = await running.connect()
        assert await send_messages(client, 2) == [DUNNO, refused("1 messages", "1m")]
        # Even for a client at its limit, and without counting anything.
        assert await client.ask(protocol_state=state, client_address=IP) == DUNNO
        assert await running.log_size(f"{IP}/32") == 1
        await client.aclose()


@pytest.mark.parametrize(
    "address", [None, "", "unknown", "999.1.1.1", "198.51.100", "fe80::1%eth0", "x" * 300]
)
async def test_missing_or_garbage_client_address_is_dunno(
    redis_server: RedisServer, address: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(redis_server.url, message_limits="1/1m")
    request = dict(POSTFIX_37_REQUEST, protocol_state="DATA", queue_id="4QX7")
    if address is None:
        del request["client_address"]
    else:
        request["client_address"] = address
    async with policy_server(settings) as running:
        client = await running.connect()
        for _ in range(3):
            await client.send(encode_request(request))
            assert await client.reply() == DUNNO
        assert await running.keys() == []
        await client.aclose()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings, "a request without a usable client_address is logged"
    assert "client_address" in warnings[0].getMessage()
    assert "4QX7" in warnings[0].getMessage()


# -- concurrency ------------------------------------------------------------------------------


async def test_50_concurrent_connections_on_one_ip_admit_exactly_n(
    redis_server: RedisEndpoint,
) -> None:
    settings = make_settings(redis_server.url, message_limits="7/1m")
    async with policy_server(settings) as running:
        clients = await asyncio.gather(*(running.connect() for _ in range(50)))
        # Each connection sends 2 messages; 100 requests race for 7 slots.
        answers = await asyncio.gather(*(send_messages(c, 2) for c in clients))
        flat = [a for pair in answers for a in pair]
        assert flat.count(DUNNO) == 7
        assert flat.count(refused("7 messages", "1m")) == 93
        assert await running.log_size(f"{IP}/32") == 7
        await asyncio.gather(*(c.aclose() for c in clients))


async def test_two_daemon_processes_admit_exactly_n_together(
    redis_server: RedisEndpoint, tmp_path: Path
) -> None:
    env = {
        "redis_url": redis_server.url,
        "message_limits": "10/1m",
        "recipient_limits": "",
        "key_prefix": "twoproc:",
        "limit_reply": "450 4.7.1 {limit} per {window}",
    }
    daemons = [PolicydProcess(tmp_path, **env).start(), PolicydProcess(tmp_path, **env).start()]
    try:
        clients = [await PolicyClient.connect(daemons[i % 2].address) for i in range(40)]
        answers = await asyncio.gather(*(send_messages(c, 2) for c in clients))
        flat = [a for pair in answers for a in pair]
        assert flat.count(DUNNO) == 10
        assert flat.count("450 4.7.1 10 messages per 1m") == 70
        await asyncio.gather(*(c.aclose() for c in clients))
    finally:
        for daemon in daemons:
            daemon.stop()
    assert (
        redis_server.cli("ZCOUNT", KeyLayout("twoproc:").client_log(f"{IP}/32"), "0", "+inf")
        == "10"
    )


async def test_many_requests_on_one_persistent_connection(redis_server: RedisServer) -> None:
    settings = make_settings(redis_server.url, message_limits="150/1m")
    async with policy_server(settings) as running:
        client = await running.connect()
        answers = await send_messages(client, 200)
        assert answers == [DUNNO] * 150 + [refused("150 messages", "1m")] * 50
        # Pipelined (more than one request in flight): answered in order, none lost.
        batch = [
            postfix_request_for(state, i)
            for i, state in enumerate(["RCPT", "DATA", "MAIL", "DATA"] * 5)
        ]
        await client.send(b"".join(encode_request(r) for r in batch))
        replies = [await client.reply() for _ in batch]
        expected = {"RCPT": refused("150 messages", "1m"), "DATA": refused("150 messages", "1m")}
        assert replies == [expected.get(r["protocol_state"], DUNNO) for r in batch]
        await client.aclose()


def postfix_request_for(state: str, i: int) -> dict[str, str]:
    return dict(POSTFIX_37_REQUEST, protocol_state=state, queue_id=f"Q{i}", client_address=IP)


# -- malformed input, timeouts, connection cap ----------------------------------------------

MALFORMED = {
    "line without =": b"request=smtpd_access_policy\nprotocol_state DATA\n\n",
    "line over 4 KiB": b"sender=" + b"a" * (MAX_LINE_BYTES + 10) + b"\n\n",
    "request over 64 KiB": b"".join(b"x%d=" % i + b"v" * 4000 + b"\n" for i in range(20)) + b"\n",
    "more than 256 lines": b"".join(b"a%d=1\n" % i for i in range(MAX_ATTRIBUTES + 1)) + b"\n",
}


@pytest.mark.parametrize("kind", list(MALFORMED))
async def test_malformed_input_gets_no_reply_and_a_closed_connection(
    redis_server: RedisServer, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(redis_server.url, message_limits="100/1m")
    async with policy_server(settings) as running:
        good = await running.connect()
        assert await send_messages(good, 1) == [DUNNO]
        bad = await running.connect()
        # A valid request first: answered; the malformed one after it is not.
        await bad.send(encode_request(postfix_request_for("RCPT", 0)))
        assert await bad.reply() == DUNNO
        # The server may close while we are still sending: that is what it should do.
        with contextlib.suppress(ConnectionResetError, BrokenPipeError):
            await bad.send(MALFORMED[kind])
        assert await bad.closed() == b""
        # The other connection, open all along, is still served.
        assert await send_messages(good, 2) == [DUNNO, DUNNO]
        await good.aclose()
        await bad.aclose()
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("malformed policy request" in m and "127.0.0.1" in m for m in messages), messages


async def test_idle_timeout_closes_an_idle_connection(redis_server: RedisServer) -> None:
    settings = make_settings(redis_server.url, idle_timeout=0.5, request_timeout=10)
    async with policy_server(settings) as running:
        busy = await running.connect()
        idle = await running.connect()
        assert await idle.ask() == DUNNO
        # A connection that keeps asking stays open well past the idle timeout...
        for _ in range(6):
            assert await busy.ask() == DUNNO
            await asyncio.sleep(0.25)
        # ...while the idle one was closed, without a word.
        assert await idle.closed() == b""
        assert len(running.server.connections) == 1
        await busy.aclose()
        await idle.aclose()


async def test_request_timeout_closes_a_half_sent_request(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(redis_server.url, idle_timeout=30, request_timeout=0.5)
    async with policy_server(settings) as running:
        slow = await running.connect()
        idle = await running.connect()
        await slow.send(b"request=smtpd_access_policy\nprotocol_state=DA")
        assert await slow.closed() == b""
        # The idle connection (no partial request) is held to IDLE_TIMEOUT only.
        assert await idle.ask() == DUNNO
        await slow.aclose()
        await idle.aclose()
    assert any("request not completed" in r.getMessage() for r in caplog.records)


async def test_max_connections_refuses_the_extra_one_at_once(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(redis_server.url, max_connections=3, message_limits="100/1m")
    async with policy_server(settings) as running:
        admitted = [await running.connect() for _ in range(3)]
        for client in admitted:
            assert await client.ask() == DUNNO
        extra = await running.connect()
        start = time.monotonic()
        assert await extra.closed() == b""
        assert elapsed(start) < 1.0, "refused at once, not after a timeout"
        for client in admitted:
            assert await send_messages(client, 1) == [DUNNO]
        await admitted[0].aclose()
        # A slot is free again once one closes.
        deadline = time.monotonic() + 5
        while len(running.server.connections) > 2:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        again = await running.connect()
        assert await again.ask() == DUNNO
        for client in [*admitted[1:], again, extra]:
            await client.aclose()
    assert any("MAX_CONNECTIONS=3" in r.getMessage() for r in caplog.records)


# -- replies and logs --------------------------------------------------------------------------


async def test_limit_reply_template(redis_server: RedisServer) -> None:
    template = "550 5.7.1 {ip} sent {limit} in {window}; see https://portal.example/{ip}"
    settings = make_settings(
        redis_server.url,
        message_limits="2/90s",
        recipient_limits="3/2h",
        limit_reply=template,
    )
    async with policy_server(settings) as running:
        client = await running.connect()
        v6 = "2001:db8::42"
        assert await send_messages(client, 3, ip=v6) == [
            DUNNO,
            DUNNO,
            f"550 5.7.1 {v6} sent 2 messages in 90s; see https://portal.example/{v6}",
        ]
        # 2 + 2 over 3 (a message of 4 alone would get TOO_BIG_REPLY instead).
        assert await send_messages(client, 1, recipients=2) == [DUNNO]
        assert await send_messages(client, 1, recipients=2) == [
            f"550 5.7.1 {IP} sent 3 recipients in 2h; see https://portal.example/{IP}"
        ]
        await client.aclose()


async def test_limited_decision_is_logged(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    settings = make_settings(redis_server.url, message_limits="1/1m")
    async with policy_server(settings) as running:
        client = await running.connect()
        assert await send_messages(client, 1) == [DUNNO]
        caplog.clear()
        request = postfix_request_for("DATA", 0)
        request.update(queue_id="7F3A2B1C9D", instance="abc.123.9", recipient_count="4")
        await client.send(encode_request(request))
        assert await client.reply() == refused("1 messages", "1m")
        await client.aclose()
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    [line] = [m for m in lines if "limited" in m]
    for part in (
        f"client={IP}",
        "stage=DATA",
        "limit=1/1m messages",
        "used=1",
        "recipients=4",
        "queue_id=7F3A2B1C9D",
        "instance=abc.123.9",
    ):
        assert part in line, (part, line)


# -- the daemon process: SIGTERM and JSON logs -----------------------------------------------


@pytest.fixture
def stopped_redis(redis_server: RedisServer) -> Iterator[RedisServer]:
    """The redis server, for a test that may SIGSTOP it; always continued afterwards."""
    yield redis_server
    if redis_server.process is not None:
        os.kill(redis_server.process.pid, signal.SIGCONT)


async def test_sigterm_answers_in_flight_and_exits_0(
    stopped_redis: RedisServer, tmp_path: Path
) -> None:
    redis = stopped_redis
    daemon = PolicydProcess(
        tmp_path,
        redis_url=redis.url,
        message_limits="5/1m",
        store_timeout="1.5",
        on_store_error="451 4.3.0 try later",
    ).start()
    try:
        client = await PolicyClient.connect(daemon.address)
        assert await client.ask(protocol_state="DATA", client_address=IP) == DUNNO
        # Freeze Redis so the next decision is in flight when SIGTERM comes.
        assert redis.process is not None
        os.kill(redis.process.pid, signal.SIGSTOP)
        await client.send(encode_request(postfix_request_for("DATA", 1)))
        await asyncio.sleep(0.3)
        daemon.terminate()
        start = time.monotonic()
        await asyncio.sleep(0.2)
        # It stopped accepting...
        with pytest.raises(ConnectionRefusedError):
            await PolicyClient.connect(daemon.address)
        # ...but answers the request in flight (the store is stuck, so ON_STORE_ERROR).
        assert await client.reply() == "451 4.3.0 try later"
        assert await client.closed() == b""
        await client.aclose()
        status = await asyncio.to_thread(daemon.wait, 5.0)
        assert status == 0
        assert elapsed(start) < 5.0
    finally:
        daemon.stop()
    assert "SIGTERM" in daemon.log_text()


async def test_sigterm_when_idle_exits_0(redis_server: RedisServer, tmp_path: Path) -> None:
    daemon = PolicydProcess(tmp_path, redis_url=redis_server.url).start()
    try:
        idle = await PolicyClient.connect(daemon.address)
        assert await idle.ask() == DUNNO
        daemon.terminate()
        assert await idle.closed() == b""
        await idle.aclose()
        assert await asyncio.to_thread(daemon.wait, 5.0) == 0
    finally:
        daemon.stop()


async def test_json_logs(redis_server: RedisServer, tmp_path: Path) -> None:
    daemon = PolicydProcess(
        tmp_path,
        redis_url=redis_server.url,
        message_limits="1/1m",
        log_format="json",
        limit_reply="450 4.7.1 over {limit}",
    ).start()
    try:
        client = await PolicyClient.connect(daemon.address)
        assert await send_messages(client, 2) == [DUNNO, "450 4.7.1 over 1 messages"]
        await client.send(b"no equals sign\n\n")
        assert await client.closed() == b""
        await client.aclose()
        daemon.terminate()
        assert await asyncio.to_thread(daemon.wait, 5.0) == 0
    finally:
        daemon.stop()
    lines = [line for line in daemon.log_text().splitlines() if line.strip()]
    entries = [json.loads(line) for line in lines]  # every line is one JSON object
    assert all({"time", "level", "logger", "message"} <= set(e) for e in entries)
    limited = [e for e in entries if e["message"].startswith("limited ")]
    assert len(limited) == 1
    assert limited[0]["level"] == "INFO"
    assert f"client={IP}" in limited[0]["message"]
    assert any(
        e["level"] == "WARNING" and "malformed policy request" in e["message"] for e in entries
    )
