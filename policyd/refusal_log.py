"""Which refusals get a log line: the first per client and limit window, then a count.

A refused client retries: Postfix's own log already has one reject line per attempt, and a
client retrying RCPT twenty times must not write twenty lines here too. The first refusal of a
client by a limit is logged in full; the next ones within that limit's window are only counted,
and when the window has passed one summary line says how many there were.

Pure logic with the clock passed in; the decider logs what it returns.
"""

from __future__ import annotations

from dataclasses import dataclass

# Clients tracked at once. A relay refuses a handful of clients at a time; a flood of distinct
# addresses beyond this starts the bookkeeping again (each then gets one full line again).
MAX_TRACKED = 10_000
# How often the tracked periods are swept for summaries that are due (seconds).
SWEEP_INTERVAL = 10.0


@dataclass(slots=True)
class _Period:
    started: float  # wall-clock time of the logged refusal
    window: float
    suppressed: int = 0


@dataclass(frozen=True, slots=True)
class Summary:
    """Refusals of one client by one limit that were counted but not logged."""

    client: str
    limit: str
    since: float  # wall-clock time of the refusal that was logged
    suppressed: int


class RefusalLog:
    """Decides which refusals are logged, and collects the summaries that are due."""

    def __init__(self) -> None:
        self._periods: dict[tuple[str, str], _Period] = {}
        self._next_sweep = 0.0
        self._pending: list[Summary] = []  # ended periods replaced before a sweep saw them

    def refused(self, client: str, limit: str, window: float, now: float) -> bool:
        """Note one refusal; True when it is to be logged in full."""
        key = (client, limit)
        period = self._periods.get(key)
        if period is not None and now - period.started < period.window:
            period.suppressed += 1
            return False
        if period is not None and period.suppressed:
            self._pending.append(Summary(client, limit, period.started, period.suppressed))
        if len(self._periods) >= MAX_TRACKED:
            self._periods.clear()
        self._periods[key] = _Period(now, window)
        return True

    @property
    def tracking(self) -> bool:
        """Any refusal still in its window, or a summary waiting: else nothing can be due, and
        a decision need not read the clock to ask (most decisions of a relay refuse nobody)."""
        return bool(self._periods or self._pending)

    def due(self, now: float, *, everything: bool = False) -> list[Summary]:
        """Summaries of periods that ended (all of them with ``everything``, e.g. at stop)."""
        found, self._pending = self._pending, []
        if not everything and now < self._next_sweep:
            return found
        self._next_sweep = now + SWEEP_INTERVAL
        for key, period in list(self._periods.items()):
            if everything or now - period.started >= period.window:
                del self._periods[key]
                if period.suppressed:
                    found.append(Summary(key[0], key[1], period.started, period.suppressed))
        return found
