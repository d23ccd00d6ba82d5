"""One timer for the deadlines of work done one piece at a time, each deadline no earlier than
the last: the decision batches' STORE_TIMEOUT (link_batches.py).

A timer made and cancelled per batch costs uvloop about 2 µs, and at a thousand requests a
second a batch is one decision. Here the timer outlives the batches: armed for the first, it
fires at or before the deadline of whichever is out then, and is armed again for that one's
deadline if it is later. The moment a batch fails is exactly its own deadline, as with a timer
of its own; between batches nothing is armed, and a busy loop re-arms once per timeout.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class DeadlineWatch:
    """Calls the expiry of the work being watched when its deadline (loop time) is reached."""

    def __init__(self) -> None:
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._deadline = 0.0
        self._expired: Callable[[], None] | None = None  # of the work out; None: nothing is

    def watch(self, deadline: float, expired: Callable[[], None]) -> None:
        """Watch the next piece of work: ``expired()`` at ``deadline`` unless :meth:`clear`
        comes first. Replaces what was watched (one piece at a time)."""
        self._deadline, self._expired = deadline, expired
        if self._timer is not None:
            if self._timer_at <= deadline:
                return  # fires first, and is armed again for this deadline then
            self._timer.cancel()  # deadlines went back (they do not): never fire late
        self._arm(deadline)

    def clear(self) -> None:
        """The work is done in time."""
        self._expired = None

    def close(self) -> None:
        self._expired = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _arm(self, at: float) -> None:
        self._timer_at = at
        self._timer = asyncio.get_running_loop().call_at(at, self._fired)

    def _fired(self) -> None:
        self._timer = None
        expired = self._expired
        if expired is None:
            return  # nothing out: the next watch arms the timer again
        if self._deadline > self._timer_at:
            self._arm(self._deadline)  # later work is out: its own deadline
            return
        self._expired = None
        expired()
