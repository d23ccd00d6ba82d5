"""The offender view: which clients the limits refuse, and clearing a client's counts.

The decision script (lua/decide.lua) counts every refusal in the offender hash of the client's
exact address, one field per clock hour (Redis' clock), and keeps 25 hours. This module reads
those hashes for ``smtp-whitelist top`` and clears them for ``smtp-whitelist reset``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ratelimit.audit import AUDIT_MAX_ENTRIES
from ratelimit.limits import format_window
from ratelimit.store import Script, Store

_RESET = Script("reset")

# decide.lua keeps OFFENDER_HOURS = 25 hourly buckets: `--since` may reach back one day.
MAX_SINCE = 86400
# SCAN batch size: a few round trips for a campus' offenders, never a long block (SCAN, not KEYS).
SCAN_COUNT = 1000

_SPAN = re.compile(r"^\s*(\d+)\s*([smhd])\s*$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_span(text: str) -> int:
    """``1h``, ``30m``, ``1d`` -> seconds, at most :data:`MAX_SINCE`. Raises ValueError."""
    match = _SPAN.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not a span such as 1h, 30m or 1d")
    seconds = int(match.group(1)) * _UNIT[match.group(2)]
    if not 0 < seconds <= MAX_SINCE:
        raise ValueError(f"{text!r}: the span must be 1s to 1d (refusals are kept 25 hours)")
    return seconds


@dataclass(frozen=True, slots=True)
class Offender:
    """One client address and its refusals in the span asked about."""

    ip: str
    refusals: int
    limit: str  # the limit that refused it last, e.g. "100/1h messages"
    last_refused: datetime

    def as_json(self) -> dict[str, Any]:
        return {
            "ip": self.ip,
            "refusals": self.refusals,
            "limit": self.limit,
            "last_refused": self.last_refused.strftime("%Y-%m-%dT%H:%M:%SZ"),
        }


def _text(value: bytes | str) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def offender_from_hash(ip: str, fields: dict[Any, Any], first_hour: int) -> Offender | None:
    """An :class:`Offender` from its hash, counting the hours from ``first_hour`` on."""
    text = {_text(k): _text(v) for k, v in fields.items()}
    refusals = sum(
        int(value)
        for name, value in text.items()
        if name.startswith("h") and name[1:].isdigit() and int(name[1:]) >= first_hour
    )
    if refusals == 0:
        return None
    kind, _, rest = text.get("limit", "").partition(" ")
    count, _, window = rest.partition(" ")
    limit = f"{count}/{format_window(int(window))} {kind}" if window.isdigit() else "?"
    last = int(text.get("last", "0") or 0)
    return Offender(ip, refusals, limit, datetime.fromtimestamp(last / 1_000_000, tz=UTC))


class Offenders:
    """Reads and clears the refusal counts of the offender hashes."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def top(self, since: int, last: int) -> list[Offender]:
        """The ``last`` clients refused most often in the clock hours covering ``since`` seconds.

        Counted in whole clock hours: ``--since 1h`` reads this hour and the one before it.
        """
        store, keys = self.store, self.store.keys

        async def read() -> list[Offender]:
            names = await store.scan_keys(keys.offender_pattern, SCAN_COUNT)
            # TIME on its own: a cluster pipeline refuses it.
            seconds, _ = await store.time()
            pipe = store.pipeline(transaction=False)
            for name in names:
                pipe.hgetall(name)
            hashes = await pipe.execute() if names else []
            first_hour = (seconds - since) // 3600
            found = []
            for name, fields in zip(names, hashes, strict=True):
                offender = offender_from_hash(keys.address_of(_text(name)), fields, first_hour)
                if offender is not None:
                    found.append(offender)
            return found

        found = await self.store.call(read)
        found.sort(key=lambda o: (-o.refusals, -o.last_refused.timestamp(), o.ip))
        return found[:last]

    async def reset(self, ip: str, network: str, *, source: str, actor: str) -> bool:
        """Clear the counts of ``ip`` (its network's log and its refusals); audited. False when
        there were none."""
        keys = self.store.keys
        deleted = await self.store.run_script(
            _RESET,
            [keys.client_log(network), keys.offender(ip, network), keys.audit(network)],
            [ip, source, actor, AUDIT_MAX_ENTRIES],
        )
        return int(deleted) > 0
