"""Building the two servers from the settings and a store: once, here, for every caller.

The service, the tests and the benchmarks wire the policy server and the webhook through these
functions, so what runs in production is what is tested and measured.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from policyd.decision import PolicyDecider, StageObserver, StageReport
from policyd.server import ConnectionLimits, PolicyServer
from policyd.stage_watch import StageWatch
from ratelimit.grants import Grants
from ratelimit.limiter import LimitConfig, Limiter
from ratelimit.metrics import Metrics
from ratelimit.nonces import NonceLedger
from ratelimit.store import Store
from smtp_whitelist.settings import Settings

if TYPE_CHECKING:  # imported by build_webhook when called: policyd alone needs none of it
    from aiohttp import web

    from webhook.registered_name import RegisteredNameChecker


def smallest_counts(settings: Settings) -> tuple[int | None, int | None]:
    """The smallest message and recipient counts among the limits (None: no such limit)."""
    messages = min((lim.count for lim in settings.message_limits), default=None)
    recipients = min((lim.count for lim in settings.recipient_limits), default=None)
    return messages, recipients


def connection_limits(settings: Settings) -> ConnectionLimits:
    return ConnectionLimits(
        settings.max_connections, settings.idle_timeout, settings.request_timeout
    )


@dataclass
class Policy:
    """The policy server and the objects a reload reconfigures."""

    limiter: Limiter
    decider: PolicyDecider
    server: PolicyServer
    watch: StageWatch | None

    def reconfigure(self, settings: Settings) -> None:
        """The decision's settings from a reload (the rest: smtp_whitelist.reload)."""
        self.limiter.reconfigure(LimitConfig.from_settings(settings))
        self.decider.reconfigure(settings)
        if self.watch is not None:
            self.watch.set_limits(*smallest_counts(settings))


def build_policy(
    settings: Settings,
    store: Store,
    *,
    watch: StageWatch | None = None,
    report: StageReport | None = None,
    metrics: Metrics | None = None,
) -> Policy:
    """The policy server for ``settings`` on ``store``; the caller starts and stops it."""
    limiter = Limiter(store, LimitConfig.from_settings(settings))
    if watch is not None:
        watch.set_limits(*smallest_counts(settings))
    observer: StageObserver | None = watch
    decider = PolicyDecider.from_settings(limiter, settings, observer, report, metrics)
    return Policy(
        limiter, decider, PolicyServer(decider.answer, connection_limits(settings)), watch
    )


def build_webhook(
    settings: Settings,
    store: Store,
    *,
    resolver: RegisteredNameChecker | None = None,
    grants: Grants | None = None,
    metrics: Metrics | None = None,
    clock: Callable[[], float] = time.time,
    **options: Any,
) -> web.Application:
    """The webhook application for ``settings`` on ``store`` (ValueError without a secret).

    ``resolver`` and ``grants`` replace the ones the settings name (a test's silent DNS server);
    ``options`` go to :func:`webhook.app.build_app` (``max_in_flight``).
    """
    from webhook.app import build_app
    from webhook.registered_name import RegisteredNameChecker

    return build_app(
        settings,
        grants or Grants(store, settings),
        NonceLedger(store),
        store,
        resolver or RegisteredNameChecker.from_settings(settings),
        clock=clock,
        metrics=metrics,
        **options,
    )
