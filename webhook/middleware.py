"""The webhook's guards around every request: a bound on requests in flight, and counting."""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web
from aiohttp.typedefs import Middleware

from ratelimit.metrics import Metrics
from webhook.errors import Handler, error_response

log = logging.getLogger("webhook.app")

# The whole handling of one request. Longer than the DNS lifetime plus a few Redis calls at
# STORE_TIMEOUT, so it only fires when something hangs that has no timeout of its own.
REQUEST_TIMEOUT = 15.0


def in_flight_limit(limit: int) -> Middleware:
    """A middleware refusing (503 ``busy``) what exceeds ``limit`` requests in flight."""
    in_flight = 0

    @web.middleware
    async def limit_in_flight(request: web.Request, handler: Handler) -> web.StreamResponse:
        nonlocal in_flight
        if in_flight >= limit:
            log.warning(
                "webhook: %d requests in flight, refusing one from %s", limit, request.remote
            )
            return error_response(503, "busy", f"more than {limit} requests in flight")
        in_flight += 1
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                return await handler(request)
        except TimeoutError:
            log.warning(
                "webhook %s %s: no answer within %g s",
                request.method,
                request.path,
                REQUEST_TIMEOUT,
            )
            return error_response(503, "timeout", f"no answer within {REQUEST_TIMEOUT:g} s")
        finally:
            in_flight -= 1

    return limit_in_flight


def count_requests(metrics: Metrics) -> Middleware:
    """A middleware counting every answer by route (its pattern, never the raw path) and status."""

    @web.middleware
    async def count(request: web.Request, handler: Handler) -> web.StreamResponse:
        response = await handler(request)
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        metrics.http_requests.labels(route, str(response.status)).inc()
        return response

    return count
