"""The policy: which requests are limited, and the action each verdict becomes.

The replies table of INTERFACE.md lives here. Redis is reached only through
:class:`ratelimit.limiter.Limiter`; what a failed store means (``ON_STORE_ERROR``) is decided here
and logged, once per outage rather than once per request.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Protocol

from policyd.protocol import PolicyRequest
from ratelimit.addresses import IPAddress, parse_ip
from ratelimit.limiter import Limiter, Outcome, Verdict
from ratelimit.limits import format_window
from ratelimit.metrics import Metrics
from ratelimit.settings import Settings
from ratelimit.store import StoreError, StoreUnavailable

log = logging.getLogger(__name__)

DUNNO = "DUNNO"
# Postfix sends protocol_state=DATA from smtpd_data_restrictions; with CHUNKING the same
# restrictions run for the first BDAT command, so BDAT is counted as a message too.
COUNTED_STATES = frozenset({"DATA", "BDAT"})
CHECKED_STATES = frozenset({"RCPT"})
# While the store keeps failing, repeat the warning at most this often (with a count).
STORE_WARNING_INTERVAL = 60.0
# client_address texts remembered with their parsed address (ipaddress parsing costs a few µs
# per request); when this many are held the memo starts again from empty.
MAX_REMEMBERED_ADDRESSES = 16_384
# The `result` label of requests that no limit was asked about, and of those Redis failed.
NOT_COUNTED = "not_counted"
STORE_ERROR = "store_error"


@dataclass(frozen=True, slots=True)
class Replies:
    """LIMIT_REPLY and ON_STORE_ERROR; replaced whole on SIGHUP."""

    limit_reply: str
    on_store_error: str

    @classmethod
    def from_settings(cls, settings: Settings) -> Replies:
        # {page} is known at start-up (PAGE_URL, validated free of braces); filling it in here
        # leaves only {ip}, {limit} and {window} for each decision.
        return cls(
            settings.limit_reply.replace("{page}", settings.page_url), settings.on_store_error
        )


class StageObserver(Protocol):
    """Something that wants to see every request's stage (the misconfiguration watch)."""

    def observe(self, stage: str, now: float, *, refused: bool = False) -> str | None:
        """A warning to log, or None. ``refused``: this request got a limit reply."""


