"""The policy: which requests are limited, and the action each verdict becomes.

The replies table of docs/interface.md lives here. Redis is reached only through
:class:`ratelimit.limiter.Limiter`; what a failed store means (``ON_STORE_ERROR``) is decided here
and logged, once per outage rather than once per request.
"""

from __future__ import annotations

import asyncio
import logging
import time

from policyd.decision_log import log_compromised, log_summaries
from policyd.logs import fields
from policyd.protocol import PolicyRequest
from policyd.refusal_log import RefusalLog
from policyd.replies import PASSING_ACTIONS, DecisionSettings, Replies
from policyd.scope import LimitedScope
from policyd.stage_watch import StageObserver, StageReport
from policyd.store_outage import StoreOutage, decision_fields
from ratelimit.addresses import IPAddress, parse_ip
from ratelimit.limiter import Counted, Limited, Limiter, Verdict
from ratelimit.limits import Limit, format_window
from ratelimit.metrics import Metrics
from ratelimit.store import StoreUnavailable

log = logging.getLogger(__name__)

DUNNO = "DUNNO"
# Postfix sends protocol_state=DATA from smtpd_data_restrictions; with CHUNKING the same
# restrictions run for the first BDAT command, so BDAT is counted as a message too.
COUNTED_STATES = frozenset({"DATA", "BDAT"})
CHECKED_STATES = frozenset({"RCPT"})
# client_address texts remembered with their parsed address (ipaddress parsing costs a few µs
# per request); when this many are held the memo starts again from empty.
MAX_REMEMBERED_ADDRESSES = 16_384
# The `result` label of requests that no limit was asked about, and of those Redis failed.
NOT_COUNTED = "not_counted"
STORE_ERROR = "store_error"


