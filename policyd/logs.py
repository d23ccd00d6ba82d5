"""Log set-up for the programs (handlers are configured here, called only from ``main``).

``text`` is one human line per event; ``json`` is one object per line for a log shipper, with
the same keys in every line (:data:`FIELDS`, ``null`` where a line has no such value). Modules
log with ``logging.getLogger(__name__)``, lazy ``%s`` arguments, and pass their structured
values with ``extra=fields(...)``.

Where the lines go:

- under systemd (``JOURNAL_STREAM`` names our stderr), each text line starts with its syslog
  priority (``<4>`` for a warning, sd-daemon(3)), so ``journalctl -p warning`` selects it, and
  carries no time of its own (the journal adds one);
- with ``SYSLOG_FACILITY`` set, to the local syslog socket under that facility (``mail`` puts
  the lines beside Postfix's own in mail.log), instead of stderr;
- otherwise to stderr, each line starting with its time.

Every time is RFC 3339 in UTC with ``Z``. Other libraries' DEBUG lines are dropped: a
``LOG_LEVEL=DEBUG`` is for this program's decisions, not for aiohttp's or asyncio's internals.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import socket
import sys
from datetime import UTC, datetime

# The structured fields of decision lines; every JSON line carries all of them.
FIELDS = ("client", "stage", "limit", "used", "action", "queue_id", "instance", "sender")

# Loggers of this program; any other logger's records below INFO are third-party noise.
OWN_LOGGERS = ("policyd", "ratelimit", "webhook", "smtp_whitelist")

# Where the local syslog daemon listens (journald's socket too, on systemd hosts).
SYSLOG_SOCKET = "/dev/log"

# RFC 5424 6.2.1 severities, as sd-daemon(3) prefixes expect them.
_PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}


def fields(**values: str | int | None) -> dict[str, dict[str, str | int | None]]:
    """``extra=`` for a log call: the structured values of :data:`FIELDS` this line knows."""
    return {"swl": values}


def rfc3339(moment: float) -> str:
    """A POSIX time as RFC 3339 UTC with milliseconds: ``2026-01-01T12:00:00.000Z``."""
    text = datetime.fromtimestamp(moment, tz=UTC).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z")


def priority(levelno: int) -> int:
    """The syslog severity of a logging level."""
    for level in (logging.CRITICAL, logging.ERROR, logging.WARNING, logging.INFO):
        if levelno >= level:
            return _PRIORITY[level]
    return _PRIORITY[logging.DEBUG]


class TextFormatter(logging.Formatter):
    """``TIME LEVEL logger: message``; under the journal ``<N>LEVEL logger: message``."""

    def __init__(self, *, journal: bool = False, with_time: bool = True) -> None:
        super().__init__()
        self.journal = journal
        self.with_time = with_time and not journal

    def format(self, record: logging.LogRecord) -> str:
        line = f"{record.levelname} {record.name}: {record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        if self.with_time:
            line = f"{rfc3339(record.created)} {line}"
        if self.journal:
            # One prefix per physical line: a traceback's lines keep the record's priority.
            prefix = f"<{priority(record.levelno)}>"
            line = "\n".join(prefix + part for part in line.split("\n"))
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, then every field of FIELDS."""

    def format(self, record: logging.LogRecord) -> str:
        given = getattr(record, "swl", None) or {}
        entry: dict[str, object] = {
            "time": rfc3339(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in FIELDS:
            entry[name] = given.get(name)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


class OwnDebugOnly(logging.Filter):
    """Drops other libraries' records below INFO."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.INFO:
            return True
        name = record.name
        return any(name == own or name.startswith(own + ".") for own in OWN_LOGGERS)


def under_journal(stream_fd: int = 2) -> bool:
    """Whether ``stream_fd`` is the journal stream systemd set up (JOURNAL_STREAM=dev:inode)."""
    wanted = os.environ.get("JOURNAL_STREAM", "")
    device, _, inode = wanted.partition(":")
    if not device.isdecimal() or not inode.isdecimal():
        return False
    try:
        info = os.fstat(stream_fd)
    except OSError:
        return False
    return info.st_dev == int(device) and info.st_ino == int(inode)


def configure(
    level: str,
    fmt: str,
    facility: str = "",
    *,
    syslog_address: str = SYSLOG_SOCKET,
) -> None:
    """Install the one handler every line goes through (see the module's docstring).

    Raises OSError when ``facility`` is set and the syslog socket cannot be reached.
    """
    handler: logging.Handler
    if facility:
        handler = logging.handlers.SysLogHandler(
            address=syslog_address,
            facility=logging.handlers.SysLogHandler.facility_names[facility],
            socktype=socket.SOCK_DGRAM,
        )
        # syslog adds the time and host; the tag names the program as Postfix's lines do.
        handler.ident = f"smtp-whitelist[{os.getpid()}]: "
        handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter(with_time=False))
    else:
        handler = logging.StreamHandler(sys.stderr)
        try:
            journal = under_journal(sys.stderr.fileno())
        except (OSError, ValueError, AttributeError):  # a stream with no descriptor (tests)
            journal = False
        handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter(journal=journal))
    handler.addFilter(OwnDebugOnly())
    root = logging.getLogger()
    for old in root.handlers:
        old.close()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aiohttp's access log would add a line per portal request on top of our own grant lines.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
