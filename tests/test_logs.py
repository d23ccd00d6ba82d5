"""Log lines as operators read them: JSON fields, the journal's priorities, syslog, one time
format, and no other library's DEBUG lines. Formatters directly, then a real ``policyd``."""

from __future__ import annotations

import json
import logging
import os
import re
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from policyd import logs
from tests.support import PolicydProcess, RedisServer, ask_once, wait_for

RFC3339_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
CLIENT = "198.51.100.9"


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """logs.configure replaces the root handlers; put pytest's back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        yield
    finally:
        for handler in root.handlers:
            if handler not in handlers:
                handler.close()
        root.handlers[:] = handlers
        root.setLevel(level)


def record(name: str, level: int, message: str, **values: str | int | None) -> logging.LogRecord:
    made = logging.getLogger(name).makeRecord(name, level, __file__, 1, message, (), None)
    if values:
        made.__dict__.update(logs.fields(**values))
    return made


def test_json_has_every_field_in_every_line() -> None:
    formatter = logs.JsonFormatter()
    decision = json.loads(
        formatter.format(record("policyd.decision", logging.INFO, "limited", client=CLIENT, used=3))
    )
    other = json.loads(formatter.format(record("policyd.server", logging.WARNING, "malformed")))
    assert set(decision) == set(other) == {"time", "level", "logger", "message", *logs.FIELDS}
    assert (decision["client"], decision["used"], decision["stage"]) == (CLIENT, 3, None)
    assert RFC3339_Z.match(decision["time"])


def test_journal_lines_carry_priority_and_no_time() -> None:
    formatter = logs.TextFormatter(journal=True)
    assert formatter.format(record("policyd", logging.WARNING, "w")) == "<4>WARNING policyd: w"
    assert formatter.format(record("policyd", logging.INFO, "i")) == "<6>INFO policyd: i"
    assert formatter.format(record("policyd", logging.ERROR, "e")) == "<3>ERROR policyd: e"
    assert formatter.format(record("policyd", logging.DEBUG, "d")) == "<7>DEBUG policyd: d"
    plain = logs.TextFormatter().format(record("policyd", logging.INFO, "i"))
    stamp, rest = plain.split(" ", 1)
    assert RFC3339_Z.match(stamp)
    assert rest == "INFO policyd: i"


def test_journal_stream_must_name_our_stderr(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with (tmp_path / "stream").open("w") as stream:
        info = os.fstat(stream.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{info.st_dev}:{info.st_ino}")
        assert logs.under_journal(stream.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{info.st_dev}:{info.st_ino + 1}")
        assert not logs.under_journal(stream.fileno())  # stderr redirected elsewhere
        monkeypatch.setenv("JOURNAL_STREAM", "garbage")
        assert not logs.under_journal(stream.fileno())


def test_other_libraries_debug_is_dropped() -> None:
    keep = logs.OwnDebugOnly()
    assert keep.filter(record("policyd.decision", logging.DEBUG, "x"))
    assert keep.filter(record("webhook.app", logging.DEBUG, "x"))
    assert not keep.filter(record("aiohttp.server", logging.DEBUG, "x"))
    assert not keep.filter(record("asyncio", logging.DEBUG, "x"))
    assert not keep.filter(record("policydx", logging.DEBUG, "x"))
    assert keep.filter(record("redis.connection", logging.WARNING, "x"))


@pytest.mark.usefixtures("restore_logging")
def test_syslog_facility_mail(tmp_path: Path) -> None:
    path = str(tmp_path / "log.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as syslog:
        syslog.bind(path)
        syslog.settimeout(5)
        logs.configure("INFO", "text", "mail", syslog_address=path)
        logging.getLogger("policyd.decision").warning("store unavailable")
        datagram = syslog.recv(4096).decode()
    # mail (2) * 8 + warning (4) = 20, RFC 3164; the tag as Postfix's lines have it.
    assert datagram.startswith(f"<20>smtp-whitelist[{os.getpid()}]: WARNING policyd.decision:")
    assert "store unavailable" in datagram


async def test_policyd_json_decision_lines(tmp_path: Path, redis_server: RedisServer) -> None:
    daemon = PolicydProcess(
        tmp_path, redis_url=redis_server.url, message_limits="1/1h", log_format="json"
    ).start()
    try:
        for _ in range(3):
            await ask_once(daemon.address, protocol_state="DATA", client_address=CLIENT)
        wait_for(lambda: '"limited client=' in daemon.log_text(), what="the decision line")
    finally:
        daemon.stop()
    lines = [json.loads(line) for line in daemon.log_text().splitlines()]
    assert all(set(line) == {"time", "level", "logger", "message", *logs.FIELDS} for line in lines)
    (limited,) = [line for line in lines if line["message"].startswith("limited ")]
    assert limited["client"] == CLIENT
    assert limited["stage"] == "DATA"
    assert limited["limit"] == "1/1h messages"
    assert limited["used"] == 1
    assert limited["action"].startswith("450 4.7.1 ")
    assert limited["queue_id"] == "8045F2AB23"
    assert limited["instance"] == "123.456.7"
    assert limited["sender"] == "alice@cs.example.edu.tw"
    assert all(RFC3339_Z.match(line["time"]) for line in lines)


def test_policyd_under_systemd_journal(tmp_path: Path, redis_server: RedisServer) -> None:
    daemon = PolicydProcess(tmp_path, redis_url=redis_server.url)
    daemon.log_path.touch()
    info = os.stat(daemon.log_path)
    daemon.env["JOURNAL_STREAM"] = f"{info.st_dev}:{info.st_ino}"
    daemon.start()
    try:
        wait_for(lambda: "ready" in daemon.log_text(), what="ready")
        with socket.create_connection(("127.0.0.1", daemon.port), 5) as conn:
            conn.sendall(b"no equals sign\n\n")  # malformed: a warning
            conn.recv(100)
        wait_for(lambda: "malformed" in daemon.log_text(), what="the warning")
    finally:
        daemon.stop()
    lines = daemon.log_text().splitlines()
    assert lines
    assert all(re.match(r"^<[2-7]>(DEBUG|INFO|WARNING|ERROR|CRITICAL) ", ln) for ln in lines)
    assert any(ln.startswith("<4>WARNING policyd.server: malformed") for ln in lines)
    assert any(ln.startswith("<6>INFO policyd: ready") for ln in lines)