class PolicyDecider:
    """Turns one policy request into one action."""

    def __init__(
        self,
        limiter: Limiter,
        replies: Replies,
        watch: StageObserver | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.limiter = limiter
        self.replies = replies
        self.watch = watch
        self.metrics = metrics
        self._store_failing_since: float | None = None
        self._store_failures = 0
        self._store_warned_at = 0.0
        self._addresses: dict[str, IPAddress | None] = {}

    async def __call__(self, request: PolicyRequest) -> str:
        metrics = self.metrics
        started = time.perf_counter() if metrics is not None else 0.0
        state = request.protocol_state
        action, result = await self._decide(request, state)
        if metrics is not None:
            metrics.policy.decided(state, result, time.perf_counter() - started)
        if self.watch is not None:
            # After the decision: a limited client that keeps retrying only ever reaches RCPT,
            # and must not look like a Postfix that never asks at DATA.
            warning = self.watch.observe(state, time.monotonic(), refused=action != DUNNO)
            if warning:
                log.warning("%s", warning)
        return action

    async def _decide(self, request: PolicyRequest, state: str) -> tuple[str, str]:
        """The action, and the ``result`` label it is counted under."""
        if state in COUNTED_STATES:
            counting = True
        elif state in CHECKED_STATES:
            counting = False
        else:
            return DUNNO, NOT_COUNTED
        text = request.client_address
        addresses = self._addresses
        try:
            address = addresses[text]
        except KeyError:
            address = parse_ip(text)
            if len(addresses) >= MAX_REMEMBERED_ADDRESSES:
                addresses.clear()
            addresses[text] = address
        if address is None:
            log.warning(
                "policy request without a usable client_address (%r), stage=%s queue_id=%s"
                " instance=%s: DUNNO",
                request.client_address[:64],
                state,
                request.get("queue_id"),
                request.get("instance"),
            )
            return DUNNO, NOT_COUNTED
        try:
            if counting:
                verdict = await self.limiter.count_message(address, request.recipient_count)
            else:
                verdict = await self.limiter.check(address)
        except StoreUnavailable as error:
            return self._store_failed(str(address), state, request, error), STORE_ERROR
        self._store_ok()
        if verdict.outcome is not Outcome.LIMITED and not log.isEnabledFor(logging.DEBUG):
            return DUNNO, verdict.outcome.value  # the common case: no address text, no log line
        return self._reply(str(address), state, request, verdict), verdict.outcome.value

    def _reply(self, ip: str, state: str, request: PolicyRequest, verdict: Verdict) -> str:
        if verdict.outcome is not Outcome.LIMITED:
            if log.isEnabledFor(logging.DEBUG):
                log.debug(
                    "DUNNO client=%s network=%s stage=%s outcome=%s recipients=%s queue_id=%s"
                    " instance=%s",
                    ip,
                    verdict.network,
                    state,
                    verdict.outcome.value,
                    request.get("recipient_count"),
                    request.get("queue_id"),
                    request.get("instance"),
                )
            return DUNNO
        assert verdict.limit is not None
        assert verdict.counted is not None
        limit = verdict.limit
        action = self.replies.limit_reply.format(
            ip=ip,
            limit=f"{limit.count} {verdict.counted.value}",
            window=format_window(limit.window),
        )
        log.info(
            "limited client=%s network=%s stage=%s limit=%s %s used=%d recipients=%s"
            " sender=%s queue_id=%s instance=%s",
            ip,
            verdict.network,
            state,
            limit,
            verdict.counted.value,
            verdict.used,
            request.get("recipient_count"),
            request.get("sender")[:256],
            request.get("queue_id"),
            request.get("instance"),
        )
        if verdict.compromised:
            self._compromised(ip, request, verdict)
        return action

    def _compromised(self, ip: str, request: PolicyRequest, verdict: Verdict) -> None:
        """Once per client per hour across every daemon sharing the Redis (decide.lua says when)."""
        log.warning(
            "likely compromised client=%s refusals=%d within the hour (OFFENDER_THRESHOLD) limit=%s"
            " %s sender=%s network=%s queue_id=%s",
            ip,
            verdict.compromised,
            verdict.limit,
            verdict.counted.value if verdict.counted else "",
            request.get("sender")[:256],
            verdict.network,
            request.get("queue_id"),
        )
        if self.metrics is not None:
            self.metrics.likely_compromised.inc()

    def _store_failed(
        self, ip: str, state: str, request: PolicyRequest, error: StoreUnavailable
    ) -> str:
        now = time.monotonic()
        action = self.replies.on_store_error
        self._store_failures += 1
        if (
            self._store_failing_since is None
            or now - self._store_warned_at >= STORE_WARNING_INTERVAL
        ):
            mode = "fail-open" if action.upper() in {"DUNNO", "OK"} else "fail-closed"
            log.warning(
                "store %s (%s): answering ON_STORE_ERROR=%s (%s); %d request(s) so far"
                " in this outage; latest client=%s stage=%s queue_id=%s",
                "error" if isinstance(error, StoreError) else "unavailable",
                error,
                action,
                mode,
                self._store_failures,
                ip,
                state,
                request.get("queue_id"),
            )
            self._store_warned_at = now
            if self._store_failing_since is None:
                self._store_failing_since = now
        return action

    def _store_ok(self) -> None:
        if self._store_failing_since is not None:
            log.warning(
                "store available again after %.1fs and %d failed request(s); limits apply",
                time.monotonic() - self._store_failing_since,
                self._store_failures,
            )
            self._store_failing_since = None
            self._store_failures = 0
