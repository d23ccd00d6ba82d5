"""What every page answer shares: headers, outcomes and their statuses, rendering, the session.

Every answer is a page whose ``<main>`` names its outcome in ``data-error`` (docs/interface.md,
"Self-service page"); the routes themselves are :mod:`webhook.page.views`.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import aiohttp_jinja2
from aiohttp import web

from ratelimit.addresses import IPAddress
from ratelimit.grants import Grants
from ratelimit.metrics import Metrics
from ratelimit.store import StoreUnavailable
from webhook import granting
from webhook.config import WebhookSettings
from webhook.page import i18n
from webhook.page.captcha import CaptchaRenderer
from webhook.page.client_address import HEADER, client_address
from webhook.page.session import (
    IP_MISMATCH,
    NO_SESSION,
    NOT_ELIGIBLE,
    PageSessions,
    Session,
    check,
)
from webhook.registered_name import RegisteredNameChecker

log = logging.getLogger("webhook.page.views")

SOURCE = "page"
COOKIE = "swl_page"
COOKIE_PATH = "/apply"
STATIC = Path(__file__).parent / "static"

# Nothing but our own stylesheet, image and audio: no script, no frame, no other origin.
CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self'; media-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    # The hand-off URL carries a signature: it must never leave in a Referer header.
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",  # frame-ancestors for browsers that predate it
}
# Pages and codes are personal: no browser or proxy cache may keep them.
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}

# HTTP status of each outcome; the webhook's codes keep the webhook's statuses.
STATUS = granting.STATUS | {
    "handoff_expired": 403,
    IP_MISMATCH: 403,
    "-1": 403,
    "-2": 403,
    "-3": 403,
    NO_SESSION: 403,
    NOT_ELIGIBLE: 403,
    "csrf_failed": 403,
    "bad_request": 400,
    "wrong_code": 403,  # only when the session ended; a first wrong code re-shows the form (200)
    "store_unavailable": 503,
}

P = TypeVar("P", bound="PageBase")
View = Callable[[P, web.Request], Awaitable[web.StreamResponse]]


class Refusal(Exception):
    """An outcome other than success, shown as the error page for ``code``."""

    def __init__(self, code: str, *, end_session: bool = False, **details: Any) -> None:
        super().__init__(code)
        self.code = code
        self.end_session = end_session
        self.details = details


def page_view(view: View[P]) -> View[P]:
    """Turn refusals and store failures into pages, and set the page headers on everything."""

    @functools.wraps(view)
    async def wrapper(self: P, request: web.Request) -> web.StreamResponse:
        try:
            response = await view(self, request)
        except Refusal as refusal:
            response = self.error_page(request, refusal)
        except StoreUnavailable as error:
            log.warning("page %s %s: Redis unavailable (%s)", request.method, request.path, error)
            response = self.error_page(request, Refusal("store_unavailable"))
        response.headers.update(HEADERS)
        if "Cache-Control" not in response.headers:
            response.headers.update(NO_STORE)
        return response

    return wrapper


class PageBase:
    """The page's shared state and helpers; webhook.page.views.PageViews adds the routes."""

    def __init__(
        self,
        settings: WebhookSettings,
        sessions: PageSessions,
        grants: Grants,
        resolver: RegisteredNameChecker,
        captcha: CaptchaRenderer,
        clock: Callable[[], float] = time.time,
        metrics: Metrics | None = None,
    ) -> None:
        if settings.handoff_secret is None:
            raise ValueError("SMTP_WHITELIST_HANDOFF_SECRET is required for the page")
        self._secret = settings.handoff_secret.get_secret_value()
        self.settings = settings
        self.sessions = sessions
        self.grants = grants
        self.resolver = resolver
        self.captcha = captcha
        self.clock = clock
        self.metrics = metrics
        # Secure when the public URL is https: the cookie then never travels over plain HTTP.
        self.secure_cookie = settings.page_url.startswith("https://")

    def _count_grant(self, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.grants.labels(SOURCE, outcome).inc()

    def client_ip(self, request: web.Request) -> IPAddress | None:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        host = peer[0] if isinstance(peer, tuple) and peer else None
        return client_address(
            host, request.headers.getall(HEADER, []), self.settings.trusted_proxies
        )

    def render(
        self, request: web.Request, template: str, context: dict[str, Any], status: int = 200
    ) -> web.Response:
        lang = i18n.choose(request)
        return aiohttp_jinja2.render_template(
            template,
            request,
            {
                "lang": lang,
                "html_lang": i18n.HTML_LANG[lang],
                # Links and the form keep a language chosen with ?lang=.
                "lang_query": i18n.query_suffix(request),
                **context,
            },
            app_key=i18n.ENV_KEYS[lang],
            status=status,
        )

    def error_page(self, request: web.Request, refusal: Refusal) -> web.Response:
        response = self.render(
            request,
            "error.html",
            {
                "code": refusal.code,
                "handoff_minutes": -(-self.settings.handoff_max_age // 60),
                **refusal.details,
            },
            STATUS.get(refusal.code, 400),
        )
        if refusal.code == "store_unavailable":
            response.headers["Retry-After"] = "5"
        if refusal.end_session:
            response.del_cookie(COOKIE, path=COOKIE_PATH)
        return response

    async def session(self, request: web.Request) -> tuple[Session, IPAddress]:
        """The request's valid session and address, or the portal-check refusal."""
        session_id = request.cookies.get(COOKIE)
        if not session_id:
            raise Refusal(NO_SESSION)
        ip = self.client_ip(request)
        if ip is None:
            raise Refusal(IP_MISMATCH, client="?")
        session = await self.sessions.load(session_id)
        problem = check(
            session,
            now=self.clock(),
            idle=self.settings.session_idle,
            max_age=self.settings.session_max_age,
            client_ip=str(ip),
            eligible=self.settings.eligible,
        )
        if problem is not None:
            user = session.user if session else "-"
            log.info("page refused user=%s client=%s: portal check %s", user, ip, problem)
            ended = problem != IP_MISMATCH
            if ended and session is not None:
                await self.sessions.end(session.id)
            raise Refusal(problem, end_session=ended, client=str(ip))
        assert session is not None  # check() said so
        return session, ip
