"""The ``METRICS_LISTEN`` listener: Prometheus' ``/metrics`` and a ``/healthz`` of the process.

Served by prometheus-client's WSGI app on the standard library's threading WSGI server, in a
thread of its own: a scrape never waits behind policy decisions on the event loop, and the
policy server does not load aiohttp (about 11 MB) just for this. ``/healthz`` gives the policy
server the health check the webhook already has: 200 ``{"redis": "ok"}`` when Redis answers a
PING (sent on the event loop, where the store lives), else 503.

Reading the decision counters from this thread is safe: :class:`ratelimit.metrics.PolicyMetrics`
creates every key up front, so the event loop only ever replaces integers in place.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import CancelledError as FutureCancelled
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

from ratelimit.listen import ListenAddress
from ratelimit.metrics import Metrics
from ratelimit.store import Store, StoreUnavailable

log = logging.getLogger(__name__)

# /healthz waits this long for the PING beyond STORE_TIMEOUT (the loop may be busy).
HEALTH_SLACK = 1.0

StartResponse = Callable[[str, list[tuple[str, str]]], Any]


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """A scrape every few seconds is not news: no access log."""


class MetricsServer:
    """``/metrics`` and ``/healthz`` on every address, each in its own thread."""

    def __init__(self, metrics: Metrics, store: Store, loop: asyncio.AbstractEventLoop) -> None:
        self.scrape = make_wsgi_app(metrics.registry)
        self.store = store
        self.loop = loop
        self.servers: list[ThreadingWSGIServer] = []

    def app(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == "/healthz":
            status, body = self.health()
            start_response(status, [("Content-Type", "application/json")])
            return [json.dumps(body).encode()]
        return self.scrape(environ, start_response)  # type: ignore[no-any-return]

    def health(self) -> tuple[str, dict[str, str]]:
        future = asyncio.run_coroutine_threadsafe(self.store.ping(), self.loop)
        try:
            future.result(timeout=self.store.timeout + HEALTH_SLACK)
        except (StoreUnavailable, FutureTimeout, FutureCancelled) as error:  # cancelled: stopping
            future.cancel()
            detail = str(error) or "timed out"
            log.warning("/healthz: Redis unavailable (%s)", detail)
            body = {"redis": "unavailable", "error": "store_unavailable", "detail": detail}
            return "503 Service Unavailable", body
        return "200 OK", {"redis": "ok"}

    def start(self, addresses: Iterable[ListenAddress]) -> None:
        """Bind every address (raise OSError naming the one that failed) and serve."""
        for address in addresses:
            if address.path is not None:
                self.stop()
                raise OSError(f"cannot listen on {address}: METRICS_LISTEN takes host:port")
            host = address.host or "127.0.0.1"

            class Server(ThreadingWSGIServer):
                address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

            try:
                server = make_server(
                    host, address.port or 0, self.app, Server, handler_class=_QuietHandler
                )
            except OSError as error:
                self.stop()
                raise OSError(
                    error.errno, f"cannot listen on {address}: {error.strerror}"
                ) from None
            self.servers.append(server)
            threading.Thread(
                target=server.serve_forever, name=f"metrics {address}", daemon=True
            ).start()
            log.info("metrics listening on %s", address)

    def stop(self) -> None:
        """Stop serving (blocks up to serve_forever's 0.5 s poll: call it in a thread)."""
        for server in self.servers:
            server.shutdown()
            server.server_close()
        self.servers.clear()
