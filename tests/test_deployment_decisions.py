"""The deployment behaviours of one decision, over real sockets and a real Redis.

LIMITED_NETWORKS (with its SASL exception), TOO_BIG_REPLY, MODE=monitor, and the refusal
lines an operator reads: the first per client and window, RCPT lines without a recipient count.
Through a real Postfix the same behaviours are in tests/test_e2e_deployment.py.
"""

from __future__ import annotations

import logging

import pytest

from policyd.refusal_log import RefusalLog, Summary
from tests.support import RedisServer, limit_reply, make_settings, policy_server

DUNNO = "DUNNO"
CAMPUS, OUTSIDE = "10.1.2.3", "192.0.2.77"


async def test_outside_limited_networks_dunno_and_not_counted(redis_server: RedisServer) -> None:
    settings = make_settings(redis_server.url, message_limits="2/1h", limited_networks="10.0.0.0/8")
    async with policy_server(settings) as running:
        client = await running.connect()
        for _ in range(5):
            for state in ("RCPT", "DATA"):
                answer = await client.ask(
                    protocol_state=state, client_address=OUTSIDE, sasl_username=""
                )
                assert answer == DUNNO
        assert await running.log_size(f"{OUTSIDE}/32") == 0
        assert await running.keys() == []  # Redis was not even asked
        # A campus client is limited as always.
        for _ in range(2):
            assert await client.ask(protocol_state="DATA", client_address=CAMPUS) == DUNNO
        assert await client.ask(protocol_state="RCPT", client_address=CAMPUS) == limit_reply(
            CAMPUS, "2 messages", "1h"
        )
        await client.aclose()


async def test_authenticated_client_is_limited_wherever_it_connects_from(
    redis_server: RedisServer,
) -> None:
    settings = make_settings(redis_server.url, message_limits="2/1h", limited_networks="10.0.0.0/8")
    async with policy_server(settings) as running:
        client = await running.connect()
        for _ in range(2):
            answer = await client.ask(
                protocol_state="DATA", client_address=OUTSIDE, sasl_username="alice"
            )
            assert answer == DUNNO
        answer = await client.ask(
            protocol_state="RCPT", client_address=OUTSIDE, sasl_username="alice"
        )
        assert answer == limit_reply(OUTSIDE, "2 messages", "1h")
        await client.aclose()


