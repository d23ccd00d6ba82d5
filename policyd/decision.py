"""The policy: which requests are limited, and the action each verdict becomes.

The replies table of docs/interface.md lives here. Redis is reached only through
:class:`ratelimit.limiter.Limiter`; what a failed store means (``ON_STORE_ERROR``) is decided here
and logged, once per outage rather than once per request.
"""

from __future__ import annotations

import asyncio
import logging
import time

from policyd.decision_log import log_summaries
from policyd.logs import fields
from policyd.protocol import PolicyRequest
from policyd.refusal_log import RefusalLog
from policyd.replies import COUNTED_STATES, DUNNO, PASSING_ACTIONS, DecisionSettings, Replies
from policyd.scope import LimitedScope
from policyd.server import Later
from policyd.stage_watch import StageObserver, StageReport
from policyd.store_outage import StoreOutage, decision_fields
from policyd.waiting import WaitingDecision
from ratelimit.limiter import Client, Limiter, Mode
from ratelimit.metrics import Metrics
from ratelimit.store import StoreUnavailable

log = logging.getLogger(__name__)

CHECKED_STATES = frozenset({"RCPT"})
# The `result` label of requests that no limit was asked about.
NOT_COUNTED = "not_counted"


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

    def answer(self, request: PolicyRequest, later: Later) -> str | None:
        """The action for ``request`` now, or None: then ``later(action)`` is called once, as soon
        as Redis' reply is read (``later(None)``: the decision failed, logged; send no reply).

        A decision that waits for Redis completes by callback, straight from its batch's reply:
        no task and no coroutine chain is woken per decision (issue 13).
        """
        metrics = self.metrics
        started = time.perf_counter() if metrics is not None else 0.0
        state = request.protocol_state
        if state in COUNTED_STATES:
            mode = Mode.COUNT
        elif state in CHECKED_STATES:
            mode = Mode.CHECK
        else:
            return self.answered(request, state, DUNNO, NOT_COUNTED, started)
        client = self._limited_client(request, state)
        if client is None:
            return self.answered(request, state, DUNNO, NOT_COUNTED, started)
        waiter = WaitingDecision(self, request, state, client.address, started, later)
        try:
            verdict = self.limiter.submit(client, mode, request.recipient_count, waiter)
        except StoreUnavailable as error:
            return waiter.action_for_failure(error)
        if verdict is None:
            return None
        return waiter.action_for(verdict)

    async def __call__(self, request: PolicyRequest) -> str:
        """:meth:`answer` as a coroutine (for callers that await one decision)."""
        future: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()

        def later(action: str | None) -> None:
            if not future.done():
                future.set_result(action)

        action = self.answer(request, later)
        if action is None:
            action = await future
        if action is None:
            raise RuntimeError("the policy decision failed (logged)")
        return action

    def answered(
        self, request: PolicyRequest, state: str, action: str, result: str, started: float
    ) -> str:
        """What follows every decision: its metric, the stage watch, the refusal summaries."""
        metrics = self.metrics
        if metrics is not None:
            metrics.policy.decided(state, result, time.perf_counter() - started)
        watch = self.watch
        if watch is not None:
            # After the decision: a limited client that keeps retrying only ever reaches RCPT,
            # and must not look like a Postfix that never asks at DATA.
            if state in COUNTED_STATES:
                watch.observe(state, 0.0)  # DATA is seen: nothing to warn of, no time needed
                if not self._data_confirmed:
                    self._data_confirmed = True
                    self._send_report(None)
            else:
                warning = watch.observe(
                    state,
                    time.monotonic(),
                    refused=action != DUNNO and not action.startswith("WARN "),
                    client=request.client_address,
                    instance=request.get("instance"),
                )
                if warning:
                    log.warning("%s", warning, extra=fields(stage=state))
                    self._send_report(warning)
        if self.refusals.tracking:
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

    def _limited_client(self, request: PolicyRequest, state: str) -> Client | None:
        """The client when its request is to be limited; None (logged) when not."""
        client = self.limiter.client(request.client_address)
        if client is None:
            log.warning(
                "policy request without a usable client_address (%r), stage=%s queue_id=%s"
                " instance=%s: DUNNO",
                request.client_address[:64],
                state,
                request.get("queue_id"),
                request.get("instance"),
            )
            return None
        scope = self.scope
        address = client.address
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
            return None
        return client


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
