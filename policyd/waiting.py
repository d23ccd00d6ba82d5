"""One decision waiting for Redis, completed by callback from its batch's reply (issue 13)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from policyd.protocol import PolicyRequest
from policyd.replies import DUNNO
from policyd.server import Later
from policyd.verdict_action import verdict_action
from ratelimit.addresses import IPAddress
from ratelimit.limiter import Limited, Verdict
from ratelimit.store import StoreUnavailable

if TYPE_CHECKING:
    from policyd.decision import PolicyDecider

# The decision's own logger: operators filter on it.
log = logging.getLogger("policyd.decision")

# The `result` label of the requests Redis failed.
STORE_ERROR = "store_error"


class WaitingDecision:
    """One decision waiting for Redis: the VerdictWaiter its verdict (or failure) comes to, from
    the batch's reply, and what turns that into the action and answers the connection."""

    __slots__ = ("address", "decider", "later", "request", "started", "state")

    def __init__(
        self,
        decider: PolicyDecider,
        request: PolicyRequest,
        state: str,
        address: IPAddress,
        started: float,
        later: Later,
    ) -> None:
        self.decider = decider
        self.request = request
        self.state = state
        self.address = address
        self.started = started
        self.later = later

    def action_for(self, verdict: Verdict) -> str:
        decider = self.decider
        if decider.outage.failing_since is not None:  # not a call per decision to learn it
            decider.outage.ok()
        if not isinstance(verdict, Limited) and not log.isEnabledFor(logging.DEBUG):
            action = DUNNO  # the common case: no address text, no log line
        else:
            action = verdict_action(
                str(self.address),
                self.state,
                self.request,
                verdict,
                replies=decider.replies,
                refusals=decider.refusals,
                metrics=decider.metrics,
                recipient_limits=decider.limiter.config.recipient_limits,
            )
        return decider.answered(
            self.request, self.state, action, verdict.outcome._value_, self.started
        )

    def action_for_failure(self, error: StoreUnavailable) -> str:
        decider = self.decider
        action = decider.outage.failed(
            str(self.address), self.state, self.request, error, decider.replies
        )
        return decider.answered(self.request, self.state, action, STORE_ERROR, self.started)

    # -- VerdictWaiter: called from the batch's reply -------------------------------------------

    def decided(self, verdict: Verdict) -> None:
        # Not through a shared helper taking the method to call: this is every decision's path,
        # and a call less is 0.1 µs less.
        try:
            action: str | None = self.action_for(verdict)
        except Exception:
            self._log_bug()
            action = None
        self.later(action)

    def failed(self, error: StoreUnavailable) -> None:
        try:
            action: str | None = self.action_for_failure(error)
        except Exception:
            self._log_bug()
            action = None
        self.later(action)

    def cancelled(self) -> bool:
        return False  # a connection gone still gets its decision made: the message may be sent

    def _log_bug(self) -> None:
        """A bug, not a protocol or store problem: no reply (Postfix retries and then applies
        its default action), and the traceback goes to the log only."""
        log.exception("policy decision failed for %s", self.request.client_address[:64])
