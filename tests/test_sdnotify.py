"""sd_notify over a real AF_UNIX datagram socket, as systemd's Type=notify receives it."""

from __future__ import annotations

import os
import signal
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from policyd import sdnotify
from tests.support import RedisServer, Service, free_port


@pytest.fixture
def notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A datagram socket bound at a path, announced in NOTIFY_SOCKET, as systemd does."""
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        yield sock


def test_ready_datagram_is_sent(notify_socket: socket.socket) -> None:
    assert sdnotify.notify("READY=1") is True
    assert notify_socket.recv(4096) == b"READY=1"


def test_every_state_is_one_datagram(notify_socket: socket.socket) -> None:
    states = ["RELOADING=1", "READY=1", "STATUS=limits reloaded", "STOPPING=1"]
    for state in states:
        assert sdnotify.notify(state)
    assert [notify_socket.recv(4096).decode() for _ in states] == states


def test_abstract_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    # systemd may hand out "@name": the Linux abstract namespace, a leading NUL on the wire.
    name = f"swl-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert sdnotify.notify("READY=1") is True
        assert sock.recv(4096) == b"READY=1"


def test_unset_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.notify("READY=1") is False
    monkeypatch.setenv("NOTIFY_SOCKET", "")
    assert sdnotify.notify("READY=1") is False


def test_stuck_receiver_does_not_hang_the_server(notify_socket: socket.socket) -> None:
    # Nobody reads: the kernel queue (net.unix.max_dgram_qlen) fills, and then each send
    # gives up after SEND_TIMEOUT instead of blocking the daemon for ever.
    sent = 0
    while sdnotify.notify("STATUS=x"):
        sent += 1
        assert sent < 10_000
    assert sent >= 1


def test_missing_socket_is_logged_not_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens"))
    assert sdnotify.notify("READY=1") is False
    assert "could not notify systemd" in caplog.text


def test_unsupported_address_is_logged(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "vsock:2:1234")
    assert sdnotify.notify("READY=1") is False
    assert "not a UNIX socket path" in caplog.text


def test_oversized_message_not_sent(notify_socket: socket.socket) -> None:
    assert sdnotify.notify("STATUS=" + "x" * sdnotify.MAX_MESSAGE_BYTES) is False
    notify_socket.settimeout(0.2)
    with pytest.raises(TimeoutError):
        notify_socket.recv(4096)


def test_no_socket_left_open(notify_socket: socket.socket) -> None:
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(50):
        assert sdnotify.notify("READY=1")
        notify_socket.recv(4096)  # drain, as systemd does: a full queue would block the send
    assert len(os.listdir("/proc/self/fd")) == before


def test_policyd_sends_ready_after_binding_and_reports_reload_and_stop(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """`smtp-whitelist policyd` as systemd starts it: READY=1 only once the port answers."""
    port = free_port()
    env_file = tmp_path / "smtp-whitelist.env"
    env_file.write_text("SMTP_WHITELIST_MESSAGE_LIMITS=3/1h\n", encoding="utf-8")
    daemon = Service(
        "policyd",
        {"REDIS_URL": redis_server.url, "POLICY_LISTEN": f"127.0.0.1:{port}"},
        tmp_path,
        env_file=env_file,
    )
    # Its own NOTIFY_SOCKET: this test reads every message, READY=1 included.
    daemon.env["NOTIFY_SOCKET"] = str(tmp_path / "notify")
    log_path = daemon.log_path
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(daemon.env["NOTIFY_SOCKET"])
        notify.settimeout(30)
        daemon.start()
        process = daemon.process
        assert process is not None
        try:
            assert notify.recv(4096) == b"READY=1"
            # Bound before READY=1: the very first connection attempt succeeds.
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
            process.send_signal(signal.SIGHUP)
            assert notify.recv(4096) == b"RELOADING=1"
            assert notify.recv(4096) == b"READY=1"
            process.send_signal(signal.SIGTERM)
            assert notify.recv(4096) == b"STOPPING=1"
            assert process.wait(timeout=10) == 0
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)
    assert "SIGHUP: settings reloaded" in log_path.read_text(), log_path.read_text()
