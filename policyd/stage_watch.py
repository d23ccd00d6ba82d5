"""Warn when Postfix asks at RCPT but never at DATA: then nothing is being counted.

The policy server counts a message only in a ``protocol_state=DATA`` request (one per message,
with ``recipient_count``); RCPT-stage requests are checks only. An administrator who adds
``check_policy_service`` to ``smtpd_recipient_restrictions`` but not to
``smtpd_data_restrictions`` gets a server that answers every request and limits nobody, which
is the commonest failure of rate-limiting policy daemons and is invisible from the mail flow.

:class:`StageWatch` is pure logic with the clock passed in: the server calls :meth:`observe`
for every request and logs the text it returns. The warning comes as soon as the evidence is
clear: one client has passed RCPT checks for more messages (distinct ``instance`` values) than
its smallest message limit allows, or for more recipients than its smallest recipient limit,
and not one DATA request came meanwhile. With DATA counted that client would have been refused
at RCPT, so this cannot be chance. Without limits to compare with, the older rule applies: at
least ``min_rcpt`` RCPT requests over ``window_seconds`` and no DATA request. The warning is
given once; a DATA request re-arms it (someone fixed main.cf, and may break it again).

RCPT requests that the policy server itself refused (the client is at its limit) are not
counted: such a client never reaches DATA however Postfix is configured, and a limited client
retrying all night must not look like a misconfiguration.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

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
# Clients whose RCPT-stage messages are tracked while no DATA request comes; more start over.
MAX_TRACKED_CLIENTS = 10_000


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
        self.message_limit: int | None = None
        self.recipient_limit: int | None = None
        # client -> (distinct instances, RCPT requests) since the last DATA request
        self._clients: dict[str, tuple[set[str], int]] = {}

    def set_limits(self, message_limit: int | None, recipient_limit: int | None) -> None:
        """The smallest message and recipient counts of the limits in force (None: no limit)."""
        self.message_limit = message_limit
        self.recipient_limit = recipient_limit

    def observe(
        self,
        stage: str,
        now: float,
        *,
        refused: bool = False,
        client: str = "",
        instance: str = "",
    ) -> str | None:
        """Note one request in ``stage`` at time ``now`` (monotonic seconds).

        ``refused``: the policy server answered this request with a limit reply. ``client``
        and ``instance``: who asked, and the message (Postfix's ``instance`` attribute).
        Returns the warning's text when it is due (once), else None.
        """
        stage = stage.upper()
        # BDAT is announced to policy servers as DATA by Postfix; accept either spelling.
        if stage in ("DATA", "BDAT"):
            self.data_seen = True
            self._first_rcpt = None
            self._rcpt_count = 0
            self._last_warning = None
            if self._clients:
                self._clients = {}
            return None
        if stage != "RCPT" or refused or self._last_warning is not None:
            return None
        if self._first_rcpt is None:
            self._first_rcpt = now
        self._rcpt_count += 1
        why = self._client_evidence(client, instance)
        if why is None:
            if self._rcpt_count < self.min_rcpt or now - self._first_rcpt < self.window_seconds:
                return None
            why = f"{self._rcpt_count} RCPT requests in {now - self._first_rcpt:.0f} s"
        self._last_warning = now
        self._clients = {}
        text = f"{WARNING_TEXT} ({why})"
        if self.log_warnings:
            log.warning("%s", text)
        return text

    def _client_evidence(self, client: str, instance: str) -> str | None:
        """Why one client's RCPT requests prove the DATA check missing, or None."""
        if not client or (self.message_limit is None and self.recipient_limit is None):
            return None
        seen = self._clients.get(client)
        if seen is None:
            if len(self._clients) >= MAX_TRACKED_CLIENTS:
                self._clients = {}
            seen = (set(), 0)
        instances, rcpts = seen
        if instance:
            instances.add(instance)
        rcpts += 1
        self._clients[client] = (instances, rcpts)
        if self.message_limit is not None and len(instances) > self.message_limit:
            return (
                f"client {client} passed RCPT for {len(instances)} messages, over its limit of"
                f" {self.message_limit}, and no DATA request came"
            )
        if self.recipient_limit is not None and rcpts > self.recipient_limit:
            return (
                f"client {client} passed RCPT for {rcpts} recipients, over its limit of"
                f" {self.recipient_limit}, and no DATA request came"
            )
        return None


class StageObserver(Protocol):
    """Something that wants to see every request's stage (the misconfiguration watch)."""

    def observe(
        self,
        stage: str,
        now: float,
        *,
        refused: bool = False,
        client: str = "",
        instance: str = "",
    ) -> str | None:
        """A warning to log, or None. ``refused``: this request got a limit reply."""


# Called once with the watch's warning, and once with None at the first DATA request after a
# start (so a note in Redis that `check` reads is written and cleared); runs in the background.
StageReport = Callable[[str | None], Awaitable[None]]
