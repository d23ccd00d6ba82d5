"""Warn when Postfix asks at RCPT but never at DATA: then nothing is being counted.

The policy server counts a message only in a ``protocol_state=DATA`` request (one per message,
with ``recipient_count``); RCPT-stage requests are checks only. An administrator who adds
``check_policy_service`` to ``smtpd_recipient_restrictions`` but not to
``smtpd_data_restrictions`` gets a server that answers every request and limits nobody, which
is the commonest failure of rate-limiting policy daemons and is invisible from the mail flow.

:class:`StageWatch` is pure logic with the clock passed in: the server calls :meth:`observe`
for every request and logs the text it returns. A warning is due when, within
``window_seconds``, at least ``min_rcpt`` RCPT requests came and not one DATA request; it is
given at most once per window, and any DATA request resets the watch.

RCPT requests that the policy server itself refused (the client is at its limit) are not
counted: such a client never reaches DATA however Postfix is configured, and a limited client
retrying all night must not look like a misconfiguration.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

WARNING_TEXT = (
    "no DATA-stage policy requests: nothing is being counted;"
    " add check_policy_service to smtpd_data_restrictions (see postfix-snippet.cf)"
)

# Defaults: a busy relay sees a DATA request within seconds of any RCPT; on a quiet one, ten
# minutes and twenty RCPT requests without a single DATA request cannot be chance (every
# accepted message has one), while a few rejected RCPTs from a scanner can.
DEFAULT_WINDOW_SECONDS = 600.0
DEFAULT_MIN_RCPT = 20


class StageWatch:
    """Counts RCPT requests since the last DATA request and says when that looks misconfigured.

    Not thread-safe; the asyncio server calls it from its one event loop.
    """

    def __init__(
        self,
        window_seconds: float = DEFAULT_WINDOW_SECONDS,
        min_rcpt: int = DEFAULT_MIN_RCPT,
        *,
        log_warnings: bool = False,
    ) -> None:
        """``log_warnings``: also log the warning here (through this module's logger)."""
        if window_seconds <= 0:
            raise ValueError("window_seconds must be positive")
        if min_rcpt < 1:
            raise ValueError("min_rcpt must be at least 1")
        self.window_seconds = float(window_seconds)
        self.min_rcpt = min_rcpt
        self.log_warnings = log_warnings
        self._first_rcpt: float | None = None  # first RCPT since the last DATA (or warning)
        self._rcpt_count = 0
        self._last_warning: float | None = None
        self.data_seen = False

    def observe(self, stage: str, now: float, *, refused: bool = False) -> str | None:
        """Note one request in ``stage`` at time ``now`` (monotonic seconds).

        ``refused``: the policy server answered this request with a limit reply. Returns
        :data:`WARNING_TEXT` when the warning is due (at most once per window), else None.
        """
        stage = stage.upper()
        # BDAT is announced to policy servers as DATA by Postfix; accept either spelling.
        if stage in ("DATA", "BDAT"):
            self.data_seen = True
            self._first_rcpt = None
            self._rcpt_count = 0
            self._last_warning = None
            return None
        if stage != "RCPT" or refused:
            return None
        if self._first_rcpt is None:
            self._first_rcpt = now
        self._rcpt_count += 1
        if self._rcpt_count < self.min_rcpt or now - self._first_rcpt < self.window_seconds:
            return None
        if self._last_warning is not None and now - self._last_warning < self.window_seconds:
            return None
        self._last_warning = now
        if self.log_warnings:
            log.warning(
                "%s (%d RCPT requests in %.0f s)",
                WARNING_TEXT,
                self._rcpt_count,
                now - self._first_rcpt,
            )
        return WARNING_TEXT
