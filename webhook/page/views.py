"""The self-service page's routes: hand-off, the application form, its code, the result.

docs/interface.md, "Self-service page", is the contract; every answer is a page whose ``<main>``
names its outcome in ``data-error``. The grant goes through the webhook's own rules
(:mod:`webhook.rules`, :class:`~webhook.registered_name.RegisteredNameChecker`) in the
webhook's order and through the same Redis script (:class:`ratelimit.grants.Grants`), audited
with source ``page``; the policy server sees it on its very next request.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import datetime

from aiohttp import web
from pydantic import ValidationError

from ratelimit.addresses import IPAddress
from ratelimit.grants import Grant, Grants
from ratelimit.metrics import Metrics
from webhook import granting, rules
from webhook.config import WebhookSettings
from webhook.models import GrantRequest
from webhook.page import i18n
from webhook.page.base import (
    COOKIE,
    COOKIE_PATH,
    HEADERS,
    NO_STORE,
    SOURCE,
    STATIC,
    STATUS,
    PageBase,
    Refusal,
    page_view,
)
from webhook.page.captcha import CaptchaRenderer
from webhook.page.handoff import CLOCK_SKEW, HandoffInvalid, verify
from webhook.page.session import (
    IP_MISMATCH,
    MAX_WRONG_CODES,
    NOT_ELIGIBLE,
    PageSessions,
    Session,
    same,
)
from webhook.registered_name import DnsError, DnsTimeout, NoRegisteredName, RegisteredNameChecker

log = logging.getLogger(__name__)


class PageViews(PageBase):
    """The page's handlers, holding the dependencies :func:`install` was given."""

    async def form(
        self, request: web.Request, session: Session, ip: IPAddress, error: str = "none"
    ) -> web.Response:
        # A fresh code for this view; only its image and its sound ever leave this process.
        await self.sessions.show(session, self.clock())
        grant = await self.grants.get(ip)
        name, name_problem = await self._name(ip)
        return self.render(
            request,
            "apply.html",
            {
                "code": error,
                "user": session.user,
                "ip": str(ip),
                "name": name,
                "name_problem": name_problem,
                "grant": grant,
                "until": _local(grant.expires_at) if grant else None,
                "csrf": session.csrf,
                "wrong_left": MAX_WRONG_CODES - session.wrong,
                "minutes": -(-self.settings.whitelist_ttl // 60),
            },
        )

    async def _name(self, ip: IPAddress) -> tuple[str | None, str | None]:
        """The registered name to show, or why there is none (the check may be off)."""
        try:
            return await self.resolver.check(ip), None
        except NoRegisteredName:
            return None, "no_registered_name"
        except DnsTimeout:
            return None, "dns_timeout"
        except DnsError:
            return None, "dns_error"

    # -- routes -----------------------------------------------------------------------------

    @page_view
    async def handoff(self, request: web.Request) -> web.StreamResponse:
        """``GET /apply/handoff``: check the link, bind a new session to this address."""
        ip = self.client_ip(request)
        try:
            handoff = verify(
                self._secret,
                request.query,
                now=self.clock(),
                max_age=self.settings.handoff_max_age,
            )
        except HandoffInvalid as error:
            log.info("page hand-off refused from %s: %s", ip, error)
            raise Refusal("handoff_expired") from None
        if ip is None or rules.parse_address(handoff.ip) != ip:
            log.info("page hand-off for %s from %s: IP mismatch", handoff.ip, ip)
            raise Refusal(IP_MISMATCH, client=str(ip))
        # Remembered for as long as the link could still verify: up to CLOCK_SKEW early, plus
        # HANDOFF_MAX_AGE.
        lifetime = self.settings.handoff_max_age + CLOCK_SKEW
        if not await self.sessions.claim_handoff(handoff, lifetime):
            log.warning("page hand-off replayed from %s (user %s)", ip, handoff.user)
            raise Refusal("handoff_expired")
        handoff = dataclasses.replace(handoff, ip=str(ip))  # the address as we write it
        session = await self.sessions.create(handoff, self.clock())
        log.info("page session for user=%s client=%s", session.user, ip)
        location = "/apply" + i18n.query_suffix(request)
        response = web.Response(status=303, headers={"Location": location})
        response.set_cookie(
            COOKIE,
            session.id,
            path=COOKIE_PATH,
            httponly=True,
            # Lax: sent on the top-level GET that follows the login system's cross-site link,
            # never on a cross-site POST (the CSRF token guards that too).
            samesite="Lax",
            secure=self.secure_cookie,
            max_age=self.settings.session_max_age,
        )
        return response

    @page_view
    async def show(self, request: web.Request) -> web.StreamResponse:
        """``GET /apply``: who, which address, its name and grant, a code, and "Yes"."""
        session, ip = await self.session(request)
        return await self.form(request, session, ip)

    @page_view
    async def submit(self, request: web.Request) -> web.StreamResponse:
        """``POST /apply``: check the form and the code, then the webhook's rules; grant."""
        session, ip = await self.session(request)
        form = await request.post()
        token = form.get("csrf")
        if not isinstance(token, str) or not same(token, session.csrf):
            log.warning("page POST without a valid CSRF token user=%s client=%s", session.user, ip)
            raise Refusal("csrf_failed")
        typed = form.get("code")
        expected = await self.sessions.take_code(session, self.clock())
        if expected is None or not isinstance(typed, str) or not same(typed.strip(), expected):
            wrong = await self.sessions.count_wrong(session)
            log.info("page wrong code user=%s client=%s (%d)", session.user, ip, wrong)
            if wrong >= MAX_WRONG_CODES:
                raise Refusal("wrong_code", end_session=True, ended=True)
            refreshed = dataclasses.replace(session, wrong=wrong)
            return await self.form(request, refreshed, ip, error="wrong_code")
        grant = await self._grant(session, ip)
        return self.render(
            request,
            "done.html",
            {
                "code": "none",
                "user": session.user,
                "ip": grant.ip,
                "until": _local(grant.expires_at),
            },
        )

    async def _grant(self, session: Session, ip: IPAddress) -> Grant:
        """The webhook's rules, in the webhook's order, then the grant (source ``page``)."""
        try:
            # The webhook's body rules first: a user name outside its alphabet never reaches
            # a Redis key or a log line, whichever way it came in.
            GrantRequest(ip=str(ip), user=session.user, role=session.role, status=session.status)
        except ValidationError:
            log.info("page refused client=%s: the hand-off's values break the webhook's rules", ip)
            self._count_grant("refused")
            raise Refusal("bad_request") from None
        try:
            grant, created = await granting.grant_by_rules(
                self.settings,
                self.resolver,
                self.grants,
                ip=str(ip),
                user=session.user,
                role=session.role,
                status=session.status,
                source=SOURCE,
                log=log,
            )
        except granting.Refused as refused:
            log.info(
                "page refused %s user=%s client=%s: %s",
                refused.code,
                session.user,
                ip,
                refused.detail,
            )
            if refused.code in granting.RULE_REFUSALS:
                self._count_grant("refused")
            if refused.code == "not_eligible":
                raise Refusal(NOT_ELIGIBLE) from None
            raise Refusal(refused.code, client=str(ip), held=refused.held) from None
        self._count_grant("created" if created else "refreshed")
        return grant

    async def _captcha(
        self,
        request: web.Request,
        render: Callable[[str], Awaitable[bytes]],
        content_type: str,
    ) -> web.Response:
        """The session's current code through ``render`` (only for a valid session)."""
        session, _ip = await self.session(request)
        code = await self.sessions.peek_code(session.id)
        if code is None:
            return web.Response(status=404, text="no current code; reload the page")
        return web.Response(body=await render(code), content_type=content_type)

    @page_view
    async def captcha_png(self, request: web.Request) -> web.StreamResponse:
        """``GET /apply/captcha.png``: the current code, drawn."""
        return await self._captcha(request, self.captcha.png, "image/png")

    @page_view
    async def captcha_wav(self, request: web.Request) -> web.StreamResponse:
        """``GET /apply/captcha.wav``: the current code, spoken."""
        return await self._captcha(request, self.captcha.wav, "audio/wav")

    @page_view
    async def stylesheet(self, request: web.Request) -> web.StreamResponse:
        """``GET /apply/style.css``: not personal, so it may be cached."""
        return web.Response(
            text=self._css,
            content_type="text/css",
            headers={"Cache-Control": "public, max-age=3600"},
        )

    @functools.cached_property
    def _css(self) -> str:
        return (STATIC / "style.css").read_text(encoding="utf-8")


def _local(moment: datetime) -> datetime:
    """The server's local time: the campus reads "until 14:05" on its own clock."""
    return moment.astimezone()


def install(
    app: web.Application,
    settings: WebhookSettings,
    sessions: PageSessions,
    grants: Grants,
    resolver: RegisteredNameChecker,
    *,
    captcha: CaptchaRenderer | None = None,
    clock: Callable[[], float] = time.time,
    metrics: Metrics | None = None,
) -> PageViews:
    """Add the page's routes and template environments to the webhook's ``app``."""
    views = PageViews(
        settings, sessions, grants, resolver, captcha or CaptchaRenderer(), clock, metrics
    )
    i18n.setup(app)
    app.router.add_get("/apply/handoff", views.handoff, allow_head=False)
    app.router.add_get("/apply", views.show, allow_head=False)
    app.router.add_post("/apply", views.submit)
    app.router.add_get("/apply/captcha.png", views.captcha_png, allow_head=False)
    app.router.add_get("/apply/captcha.wav", views.captcha_wav, allow_head=False)
    app.router.add_get("/apply/style.css", views.stylesheet, allow_head=False)
    return views


# Importers name these as the page's (tests read the cookie's name).
__all__ = [
    "COOKIE",
    "COOKIE_PATH",
    "HEADERS",
    "NO_STORE",
    "SOURCE",
    "STATUS",
    "PageViews",
    "Refusal",
    "install",
]
