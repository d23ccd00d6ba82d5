"""Numbers on input are ASCII digits (issue 9, item 5).

``str.isdigit()`` is true for "²" and "①", which ``int()`` then refuses, and for "١٢", which
``int()`` reads as 12. A ``recipient_count`` like that aborted the policy connection with no
reply; the contract says a count that is not a number counts as 0 recipients and the message is
still counted. The CLI's numbers and the settings' limits and ports follow the same rule.
"""

from __future__ import annotations

import pytest

from policyd.protocol import PolicyRequest
from ratelimit.addresses import parse_ip
from ratelimit.limits import parse_limits
from ratelimit.listen import parse_listen
from tests.support import RedisServer, clean_env, make_settings, policy_server, run_cli

IP = "198.51.100.23"
# Superscript two, circled one, Arabic-Indic 12 and 3, fullwidth 12: all str.isdigit().
NOT_ASCII = ["\u00b2", "\u2460", "\u0661\u0662", "\u0663", "\uff11\uff12"]


@pytest.mark.parametrize("text", NOT_ASCII)
def test_recipient_count_in_other_digits_is_zero(text: str) -> None:
    assert PolicyRequest({"recipient_count": text}).recipient_count == 0
    assert PolicyRequest({"recipient_count": "12"}).recipient_count == 12


@pytest.mark.parametrize("text", NOT_ASCII)
async def test_such_a_message_is_answered_and_counted(redis_server: RedisServer, text: str) -> None:
    settings = make_settings(redis_server.url, message_limits="5/1h", recipient_limits="3/1h")
    async with policy_server(settings) as running:
        client = await running.connect()
        try:
            for _ in range(2):  # the connection lives on: a second request is answered too
                answer = await client.ask(
                    protocol_state="DATA", client_address=IP, recipient_count=text
                )
                assert answer == "DUNNO"
        finally:
            await client.aclose()
        assert await running.log_size(f"{IP}/32") == 2
        address = parse_ip(IP)
        assert address is not None
        usage = await running.limiter.usage(address)
        assert [u.used for u in usage if u.counted.value == "recipients"] == [0]


@pytest.mark.parametrize("text", ["\u0661/1h", "5/\u0663h", "\u00b2/1h"])
def test_limits_take_ascii_digits_only(text: str) -> None:
    with pytest.raises(ValueError, match="COUNT/WINDOW"):
        parse_limits(text)


def test_listen_ports_take_ascii_digits_only() -> None:
    with pytest.raises(ValueError, match="is not host:port"):
        parse_listen("127.0.0.1:\u0661\u0660\u0660\u0663\u0661")


@pytest.mark.parametrize(
    "args",
    [
        ["add", IP, "--ttl", "\u00b2"],
        ["audit", "--last", "\u2460"],
        ["query", IP, "--recipients", "\u0663"],
    ],
)
def test_cli_numbers_in_other_digits_are_bad_usage(
    redis_server: RedisServer, args: list[str]
) -> None:
    result = run_cli(*args, env=clean_env(redis_url=redis_server.url))
    assert result.returncode == 2, result
    assert "is not" in result.stderr
    assert "Traceback" not in result.stderr
