"""The limit syntax: ``COUNT/WINDOW`` items, comma-separated (``20/1m,100/1h``).

Pure functions, no I/O: the settings validate with them and the tests call them directly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
# [0-9], not \d: \d also matches the digits of other scripts (Arabic-Indic), no one's setting.
_ITEM = re.compile(r"^\s*([0-9]+)\s*/\s*([0-9]+)?\s*([smhd])\s*$")

# A window longer than a week would keep a busy client's log in Redis for that long; nobody
# limits a relay client per month, so a bigger value is a typo (e.g. "100/1000d").
MAX_WINDOW_SECONDS = 7 * 86400
# Redis keeps one entry per accepted message inside the longest window; a count above this
# would let one client's log grow past what the README promises about memory.
MAX_COUNT = 1_000_000


@dataclass(frozen=True, slots=True)
class Limit:
    """At most ``count`` messages (or recipients) over any span of ``window`` seconds."""

    count: int
    window: int

    def __str__(self) -> str:
        return f"{self.count}/{format_window(self.window)}"


def format_window(seconds: int) -> str:
    """The shortest exact spelling: 3600 -> ``1h``, 90 -> ``90s``."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def parse_limits(text: str) -> tuple[Limit, ...]:
    """Parse ``"20/1m,100/1h"``; an empty string means no limit. Raises ValueError."""
    if not text.strip():
        return ()
    limits: list[Limit] = []
    for item in text.split(","):
        match = _ITEM.match(item)
        if match is None:
            raise ValueError(
                f"{item.strip()!r} is not COUNT/WINDOW (window in s, m, h or d, e.g. 100/1h)"
            )
        count = int(match.group(1))
        window = int(match.group(2) or "1") * _UNIT_SECONDS[match.group(3)]
        if count < 1 or count > MAX_COUNT:
            raise ValueError(f"{item.strip()!r}: count must be 1 to {MAX_COUNT}")
        if window < 1 or window > MAX_WINDOW_SECONDS:
            raise ValueError(f"{item.strip()!r}: window must be 1s to 7d")
        limits.append(Limit(count, window))
    if len(set(limits)) != len(limits):
        raise ValueError("the same limit is listed twice")
    return tuple(limits)