class PolicyDecider:
    """Turns one policy request into one action."""

    def __init__(
        self,
        limiter: Limiter,
        replies: Replies,
        watch: StageObserver | None = None,
        metrics: Metrics | None = None,
        *,
        scope: LimitedScope | None = None,
        report: StageReport | None = None,
    ) -> None:
        self.limiter = limiter
        self.replies = replies
        self.watch = watch
        self.metrics = metrics
        self.scope = scope or LimitedScope(())
        self.report = report
        self.refusals = RefusalLog()
        self.outage = StoreOutage()
        self._addresses: dict[str, IPAddress | None] = {}
        self._data_confirmed = False
        self._reports: set[asyncio.Task[None]] = set()

    @classmethod
    def from_settings(
        cls,
        limiter: Limiter,
        settings: DecisionSettings,
        watch: StageObserver | None = None,
        report: StageReport | None = None,
        metrics: Metrics | None = None,
    ) -> PolicyDecider:
        """The decider for these settings (the server and the tests wire it the same way)."""
        return cls(
            limiter,
            Replies.from_settings(settings),
            watch,
            metrics,
            scope=LimitedScope(settings.limited_networks),
            report=report,
        )

    def reconfigure(self, settings: DecisionSettings) -> None:
        """SIGHUP: new replies, mode and scope from the next request on."""
        self.replies = Replies.from_settings(settings)
        self.scope = LimitedScope(settings.limited_networks)

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
            warning = self.watch.observe(
                state,
                time.monotonic(),
                refused=action != DUNNO and not action.startswith("WARN "),
                client=request.client_address,
                instance=request.get("instance"),
            )
            if warning:
                log.warning("%s", warning, extra=fields(stage=state))
                self._send_report(warning)
            elif state in COUNTED_STATES and not self._data_confirmed:
                self._data_confirmed = True
                self._send_report(None)
        log_summaries(self.refusals)
        return action

    def flush(self) -> None:
        """At stop: the summaries still pending, so no count is lost from the log."""
        log_summaries(self.refusals, everything=True)

    def _send_report(self, warning: str | None) -> None:
        if self.report is None:
            return
        task = asyncio.get_running_loop().create_task(self._reported(self.report, warning))
        self._reports.add(task)  # kept until done: the loop holds tasks only weakly
        task.add_done_callback(self._reports.discard)

    @staticmethod
    async def _reported(report: StageReport, warning: str | None) -> None:
        try:
            await report(warning)
        except StoreUnavailable as error:
            # Only `check` reads the note; the warning itself is already in the log.
            log.debug("could not record the DATA-stage note in Redis: %s", error)

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
        scope = self.scope
        if scope.networks and not scope.covers(
            address, authenticated=bool(request.get("sasl_username"))
        ):
            if log.isEnabledFor(logging.DEBUG):
                log.debug(
                    "DUNNO client=%s stage=%s outcome=outside LIMITED_NETWORKS (not counted)",
                    address,
                    state,
                    extra=fields(client=str(address), stage=state, action=DUNNO),
                )
            return DUNNO, NOT_COUNTED
        try:
            if counting:
                verdict = await self.limiter.count_message(address, request.recipient_count)
            else:
                verdict = await self.limiter.check(address)
        except StoreUnavailable as error:
            return self.outage.failed(
                str(address), state, request, error, self.replies
            ), STORE_ERROR
        self.outage.ok()
        if not isinstance(verdict, Limited) and not log.isEnabledFor(logging.DEBUG):
            return DUNNO, verdict.outcome.value  # the common case: no address text, no log line
        return self._reply(str(address), state, request, verdict), verdict.outcome.value

    def _reply(self, ip: str, state: str, request: PolicyRequest, verdict: Verdict) -> str:
        if not isinstance(verdict, Limited):
            if log.isEnabledFor(logging.DEBUG):
                recipients = (
                    f" recipients={request.recipient_count}" if state in COUNTED_STATES else ""
                )
                log.debug(
                    "DUNNO client=%s network=%s stage=%s outcome=%s%s queue_id=%s instance=%s",
                    ip,
                    verdict.network,
                    state,
                    verdict.outcome.value,
                    recipients,
                    request.get("queue_id"),
                    request.get("instance"),
                    extra=decision_fields(ip, state, request, action=DUNNO),
                )
            return DUNNO
        limit, counted = verdict.limit, verdict.counted
        replies = self.replies
        too_big = self._too_big(state, request) if replies.too_big_reply else None
        if too_big is not None:
            # However long the client waits, this message cannot pass: answer permanently.
            limit, counted, template = too_big, Counted.RECIPIENTS, replies.too_big_reply
        else:
            template = replies.limit_reply
        reply = template.format(
            ip=ip, limit=f"{limit.count} {counted.value}", window=format_window(limit.window)
        )
        action = replies.sent(reply)
        limit_text = f"{limit} {counted.value}"
        verb = "would limit (MODE=monitor)" if replies.monitor else "limited"
        if verdict.compromised:
            # Independent of which refusals get a line of their own: decide.lua says when.
            log_compromised(ip, request, verdict, self.metrics)
        if too_big is not None:
            # What this limit had counted is unknown (the script stopped at the first limit it
            # found reached) and beside the point: the message alone is too big.
            extra = decision_fields(ip, state, request, action=action, limit=limit_text, used=None)
            log.info(
                "%s client=%s network=%s stage=%s limit=%s: one message with %d recipients"
                " exceeds the limit by itself and can never pass; answered %s sender=%s"
                " queue_id=%s instance=%s",
                verb,
                ip,
                verdict.network,
                state,
                limit_text,
                request.recipient_count,
                action.split(" ", 3)[0] if not replies.monitor else "WARN",
                request.get("sender")[:256],
                request.get("queue_id"),
                request.get("instance"),
                extra=extra,
            )
            return action
        if not self.refusals.refused(verdict.network, limit_text, limit.window, time.time()):
            return action  # counted, and summarised when the limit's window has passed
        extra = decision_fields(
            ip, state, request, action=action, limit=limit_text, used=verdict.used
        )
        recipients = f" recipients={request.recipient_count}" if state in COUNTED_STATES else ""
        log.info(
            "%s client=%s network=%s stage=%s limit=%s used=%d%s sender=%s queue_id=%s"
            " instance=%s (further refusals within %s are counted, then summarised)",
            verb,
            ip,
            verdict.network,
            state,
            limit_text,
            verdict.used,
            recipients,
            request.get("sender")[:256],
            request.get("queue_id"),
            request.get("instance"),
            format_window(limit.window),
            extra=extra,
        )
        return action

    def _too_big(self, state: str, request: PolicyRequest) -> Limit | None:
        """The smallest recipient limit this message exceeds on its own (DATA only), if any."""
        if state not in COUNTED_STATES:
            return None
        recipients = request.recipient_count
        over = [lim for lim in self.limiter.config.recipient_limits if recipients > lim.count]
        return min(over, key=lambda lim: lim.count) if over else None


# Importers name these as the decision's: the replies and the settings it reads.
__all__ = [
    "COUNTED_STATES",
    "DUNNO",
    "PASSING_ACTIONS",
    "DecisionSettings",
    "PolicyDecider",
    "Replies",
    "StageObserver",
    "StageReport",
    "decision_fields",
]