async def test_too_big_is_permanent_only_when_the_message_alone_exceeds(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(redis_server.url, recipient_limits="10/1h,50/1d")
    async with policy_server(settings) as running:
        client = await running.connect()
        with caplog.at_level(logging.INFO, logger="policyd.decision"):
            answer = await client.ask(
                protocol_state="DATA", client_address=CAMPUS, recipient_count="11"
            )
        assert answer == settings.too_big_reply.format(
            ip=CAMPUS, limit="10 recipients", window="1h"
        )
        assert answer.startswith("550 5.7.1 ")
        (line,) = [r.getMessage() for r in caplog.records if "can never pass" in r.getMessage()]
        assert "one message with 11 recipients exceeds the limit by itself" in line
        # 6 + 6 exceeds 10 only together: the ordinary, temporary LIMIT_REPLY.
        for expected in (DUNNO, limit_reply(CAMPUS, "10 recipients", "1h")):
            answer = await client.ask(
                protocol_state="DATA", client_address=CAMPUS, recipient_count="6"
            )
            assert answer == expected
        await client.aclose()


async def test_too_big_does_not_touch_a_granted_client(redis_server: RedisServer) -> None:
    settings = make_settings(redis_server.url, recipient_limits="10/1h", exempt_networks=CAMPUS)
    async with policy_server(settings) as running:
        client = await running.connect()
        answer = await client.ask(
            protocol_state="DATA", client_address=CAMPUS, recipient_count="500"
        )
        assert answer == DUNNO
        await client.aclose()


async def test_monitor_mode_answers_warn_with_the_reply_and_counts(
    redis_server: RedisServer,
) -> None:
    settings = make_settings(
        redis_server.url, message_limits="2/1h", recipient_limits="5/1h", mode="monitor"
    )
    async with policy_server(settings) as running:
        client = await running.connect()
        answers = [await client.ask(protocol_state="DATA", client_address=CAMPUS) for _ in range(3)]
        assert answers == [DUNNO, DUNNO, "WARN " + limit_reply(CAMPUS, "2 messages", "1h")]
        assert await running.log_size(f"{CAMPUS}/32") == 2  # counted as in enforce mode
        too_big = await client.ask(
            protocol_state="DATA", client_address="10.9.9.9", recipient_count="6"
        )
        assert too_big.startswith("WARN 550 5.7.1 ")
        await client.aclose()


async def test_a_retrying_client_is_logged_once_and_rcpt_lines_show_no_recipients(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(redis_server.url, message_limits="1/1h")
    async with policy_server(settings) as running:
        client = await running.connect()
        assert await client.ask(protocol_state="DATA", client_address=CAMPUS) == DUNNO
        with caplog.at_level(logging.INFO, logger="policyd.decision"):
            for _ in range(20):
                answer = await client.ask(protocol_state="RCPT", client_address=CAMPUS)
                assert answer == limit_reply(CAMPUS, "1 messages", "1h")
        await client.aclose()
    lines = [r.getMessage() for r in caplog.records if r.name == "policyd.decision"]
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"limited client={CAMPUS} ")
    assert "stage=RCPT" in lines[0]
    assert "recipients=" not in lines[0]


def test_refusal_log_first_then_summary_per_client_and_limit() -> None:
    refusals = RefusalLog()
    assert refusals.refused("a", "3/1h messages", 3600, 1000.0)
    assert [refusals.refused("a", "3/1h messages", 3600, 1000.0 + i) for i in range(19)] == [
        False
    ] * 19
    assert refusals.refused("b", "3/1h messages", 3600, 1001.0)  # another client
    assert refusals.refused("a", "10/1m messages", 60, 1002.0)  # another limit
    assert refusals.due(1500.0) == []  # nothing ended yet
    # The hour has passed: one summary for "a", nothing for the clients refused only once.
    assert refusals.due(1000.0 + 3600) == [Summary("a", "3/1h messages", 1000.0, 19)]
    # A refusal after the window is logged in full again.
    assert refusals.refused("a", "3/1h messages", 3600, 5000.0)


def test_refusal_log_keeps_the_count_of_a_period_replaced_before_a_sweep() -> None:
    refusals = RefusalLog()
    refusals.refused("a", "1/1m messages", 60, 0.0)
    refusals.refused("a", "1/1m messages", 60, 1.0)
    assert refusals.due(2.0) == []
    assert refusals.refused("a", "1/1m messages", 60, 61.0)  # the next period, before a sweep
    assert refusals.due(62.0) == [Summary("a", "1/1m messages", 0.0, 1)]
    assert refusals.due(63.0, everything=True) == []


def test_refusal_log_says_when_nothing_can_be_due() -> None:
    """The decider asks for summaries only while the log tracks something: from the first
    refusal until the sweep that ends its period (and any summary waiting) is done."""
    refusals = RefusalLog()
    assert not refusals.tracking
    refusals.refused("a", "1/1m messages", 60, 0.0)
    assert refusals.tracking
    refusals.refused("a", "1/1m messages", 60, 1.0)
    assert refusals.due(30.0) == []
    assert refusals.tracking  # the period is not over
    assert refusals.due(61.0) == [Summary("a", "1/1m messages", 0.0, 1)]
    assert not refusals.tracking


async def test_pending_summaries_are_logged_at_stop(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(redis_server.url, message_limits="1/1h")
    async with policy_server(settings) as running:
        client = await running.connect()
        await client.ask(protocol_state="DATA", client_address=CAMPUS)
        for _ in range(5):
            await client.ask(protocol_state="RCPT", client_address=CAMPUS)
        await client.aclose()
        with caplog.at_level(logging.INFO, logger="policyd.decision"):
            running.decider.flush()
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("refused ")]
    assert line.startswith(f"refused network={CAMPUS}/32 4 more time(s) by limit 1/1h messages")
