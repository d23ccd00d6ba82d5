"""One stale-socket rule for both servers (issue 9, item 8): only a socket nobody listens on is
removed; anything else at a ``unix:`` path is refused with one line, and left as it was.

The policy server used to unlink whatever was at the path (running as root, an ordinary file).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from ratelimit.listen import remove_stale_socket
from tests.support import RedisServer, clean_env, free_port, run_cli


def _regular_file(path: Path) -> None:
    path.write_text("precious")


def _directory(path: Path) -> None:
    path.mkdir()


def _fifo(path: Path) -> None:
    os.mkfifo(path)


def _symlink_to_stale_socket(path: Path) -> None:
    target = path.with_name("target.sock")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(target))
    path.symlink_to(target)


IN_THE_WAY: dict[str, Callable[[Path], None]] = {
    "regular file": _regular_file,
    "directory": _directory,
    "fifo": _fifo,
    "symlink": _symlink_to_stale_socket,
}


def _snapshot(path: Path) -> tuple[int, str]:
    info = os.lstat(path)
    return info.st_mode, path.read_text() if path.is_file() and not path.is_symlink() else ""


@pytest.mark.parametrize("kind", sorted(IN_THE_WAY))
def test_anything_but_a_socket_is_refused_and_kept(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "policy.sock"
    IN_THE_WAY[kind](path)
    before = _snapshot(path)
    with pytest.raises(OSError, match="exists and is not a socket") as raised:
        remove_stale_socket(str(path))
    assert str(path) in (raised.value.strerror or "")
    assert _snapshot(path) == before


def test_a_socket_nobody_listens_on_is_removed(tmp_path: Path) -> None:
    path = tmp_path / "policy.sock"
    with socket.socket(socket.AF_UNIX) as left_over:
        left_over.bind(str(path))
    remove_stale_socket(str(path))
    assert not path.exists()
    remove_stale_socket(str(path))  # nothing there: nothing to do


def test_a_listening_socket_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "policy.sock"
    with socket.socket(socket.AF_UNIX) as running:
        running.bind(str(path))
        running.listen()
        with pytest.raises(OSError, match="in use by a running server"):
            remove_stale_socket(str(path))
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(str(path))  # untouched


@pytest.mark.parametrize("command", ["policyd", "webhook"])
def test_both_servers_refuse_a_file_at_their_unix_path(
    redis_server: RedisServer, tmp_path: Path, command: str
) -> None:
    path = tmp_path / "precious.txt"
    path.write_text("precious")
    listen = {
        "policy_listen": f"127.0.0.1:{free_port()}",
        "webhook_listen": f"127.0.0.1:{free_port()}",
    }
    listen["policy_listen" if command == "policyd" else "webhook_listen"] = f"unix:{path}"
    env = clean_env(redis_url=redis_server.url, webhook_secret="x" * 40, **listen)
    result = run_cli(command, env=env)
    assert result.returncode == 1, result
    [line] = result.stderr.splitlines()
    assert f"{path} exists and is not a socket" in line
    assert path.read_text() == "precious"
