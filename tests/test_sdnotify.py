"""sd_notify over a real AF_UNIX datagram socket, as systemd's Type=notify receives it."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from policyd import sdnotify


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
