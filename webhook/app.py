"""The webhook's aiohttp application: routes, the signature check, the campus rules, grants.

:func:`build_app` takes every dependency ready-made (settings, grants, nonce ledger, store, DNS
checker) and keeps no global state, so tests and the CLI each build their own.

A ``POST /v1/whitelist`` goes through, in this order, each step answering on its own:
body size (413) → signature and timestamp (401) → nonce (409) → Content-Type (415) → JSON body
(400) → eligibility (403) → IP validity (422 ``invalid_ip``) → allowed networks (422
``ip_not_allowed``) → registered name in DNS (422 / 502 / 504) → grant (429 / 201 / 200).
The steps from eligibility on are :func:`webhook.granting.grant_by_rules`, which the
self-service page (:mod:`webhook.page`) goes through too.
Redis failing anywhere is 503 ``store_unavailable``. Every error, aiohttp's own 404/405/413
included, is JSON ``{"error": CODE, "detail": TEXT}``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from aiohttp import web

from ratelimit.addresses import IPAddress
from ratelimit.grants import Grant, Grants
from ratelimit.metrics import Metrics
from ratelimit.nonces import NonceLedger
from ratelimit.store import NotReplicated, Store, StoreUnavailable
from webhook import auth, granting, rules
from webhook.config import WebhookSettings
from webhook.errors import (
    REFUSAL_ADDRESS,
    REFUSAL_USER,
    RETRY_AFTER,
    ApiError,
    error_response,
    errors,
    shown_address,
)
from webhook.middleware import count_requests, in_flight_limit
from webhook.models import BadRequest, error_body, parse_grant_request
from webhook.page import views as page
from webhook.page.session import PageSessions
from webhook.registered_name import RegisteredNameChecker

log = logging.getLogger(__name__)

# docs/interface.md: a body over 4 KiB is refused (413). A grant request is about 100 bytes; the cap
# keeps a caller from making us buffer and hash megabytes before the signature is even checked.
MAX_BODY = 4096
# The portal sends a few requests a minute. Far more at once than this means a runaway client or
# an attack; answering 503 at once protects Redis, the DNS servers and this process' memory.
MAX_IN_FLIGHT = 64
# A client that opened a request must finish sending its (at most 4 KiB) body in this time;
# otherwise a slow sender would hold one of the MAX_IN_FLIGHT places indefinitely.
BODY_TIMEOUT = 5.0
SOURCE = "webhook"
JSON = "application/json"
# RFC 8259 §8.1: JSON between systems is UTF-8, so a charset parameter may only say so. Charset
# names are case-insensitive (RFC 9110 §8.3.2; Java clients send "UTF-8"); "utf8" is not a
# registered name, but clients send it and it cannot mean anything else.
UTF8_CHARSETS = frozenset({"utf-8", "utf8"})


class Webhook:
    """The request handlers, holding the dependencies :func:`build_app` was given."""

    def __init__(
        self,
        settings: WebhookSettings,
        grants: Grants,
        nonces: NonceLedger,
        store: Store,
        resolver: RegisteredNameChecker,
        clock: Callable[[], float] = time.time,
        metrics: Metrics | None = None,
    ) -> None:
        if settings.webhook_secret is None:
            raise ValueError("SMTP_WHITELIST_WEBHOOK_SECRET is required for the webhook")
        self._secret = settings.webhook_secret.get_secret_value()
        self.settings = settings
        self.grants = grants
        self.nonces = nonces
        self.store = store
        self.resolver = resolver
        self.clock = clock
        self.metrics = metrics

    def _count_grant(self, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.grants.labels(SOURCE, outcome).inc()

    def reconfigure(self, settings: WebhookSettings) -> None:
        """SIGHUP: the campus rules, DNS rule, TTL and secret apply from the next request."""
        if settings.webhook_secret is None:
            raise ValueError("SMTP_WHITELIST_WEBHOOK_SECRET is required for the webhook")
        self._secret = settings.webhook_secret.get_secret_value()
        self.settings = settings
        self.resolver = RegisteredNameChecker.from_settings(settings)
        self.grants.default_ttl = settings.whitelist_ttl

    async def healthz(self, request: web.Request) -> web.Response:
        """``GET /healthz``, unsigned: whether Redis answers."""
        try:
            await self.store.ping()
        except StoreUnavailable as error:
            log.warning("webhook /healthz: Redis unavailable (%s)", error)
            body = error_body("store_unavailable", "the grant store (Redis) is unavailable")
            return web.json_response(
                {"redis": "unavailable", **body}, status=503, headers={"Retry-After": RETRY_AFTER}
            )
        return web.json_response({"redis": "ok"})

    async def create(self, request: web.Request) -> web.Response:
        """``POST /v1/whitelist``: apply the campus rules, then grant or refresh."""
        body = await self._authenticate(request)
        charset = request.charset
        if request.content_type != JSON or (
            charset is not None and charset.lower() not in UTF8_CHARSETS
        ):
            raise ApiError(415, "unsupported_media_type", f"Content-Type must be {JSON} (UTF-8)")
        try:
            wanted = parse_grant_request(body)
        except BadRequest as error:
            raise ApiError(400, "bad_request", error.detail) from None
        request[REFUSAL_USER] = wanted.user
        request[REFUSAL_ADDRESS] = shown_address(wanted.ip)
        try:
            grant, created = await granting.grant_by_rules(
                self.settings,
                self.resolver,
                self.grants,
                ip=wanted.ip,
                user=wanted.user,
                role=wanted.role,
                status=wanted.status,
                source=SOURCE,
                log=log,
            )
        except NotReplicated as error:
            # GRANT_MIN_REPLICAS: written on the master, but a failover now could lose it.
            log.warning(
                "webhook ip=%s user=%s: grant not confirmed (%s)", wanted.ip, wanted.user, error
            )
            raise ApiError(
                503, "store_unavailable", f"the grant may not have been kept: {error}"
            ) from None
        except granting.Refused as refused:
            if refused.code in granting.RULE_REFUSALS:
                self._count_grant("refused")
            raise ApiError(granting.STATUS[refused.code], refused.code, refused.detail) from None
        self._count_grant("created" if created else "refreshed")
        return web.json_response(grant.as_json(), status=201 if created else 200)

    async def show(self, request: web.Request) -> web.Response:
        """``GET /v1/whitelist/{ip}``: the live grant of one address."""
        await self._authenticate(request)
        ip = self._path_ip(request)
        grant = await self.grants.get(ip)
        if grant is None:
            raise ApiError(404, "not_found", f"{ip} has no live grant")
        return web.json_response(grant.as_json())

    async def remove(self, request: web.Request) -> web.Response:
        """``DELETE /v1/whitelist/{ip}``: end a grant now."""
        await self._authenticate(request)
        ip = self._path_ip(request)
        grant = await self.grants.revoke(ip, source=SOURCE)
        if grant is None:
            raise ApiError(404, "not_found", f"{ip} has no live grant")
        _log_removal(grant)
        self._count_grant("removed")
        return web.Response(status=204)

    async def list(self, request: web.Request) -> web.Response:
        """``GET /v1/whitelist``: every live grant."""
        await self._authenticate(request)
        return web.json_response({"items": [g.as_json() for g in await self.grants.list()]})

    async def _authenticate(self, request: web.Request) -> bytes:
        """Read the (capped) body, check the signature, claim the nonce; return the body."""
        body = await _read_body(request)
        headers = request.headers
        values: dict[str, str | None] = {}
        for name in (auth.TIMESTAMP_HEADER, auth.NONCE_HEADER, auth.SIGNATURE_HEADER):
            found = headers.getall(name, [])
            if len(found) > 1:
                raise _unauthorized(f"{name} given more than once")
            values[name] = found[0] if found else None
        try:
            signed = auth.verify(
                self._secret,
                timestamp=values[auth.TIMESTAMP_HEADER],
                nonce=values[auth.NONCE_HEADER],
                signature=values[auth.SIGNATURE_HEADER],
                method=request.method,
                path=request.raw_path.partition("?")[0],
                body=body,
                now=self.clock(),
            )
        except auth.AuthError as error:
            raise _unauthorized(error.detail) from None
        # Only now, with a valid signature, may the request write to Redis.
        if not await self.nonces.claim(signed.nonce, auth.NONCE_TTL):
            raise ApiError(
                409,
                "replayed",
                f"this X-Nonce was used within the last {auth.NONCE_TTL} s",
                logging.WARNING,
            )
        return body

    @staticmethod
    def _path_ip(request: web.Request) -> IPAddress:
        text = request.match_info["ip"]
        # Only the syntax matters here: a grant that exists can always be read and ended, even
        # if ALLOWED_NETWORKS changed since it was made.
        ip = rules.parse_address(text)
        if ip is None:
            raise ApiError(422, "invalid_ip", "not an IPv4 or IPv6 address")
        return ip


def _unauthorized(detail: str) -> ApiError:
    return ApiError(401, "unauthorized", detail, logging.WARNING)


def _log_removal(grant: Grant) -> None:
    log.info(
        "webhook removal ip=%s user=%s role=%s status=%s",
        grant.ip,
        grant.user,
        grant.role,
        grant.status,
    )


async def _read_body(request: web.Request) -> bytes:
    """The raw body, refused (413) beyond MAX_BODY before it is read when the length is declared."""
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise ApiError(413, "too_large", f"the body may be at most {MAX_BODY} bytes")
    try:
        async with asyncio.timeout(BODY_TIMEOUT):
            # client_max_size (build_app) stops a chunked body at the same cap.
            return await request.read()
    except TimeoutError:
        raise ApiError(
            408, "request_timeout", f"body not received within {BODY_TIMEOUT:g} s"
        ) from None
    except web.HTTPRequestEntityTooLarge:
        raise ApiError(413, "too_large", f"the body may be at most {MAX_BODY} bytes") from None


WEBHOOK = web.AppKey("webhook", Webhook)


def build_app(
    settings: WebhookSettings,
    grants: Grants,
    nonces: NonceLedger,
    store: Store,
    resolver: RegisteredNameChecker,
    *,
    max_in_flight: int = MAX_IN_FLIGHT,
    clock: Callable[[], float] = time.time,
    metrics: Metrics | None = None,
) -> web.Application:
    """The webhook application for these dependencies (raises ValueError without a secret)."""
    hooks = Webhook(settings, grants, nonces, store, resolver, clock, metrics)
    # The error middleware is outside the others, so even the in-flight refusal is shaped by it;
    # the counting one is outermost, so it sees every answer as sent.
    middlewares = [errors, in_flight_limit(max_in_flight)]
    if metrics is not None:
        middlewares.insert(0, count_requests(metrics))
    app = web.Application(client_max_size=MAX_BODY, middlewares=middlewares)
    app[WEBHOOK] = hooks  # SIGHUP reaches the handlers through it (Webhook.reconfigure)
    app.router.add_get("/healthz", hooks.healthz)
    app.router.add_post("/v1/whitelist", hooks.create)
    app.router.add_get("/v1/whitelist", hooks.list, allow_head=False)
    app.router.add_get("/v1/whitelist/{ip}", hooks.show, allow_head=False)
    app.router.add_delete("/v1/whitelist/{ip}", hooks.remove)
    if settings.handoff_secret is not None:  # docs/interface.md: the page is off without it
        sessions = PageSessions(store, max_age=settings.session_max_age)
        page.install(app, settings, sessions, grants, resolver, clock=clock, metrics=metrics)
    return app


__all__ = [
    "MAX_BODY",
    "MAX_IN_FLIGHT",
    "WEBHOOK",
    "ApiError",
    "Webhook",
    "build_app",
    "error_response",
]
