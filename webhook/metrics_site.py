"""The ``METRICS_LISTEN`` listener: Prometheus' ``/metrics`` and a ``/healthz`` of the process.

Served by every process that has ``METRICS_LISTEN`` set (``policyd``, ``webhook``, ``serve``),
on the process' own event loop: a scrape reads the counters where they are kept, without locks.
``/healthz`` gives the policy server the health check the webhook already has: 200
``{"redis": "ok"}`` when Redis answers, else 503.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from aiohttp import web
from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4

from ratelimit.metrics import Metrics
from ratelimit.settings import ListenAddress
from ratelimit.store import Store, StoreUnavailable
from webhook.serve import start_webhook

log = logging.getLogger(__name__)


def build_metrics_app(metrics: Metrics, store: Store) -> web.Application:
    """``GET /metrics`` and ``GET /healthz`` for one process' metrics and store."""

    async def scrape(_: web.Request) -> web.Response:
        return web.Response(
            body=metrics.exposition(), headers={"Content-Type": CONTENT_TYPE_PLAIN_0_0_4}
        )

    async def healthz(_: web.Request) -> web.Response:
        try:
            await store.ping()
        except StoreUnavailable as error:
            log.warning("/healthz: Redis unavailable (%s)", error)
            return web.json_response(
                {"redis": "unavailable", "error": "store_unavailable", "detail": str(error)},
                status=503,
            )
        return web.json_response({"redis": "ok"})

    app = web.Application()
    app.router.add_get("/metrics", scrape)
    app.router.add_get("/healthz", healthz)
    return app


async def start_metrics(
    metrics: Metrics, store: Store, addresses: Sequence[ListenAddress]
) -> web.AppRunner:
    """Serve ``/metrics`` and ``/healthz``; stop with ``await runner.cleanup()``."""
    return await start_webhook(build_metrics_app(metrics, store), addresses, name="metrics")
