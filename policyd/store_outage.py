"""A Redis outage as the policy server lives through it: ON_STORE_ERROR, logged once a minute."""

from __future__ import annotations

import logging
import time

from policyd.logs import fields
from policyd.protocol import PolicyRequest
from policyd.replies import PASSING_ACTIONS, Replies
from ratelimit.store import StoreError, StoreUnavailable

log = logging.getLogger("policyd.decision")

# While the store keeps failing, repeat the warning at most this often (with a count).
STORE_WARNING_INTERVAL = 60.0


class StoreOutage:
    """Counts the requests answered ON_STORE_ERROR, and logs the outage's start and end."""

    def __init__(self) -> None:
        self.failing_since: float | None = None
        self.failures = 0
        self.warned_at = 0.0

    def failed(
        self, ip: str, state: str, request: PolicyRequest, error: StoreUnavailable, replies: Replies
    ) -> str:
        """The action for a request Redis could not decide; one warning per outage and interval."""
        now = time.monotonic()
        configured = replies.on_store_error
        action = replies.sent(configured)
        self.failures += 1
        if self.failing_since is None or now - self.warned_at >= STORE_WARNING_INTERVAL:
            mode = "fail-open" if action.upper() in PASSING_ACTIONS else "fail-closed"
            if action != configured:
                mode = "fail-open: MODE=monitor"
            log.warning(
                "store %s (%s): answering ON_STORE_ERROR=%s (%s); %d request(s) so far"
                " in this outage; latest client=%s stage=%s queue_id=%s",
                "error" if isinstance(error, StoreError) else "unavailable",
                error,
                configured,
                mode,
                self.failures,
                ip,
                state,
                request.get("queue_id"),
                extra=decision_fields(ip, state, request, action=action),
            )
            self.warned_at = now
            if self.failing_since is None:
                self.failing_since = now
        return action

    def ok(self) -> None:
        """Redis answered: end the outage, with one line saying how long it lasted."""
        if self.failing_since is not None:
            log.warning(
                "store available again after %.1fs and %d failed request(s); limits apply",
                time.monotonic() - self.failing_since,
                self.failures,
            )
            self.failing_since = None
            self.failures = 0


def decision_fields(
    ip: str, state: str, request: PolicyRequest, **more: str | int | None
) -> dict[str, dict[str, str | int | None]]:
    """The structured fields of a decision line (LOG_FORMAT=json)."""
    return fields(
        client=ip,
        stage=state,
        queue_id=request.get("queue_id"),
        instance=request.get("instance"),
        sender=request.get("sender")[:256],
        **more,
    )
