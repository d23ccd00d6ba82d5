"""Reply settings are Postfix access(5) actions (issue 9, item 9).

``LIMIT_REPLY=Too much mail from {ip}`` (no action) and ``ON_STORE_ERROR=TEMPFAIL`` used to pass
``check`` and SIGHUP; Postfix then logged "unknown smtpd restriction" and answered every
affected message ``451 4.3.5 Server configuration error``. Now they are refused at start, in
``check`` and on SIGHUP.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from ratelimit.actions import check_action
from smtp_whitelist.settings import DEFAULT_LIMIT_REPLY
from tests.support import (
    PolicydProcess,
    RedisServer,
    assert_second_message_limited,
    clean_env,
    run_cli,
    wait_for,
)

VALID = [
    "DUNNO",
    "dunno",  # Postfix matches action names without regard to case
    "OK",
    "450 4.7.1 Too much mail from 192.0.2.1",
    "451 4.3.0 Try again later",
    "554 5.7.1",
    "REJECT",
    "REJECT too much mail",
    "DEFER",
    "DEFER try later",
    "DEFER_IF_PERMIT too much mail",
    "DEFER_IF_REJECT",
    "HOLD",
    "HOLD over the limit",
    "WARN over the limit",
    "INFO counted",
    "DISCARD",
    "FILTER smtp:[127.0.0.1]:10025",
    "REDIRECT abuse@example.edu",
    "BCC abuse@example.edu",
    "PREPEND X-Limited: yes",
    DEFAULT_LIMIT_REPLY,
]

INVALID = [
    "Too much mail from {ip}",
    "TEMPFAIL",
    "TEMPFAIL try later",
    "",
    " ",
    "450",  # all-numerical: Postfix reads it as OK
    "250 OK",
    "4.7.1 slow down",
    "45 slow down",
    "4500 slow down",
    "DUNNO please",
    "OK fine",
    "FILTER",
    "REDIRECT ",
    "PERMIT",
    "reject_unauth_destination",
    "450 4.7.1 one\nline two",
    " DUNNO",
]


@pytest.mark.parametrize("action", VALID)
def test_postfix_actions_are_accepted(action: str) -> None:
    check_action(action)


@pytest.mark.parametrize("action", INVALID)
def test_anything_else_is_refused_with_a_reason(action: str) -> None:
    with pytest.raises(ValueError, match=r".") as raised:
        check_action(action)
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize(
    ("name", "value"),
    [("LIMIT_REPLY", "Too much mail from {ip}"), ("ON_STORE_ERROR", "TEMPFAIL")],
)
@pytest.mark.parametrize("command", ["check", "policyd"])
def test_check_and_start_refuse_an_action_postfix_does_not_know(
    redis_server: RedisServer, name: str, value: str, command: str
) -> None:
    env = clean_env(redis_url=redis_server.url, **{name.lower(): value})
    result = run_cli(command, env=env)
    assert result.returncode == 2, result
    [line] = result.stderr.splitlines()
    assert f"SMTP_WHITELIST_{name}" in line
    assert "access(5)" in line


async def test_sighup_keeps_the_running_reply(redis_server: RedisServer, tmp_path: Path) -> None:
    path = tmp_path / "site.env"
    path.write_text("SMTP_WHITELIST_MESSAGE_LIMITS=1/1h\n")
    daemon = PolicydProcess(tmp_path, redis_url=redis_server.url, env_file=str(path)).start()
    try:
        path.write_text(
            "SMTP_WHITELIST_MESSAGE_LIMITS=1/1h\n"
            "SMTP_WHITELIST_LIMIT_REPLY=Too much mail from {ip}\n"
            "SMTP_WHITELIST_ON_STORE_ERROR=TEMPFAIL\n"
        )
        assert daemon.process is not None
        daemon.process.send_signal(signal.SIGHUP)
        wait_for(lambda: "SIGHUP" in daemon.log_text(), what="the SIGHUP log lines")
        # The running reply still answers, not the refused one.
        await assert_second_message_limited(daemon.address, "198.51.100.23", DEFAULT_LIMIT_REPLY)
    finally:
        daemon.stop()
    log = daemon.log_text()
    assert "SMTP_WHITELIST_LIMIT_REPLY" in log
    assert "SMTP_WHITELIST_ON_STORE_ERROR" in log
    assert "settings reloaded" not in log
