"""The audit trail: a capped Redis stream of grants, refreshes, removals and count resets.

The scripts in :mod:`ratelimit.grants` write it atomically with the change they record; this
module reads it for ``smtp-whitelist audit``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ratelimit.store import Store

# The stream is trimmed to about this many entries (XADD MAXLEN ~): at a few hundred bytes an
# entry that is a few tens of MB at most, and years of a campus' grants.
AUDIT_MAX_ENTRIES = 100_000

# Entries read per XREVRANGE call while filtering, so a filter over a long stream never makes
# one huge reply, and each call (with its own STORE_TIMEOUT) stays far below that timeout: a
# filter over the whole stream (AUDIT_MAX_ENTRIES) is about a hundred such calls.
READ_CHUNK = 1000


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One recorded change."""

    at: datetime
    event: str  # grant, refresh, remove, reset (a client's counts cleared)
    ip: str
    user: str
    role: str
    status: str
    source: str  # webhook, cli
    actor: str
    expires_at: datetime | None

    def as_json(self) -> dict[str, Any]:
        return {
            "at": self.at.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "event": self.event,
            "ip": self.ip,
            "user": self.user,
            "role": self.role,
            "status": self.status,
            "source": self.source,
            "actor": self.actor,
            "expires_at": self.expires_at.strftime("%Y-%m-%dT%H:%M:%SZ")
            if self.expires_at
            else None,
        }


def _text(value: bytes | str) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def _entry(entry_id: bytes | str, fields: dict[Any, Any]) -> AuditEntry:
    entry_id = _text(entry_id)
    text = {_text(k): _text(v) for k, v in fields.items()}
    expires = text.get("expires_at", "")
    return AuditEntry(
        at=datetime.fromtimestamp(int(entry_id.split("-")[0]) / 1000, tz=UTC),
        event=text.get("event", ""),
        ip=text.get("ip", ""),
        user=text.get("user", ""),
        role=text.get("role", ""),
        status=text.get("status", ""),
        source=text.get("source", ""),
        actor=text.get("actor", ""),
        expires_at=datetime.fromtimestamp(int(expires) / 1000, tz=UTC) if expires else None,
    )


class AuditTrail:
    """Reads the audit streams, newest first, with the CLI's filters.

    There is one stream per client network (a grant and its record share a slot on a Redis
    Cluster), so a read finds them all by SCAN, on every master, and merges them by time.
    """

    def __init__(self, store: Store) -> None:
        self.store = store

    async def read(
        self, *, ip: str | None = None, user: str | None = None, last: int = 20
    ) -> list[AuditEntry]:
        """The ``last`` newest entries that match, returned oldest first (as a log reads)."""
        keys = self.store.keys

        async def newest(key: bytes) -> list[tuple[tuple[int, int], AuditEntry]]:
            """The ``last`` newest matching entries of one stream, with their ids' order."""
            found: list[tuple[tuple[int, int], AuditEntry]] = []
            upper = "+"
            while len(found) < last:
                # One bounded call per chunk: a rare user's entries may lie behind the whole
                # stream, and reading all of it under one STORE_TIMEOUT could time out.
                chunk = await self.store.call(
                    functools.partial(self.store.xrevrange, key, upper, READ_CHUNK)
                )
                if not chunk:
                    break
                for entry_id, fields in chunk:
                    entry = _entry(entry_id, fields)
                    if (ip is None or entry.ip == ip) and (user is None or entry.user == user):
                        ms, _, seq = _text(entry_id).partition("-")
                        found.append(((int(ms), int(seq or 0)), entry))
                        if len(found) == last:
                            break
                upper = "(" + _text(chunk[-1][0])
            return found

        streams = await self.store.call(functools.partial(self.store.scan_keys, keys.audit_pattern))
        found: list[tuple[tuple[int, int], AuditEntry]] = []
        for key in streams:
            found += await newest(key)
        found.sort(key=lambda pair: pair[0], reverse=True)
        return [entry for _, entry in reversed(found[:last])]
