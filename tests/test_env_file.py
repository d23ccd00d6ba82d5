"""The env file is read strictly (issue 9, items 2 and 3): a line that cannot be parsed, or a
file that is not UTF-8, is a bad setting naming the file and the line — exit 2 at start and in
``check``; on SIGHUP the running settings stay, the log says why in one line, and systemd always
hears READY=1 after RELOADING=1.
"""

from __future__ import annotations

import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from smtp_whitelist.env_file import env_file_problems
from smtp_whitelist.settings import DEFAULT_LIMIT_REPLY
from tests.support import (
    PolicydProcess,
    RedisServer,
    assert_second_message_limited,
    clean_env,
    run_cli,
)

IP = "198.51.100.23"
GOOD = "SMTP_WHITELIST_MESSAGE_LIMITS=1/1h\n"

# Each bad file, and the line its problem is on.
BAD_FILES = {
    "unclosed quote": (
        b'# site settings\n\nSMTP_WHITELIST_MESSAGE_LIMITS="1/1h\nSMTP_WHITELIST_IPV4_PREFIX=32\n',
        3,
    ),
    "no equals sign": (b"SMTP_WHITELIST_MESSAGE_LIMITS=1/1h\nSMTP_WHITELIST_EXEMPT_NETWORKS\n", 2),
    "not UTF-8": (
        b"SMTP_WHITELIST_MESSAGE_LIMITS=1/1h\nSMTP_WHITELIST_LIMIT_REPLY=450 Gr\xfc\xdfe\n",
        2,
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_problems_name_the_file_and_the_line(tmp_path: Path, case: str) -> None:
    content, line = BAD_FILES[case]
    path = tmp_path / "site.env"
    path.write_bytes(content)
    [problem] = env_file_problems(path)
    assert problem.startswith(f"{path}, line {line}: "), problem


def test_a_sound_file_has_no_problems(tmp_path: Path) -> None:
    path = tmp_path / "site.env"
    path.write_text(
        "# comment\n\nexport SMTP_WHITELIST_MESSAGE_LIMITS=1/1h\n"
        "SMTP_WHITELIST_LIMIT_REPLY='450 4.7.1 slow down {ip}' # why\n"
        'SMTP_WHITELIST_ELIGIBLE="staff:normal"\nSMTP_WHITELIST_EXEMPT_NETWORKS=\n'
    )
    assert env_file_problems(path) == []


@pytest.mark.parametrize("command", ["check", "policyd"])
@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_check_and_start_exit_2_with_one_line(
    redis_server: RedisServer, tmp_path: Path, case: str, command: str
) -> None:
    content, line = BAD_FILES[case]
    path = tmp_path / "site.env"
    path.write_bytes(content)
    env = clean_env(redis_url=redis_server.url, policy_listen="127.0.0.1:1")
    result = run_cli("--env-file", str(path), command, env=env)
    assert result.returncode == 2, result
    [message] = result.stderr.splitlines()
    assert f"{path}, line {line}" in message
    assert "Traceback" not in result.stderr


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[socket.socket]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(tmp_path / "notify"))
        sock.settimeout(30)
        yield sock


@pytest.mark.parametrize("case", sorted(BAD_FILES))
async def test_sighup_keeps_the_running_settings_and_says_ready(
    redis_server: RedisServer, tmp_path: Path, notify: socket.socket, case: str
) -> None:
    path = tmp_path / "site.env"
    path.write_text(GOOD)
    daemon = PolicydProcess(tmp_path, redis_url=redis_server.url, env_file=str(path))
    daemon.env["NOTIFY_SOCKET"] = notify.getsockname()
    daemon.start()
    try:
        assert notify.recv(4096) == b"READY=1"
        content, line = BAD_FILES[case]
        path.write_bytes(content)
        assert daemon.process is not None
        daemon.process.send_signal(signal.SIGHUP)
        assert notify.recv(4096) == b"RELOADING=1"
        assert notify.recv(4096) == b"READY=1"
        # Still 1/1h: the first message passes, the second meets the limit.
        await assert_second_message_limited(daemon.address, IP, DEFAULT_LIMIT_REPLY)
    finally:
        daemon.stop()
    log = daemon.log_text()
    assert "Traceback" not in log
    [why] = [entry for entry in log.splitlines() if "SIGHUP" in entry]
    assert f"{path}, line {line}" in why
