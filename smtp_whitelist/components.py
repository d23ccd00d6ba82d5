"""The parts a process runs, each with the same life: ``start()``, ``stop(grace)``, ``reload(new)``.

:mod:`smtp_whitelist.service` holds a list of them (uvicorn's ``Server`` is the model): it starts
them in order and stops those started if one fails, drains them all at once on SIGTERM, and on
SIGHUP hands each the new settings; each applies what it can and says which settings that was,
so :mod:`smtp_whitelist.reload` can name every changed setting that needs a restart.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Protocol

from policyd.metrics_http import MetricsServer
from ratelimit.metrics import Metrics
from ratelimit.store import Store
from smtp_whitelist.reload import CONNECTION_SETTINGS, WEBHOOK_SETTINGS
from smtp_whitelist.settings import Settings
from smtp_whitelist.wiring import Policy, connection_limits

if TYPE_CHECKING:  # a policyd-only process never loads aiohttp, the page and their templates
    from aiohttp import web


class Component(Protocol):
    async def start(self) -> None:
        """Bind and serve; raise OSError (naming the address) when it cannot."""

    async def stop(self, grace: float) -> None:
        """Stop accepting; what is in flight gets up to ``grace`` seconds."""

    def reload(self, new: Settings) -> frozenset[str]:
        """Apply what of ``new`` can change while running; the names of those settings."""


class PolicyComponent:
    """The policy server on POLICY_LISTEN, with the decision it serves."""

    def __init__(self, parts: Policy, settings: Settings) -> None:
        self.parts = parts
        self.addresses = settings.policy_listen

    async def start(self) -> None:
        await self.parts.server.start(self.addresses)

    async def stop(self, grace: float) -> None:
        await self.parts.server.stop(grace=grace)
        self.parts.decider.flush()  # the refusal summaries still held

    def reload(self, new: Settings) -> frozenset[str]:
        # The decision's own settings are applied by the service whatever runs (see reload.py).
        self.parts.server.limits = connection_limits(new)
        return CONNECTION_SETTINGS


class WebhookComponent:
    """The webhook (and the self-service page) on WEBHOOK_LISTEN."""

    def __init__(self, app: web.Application, settings: Settings) -> None:
        self.app = app
        self.addresses = settings.webhook_listen
        self.runner: web.AppRunner | None = None

    async def start(self) -> None:
        from webhook.serve import start_webhook

        self.runner = await start_webhook(self.app, self.addresses)

    async def stop(self, grace: float) -> None:
        # aiohttp's runner has its own grace (webhook.serve.SHUTDOWN_GRACE), set when built and
        # shorter than the process's, so the two drains together fit SIGTERM's budget.
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    def reload(self, new: Settings) -> frozenset[str]:
        if new.webhook_secret is None:
            return frozenset()  # refused by the settings when the webhook runs; kept as it was
        from webhook.app import WEBHOOK

        self.app[WEBHOOK].reconfigure(new)
        return WEBHOOK_SETTINGS


class MetricsComponent:
    """The /metrics listener on METRICS_LISTEN (a thread: scrapes never wait on the event loop)."""

    def __init__(self, metrics: Metrics, store: Store, settings: Settings) -> None:
        self.server = MetricsServer(metrics, store, asyncio.get_running_loop())
        self.addresses = settings.metrics_listen

    async def start(self) -> None:
        self.server.start(self.addresses)

    async def stop(self, grace: float) -> None:
        await asyncio.to_thread(self.server.stop)

    def reload(self, new: Settings) -> frozenset[str]:
        return frozenset()  # METRICS_LISTEN takes effect on restart
