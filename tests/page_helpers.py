"""Helpers for the self-service page tests: the webhook with its page on real sockets, a real
Redis, a clock the test can move, signed hand-offs, and an HTTP client with its own source address.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import redis
from aiohttp import web

from ratelimit.grants import Grants
from ratelimit.listen import ListenAddress
from ratelimit.metrics import Metrics
from ratelimit.store import Store
from smtp_whitelist.settings import Settings
from smtp_whitelist.wiring import build_webhook
from webhook.page.handoff import handoff_url
from webhook.page.views import COOKIE
from webhook.registered_name import RegisteredNameChecker
from webhook.serve import bound_ports, start_webhook

WEBHOOK_SECRET = "page-webhook-" + "w" * 40
HANDOFF_SECRET = "page-handoff-" + "h" * 40


class Clock:
    """The page's clock: real time plus however far the test moved it."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


@dataclass
class Page:
    """A running webhook with its page, and what a test needs to drive it."""

    base: str  # http://127.0.0.1:PORT
    settings: Settings
    store: Store
    grants: Grants
    clock: Clock
    runner: web.AppRunner

    def handoff(
        self,
        *,
        user: str = "alice",
        role: str = "staff",
        status: str = "normal",
        ip: str = "127.0.0.1",
        ts: int | None = None,
        base: str | None = None,
    ) -> str:
        """A hand-off URL as the login system makes it (``smtp-whitelist handoff-url``)."""
        return handoff_url(
            (base or self.base) + "/apply",
            HANDOFF_SECRET,
            user=user,
            role=role,
            status=status,
            ip=ip,
            ts=int(self.clock()) if ts is None else ts,
        )

    def code_key(self, session_id: str) -> str:
        digest = hashlib.sha256(session_id.encode()).hexdigest()
        return f"{self.settings.key_prefix}page:c:{{{digest}}}"

    def session_key(self, session_id: str) -> str:
        digest = hashlib.sha256(session_id.encode()).hexdigest()
        return f"{self.settings.key_prefix}page:s:{{{digest}}}"

    def read_code(self, session_id: str) -> str | None:
        """The current verification code, read from the test's own Redis (as a person reads
        the image); a separate synchronous client, so browser tests can call it too."""
        client = redis.Redis.from_url(self.settings.redis_url)
        try:
            raw = client.get(self.code_key(session_id))
        finally:
            client.close()
        if raw is None:
            return None
        return raw if isinstance(raw, str) else raw.decode()


def page_settings(redis_url: str, **values: Any) -> Settings:
    """Settings for one page test: its own KEY_PREFIX, the page on, and ``values``."""
    values.setdefault("key_prefix", f"p{uuid.uuid4().hex[:8]}:")
    values.setdefault("webhook_secret", WEBHOOK_SECRET)
    values.setdefault("handoff_secret", HANDOFF_SECRET)
    values.setdefault("message_limits", "")
    values.setdefault("recipient_limits", "")
    return Settings(redis_url=redis_url, **values)


@contextlib.asynccontextmanager
async def running_page(
    settings: Settings,
    *,
    resolver: RegisteredNameChecker | None = None,
    host: str = "127.0.0.1",
    metrics: Metrics | None = None,
) -> AsyncIterator[Page]:
    """The webhook with its page on ``host`` (a free port), built as the CLI builds it."""
    store = Store.from_settings(settings)
    grants = Grants(store, settings)
    clock = Clock()
    app = build_webhook(
        settings, store, resolver=resolver, grants=grants, clock=clock, metrics=metrics
    )
    runner = await start_webhook(app, [ListenAddress(host, 0, None)])
    try:
        bound_host, port = bound_ports(runner)[0]
        yield Page(f"http://{bound_host}:{port}", settings, store, grants, clock, runner)
    finally:
        await runner.cleanup()
        await store.aclose()


@contextlib.contextmanager
def page_in_thread(settings: Settings, **kwargs: Any) -> Iterator[Page]:
    """:func:`running_page` on its own event loop in a thread, for synchronous browser tests."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    context = running_page(settings, **kwargs)
    try:
        page = asyncio.run_coroutine_threadsafe(context.__aenter__(), loop).result(30)
        try:
            yield page
        finally:
            asyncio.run_coroutine_threadsafe(context.__aexit__(None, None, None), loop).result(30)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def client(source: str = "127.0.0.1", **headers: str) -> aiohttp.ClientSession:
    """A browser-like HTTP client whose connections come from ``source``.

    Its cookie jar keeps cookies of IP-address hosts (aiohttp's default refuses them).
    """
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(local_addr=(source, 0), force_close=True),
        cookie_jar=aiohttp.CookieJar(unsafe=True),
        headers=headers,
    )


@dataclass
class Answer:
    """One page answer as a browser would see it."""

    status: int
    text: str
    headers: Any
    url: str

    @property
    def error(self) -> str | None:
        """The ``data-error`` of ``<main>``."""
        found = re.search(r'<main data-error="([^"]*)"', self.text)
        return found.group(1) if found else None

    @property
    def csrf(self) -> str:
        found = re.search(r'name="csrf" value="([^"]+)"', self.text)
        assert found, self.text
        return found.group(1)


async def fetch(session: aiohttp.ClientSession, method: str, url: str, **kwargs: Any) -> Answer:
    async with session.request(method, url, **kwargs) as response:
        return Answer(response.status, await response.text(), response.headers, str(response.url))


def session_id(session: aiohttp.ClientSession) -> str:
    """The page's session cookie in this client's jar."""
    for cookie in session.cookie_jar:
        if cookie.key == COOKIE:
            return cookie.value
    raise AssertionError("no session cookie")
