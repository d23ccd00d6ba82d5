"""The self-service page over real HTTP: every row of INTERFACE.md's table, and hostile input.

The webhook with its page runs in-process on a bound loopback port, against a real redis-server
and (for the registered-name rows) a real dnsmasq. Clients connect from distinct loopback
source addresses (127.0.0.2, 127.0.0.3, ...), so the address binding is tested on real sockets.
Addresses that may be granted come through ``X-Forwarded-For`` from a trusted proxy (the test
client's 127.0.0.1), exactly as behind the campus' reverse proxy. The page's clock is the
test's, so idle and maximum session ages are reached without waiting.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from ratelimit.addresses import parse_ip
from ratelimit.audit import AuditTrail
from ratelimit.metrics import Metrics
from tests.dns_server import Dnsmasq, Zone, running_dnsmasq, silent_dns_server
from tests.page_helpers import (
    HANDOFF_SECRET,
    Answer,
    Page,
    client,
    fetch,
    page_settings,
    running_page,
    session_id,
)
from tests.support import RedisServer, require_tool
from webhook.page.handoff import sign
from webhook.page.session import MAX_WRONG_CODES
from webhook.registered_name import RegisteredNameChecker

GRANTABLE = "198.18.0.0/15,192.0.2.0/24,198.51.100.0/24"
PROXY = {"trusted_proxies": "127.0.0.1/32", "allowed_networks": GRANTABLE}
XFF = "X-Forwarded-For"


async def open_page(
    page: Page, source: str = "127.0.0.1", ip: str | None = None, **hand: Any
) -> tuple[aiohttp.ClientSession, Answer]:
    """Hand over a person from ``source`` (as ``ip`` behind the proxy); the client and page."""
    headers = {XFF: ip} if ip else {}
    browser = client(source, **headers)
    answer = await fetch(browser, "GET", page.handoff(ip=ip or source, **hand))
    return browser, answer


@pytest.fixture
async def proxied(redis_server: RedisServer) -> AsyncIterator[Page]:
    async with running_page(page_settings(redis_server.url, **PROXY)) as page:
        yield page


@pytest.fixture
async def direct(redis_server: RedisServer) -> AsyncIterator[Page]:
    async with running_page(page_settings(redis_server.url)) as page:
        yield page


async def submit(
    page: Page, browser: aiohttp.ClientSession, form: Answer, code: str | None = None
) -> Answer:
    if code is None:
        code = page.read_code(session_id(browser))
    return await fetch(
        browser, "POST", page.base + "/apply", data={"csrf": form.csrf, "code": code or ""}
    )


# -- the way through ------------------------------------------------------------------------


async def test_handoff_page_code_yes_grants_with_source_page(proxied: Page) -> None:
    browser, _ = await open_page(proxied, ip="198.18.0.5")
    async with browser:
        # The hand-off itself: 303 to /apply with an HttpOnly, SameSite=Lax session cookie.
        url = proxied.handoff(ip="198.18.0.6")
        async with (
            client(**{XFF: "198.18.0.6"}) as other,
            other.get(url, allow_redirects=False) as response,
        ):
            assert response.status == 303
            assert response.headers["Location"] == "/apply"
            cookie = response.headers["Set-Cookie"]
        assert "HttpOnly" in cookie
        assert "SameSite=Lax" in cookie
        assert "Secure" not in cookie  # PAGE_URL is not https here
        assert "Path=/apply" in cookie

        form = await fetch(browser, "GET", proxied.base + "/apply")
        assert form.status == 200
        assert form.error == "none"
        assert '<dd id="user">alice</dd>' in form.text
        assert '<span id="ip">198.18.0.5</span>' in form.text
        assert "automatically obtained from your connection" in form.text
        assert await proxied.grants.get(parse_ip("198.18.0.5")) is None  # type: ignore[arg-type]

        done = await submit(proxied, browser, form)
        assert done.status == 200, done.text
        assert done.error == "none"
        assert "198.18.0.5 is not limited until" in done.text
        grant = await proxied.grants.get(parse_ip("198.18.0.5"))  # type: ignore[arg-type]
        assert grant is not None
        assert (grant.user, grant.source) == ("alice", "page")
        entries = await AuditTrail(proxied.store).read(ip="198.18.0.5")
        assert [(e.event, e.source, e.user) for e in entries] == [("grant", "page", "alice")]

        # The page now shows the live grant and until when.
        again = await fetch(browser, "GET", proxied.base + "/apply")
        assert "not limited until" in again.text


async def test_every_page_answer_has_the_security_headers(proxied: Page) -> None:
    browser, form = await open_page(proxied, ip="198.18.0.5")
    async with browser:
        expired = await fetch(browser, "GET", proxied.base + "/apply/handoff?user=x")
        for answer in (form, expired):
            csp = answer.headers["Content-Security-Policy"]
            assert "default-src 'none'" in csp
            assert "frame-ancestors 'none'" in csp
            assert "script-src" not in csp  # nothing may run: default-src 'none' covers it
            assert answer.headers["Referrer-Policy"] == "no-referrer"
            assert answer.headers["Cache-Control"] == "no-store"
            assert answer.headers["X-Content-Type-Options"] == "nosniff"
        for path in ("/apply/captcha.png", "/apply/captcha.wav"):
            async with browser.get(proxied.base + path) as response:
                assert response.status == 200
                assert response.headers["Cache-Control"] == "no-store"
                body = await response.read()
            assert body[:4] in (b"\x89PNG", b"RIFF")
        assert "<script" not in form.text.lower()


async def test_secure_cookie_when_page_url_is_https(redis_server: RedisServer) -> None:
    settings = page_settings(redis_server.url, page_url="https://mail.example.edu.tw/apply")
    async with (
        running_page(settings) as page,
        client("127.0.0.2") as browser,
        browser.get(page.handoff(ip="127.0.0.2"), allow_redirects=False) as response,
    ):
        assert response.status == 303
        assert "Secure" in response.headers["Set-Cookie"]


async def test_page_is_off_without_handoff_secret(redis_server: RedisServer) -> None:
    settings = page_settings(redis_server.url, handoff_secret="")
    async with running_page(settings) as page, client() as browser:
        for path in ("/apply", "/apply/handoff?user=a"):
            answer = await fetch(browser, "GET", page.base + path)
            assert answer.status == 404


# -- hand-off rows --------------------------------------------------------------------------


def _tamper(page: Page, how: str) -> str:
    now = int(page.clock())
    good = page.handoff(ip="127.0.0.2")
    if how == "missing":
        return good.split("&sig=")[0]
    if how == "wrong":  # signed for bob, presented as alice's
        return good.replace("user=alice", "user=mallory")
    if how == "other-key":
        sig = sign("x" * 40, "alice", "staff", "normal", "127.0.0.2", now)
        return good.split("&sig=")[0] + f"&sig={sig}"
    if how == "old":
        return page.handoff(ip="127.0.0.2", ts=now - 121)
    if how == "future":
        return page.handoff(ip="127.0.0.2", ts=now + 60)
    if how == "garbage-ts":
        sig = sign(HANDOFF_SECRET, "alice", "staff", "normal", "127.0.0.2", "12e9")
        return good.split("&ts=")[0] + f"&ts=12e9&sig={sig}"
    raise AssertionError(how)


@pytest.mark.parametrize("how", ["missing", "wrong", "other-key", "old", "future", "garbage-ts"])
async def test_bad_handoff_is_handoff_expired(direct: Page, how: str) -> None:
    async with client("127.0.0.2") as browser:
        answer = await fetch(browser, "GET", _tamper(direct, how))
        assert (answer.status, answer.error) == (403, "handoff_expired")
        assert "Cannot get checksum or expired" in answer.text
        assert "again" in answer.text  # what to do: open the link from the login system again
        assert not list(browser.cookie_jar)


async def test_handoff_is_valid_for_handoff_max_age(direct: Page) -> None:
    async with client("127.0.0.2") as browser:
        url = direct.handoff(ip="127.0.0.2", ts=int(direct.clock()) - 119)
        answer = await fetch(browser, "GET", url)
        assert (answer.status, answer.error) == (200, "none")


async def test_replayed_handoff_is_handoff_expired(direct: Page) -> None:
    url = direct.handoff(ip="127.0.0.2")
    async with client("127.0.0.2") as first:
        assert (await fetch(first, "GET", url)).error == "none"
    async with client("127.0.0.2") as second:
        replay = await fetch(second, "GET", url)
        assert (replay.status, replay.error) == (403, "handoff_expired")
    # Remembered at least as long as the link verifies (HANDOFF_MAX_AGE, plus the clock skew a
    # link may be early by), so no replay window opens at the end of its life.
    claims = [
        k async for k in direct.store._client.scan_iter(direct.settings.key_prefix + "page:h:*")
    ]
    assert len(claims) == 1
    assert await direct.store._client.ttl(claims[0]) > direct.settings.handoff_max_age


async def test_handoff_from_another_address_is_ip_mismatch(direct: Page) -> None:
    url = direct.handoff(ip="127.0.0.2")
    async with client("127.0.0.3") as thief:
        answer = await fetch(thief, "GET", url)
        assert (answer.status, answer.error) == (403, "ip_mismatch")
        assert "IP mismatch" in answer.text
        assert "same" in answer.text  # keep one address throughout
        assert not list(thief.cookie_jar)
    # The link was not used up by the refusal: its owner still gets in.
    async with client("127.0.0.2") as owner:
        assert (await fetch(owner, "GET", url)).error == "none"


# -- session rows ---------------------------------------------------------------------------


async def test_apply_without_session_is_minus_4(direct: Page) -> None:
    async with client("127.0.0.2") as browser:
        for method in ("GET", "POST"):
            answer = await fetch(browser, method, direct.base + "/apply")
            assert (answer.status, answer.error) == (403, "-4")
            assert "Portal check failed (-4)" in answer.text


async def test_unknown_session_is_minus_1(direct: Page) -> None:
    browser, form = await open_page(direct, "127.0.0.2")
    async with browser:
        assert form.error == "none"
        # The store forgot it (expired there, or Redis was flushed).
        await direct.store._client.delete(direct.session_key(session_id(browser)))
        answer = await fetch(browser, "GET", direct.base + "/apply")
        assert (answer.status, answer.error) == (403, "-1")
    async with client("127.0.0.2") as forger:
        forger.cookie_jar.update_cookies({"swl_page": secrets.token_urlsafe(32)})
        answer = await fetch(forger, "GET", direct.base + "/apply")
        assert (answer.status, answer.error) == (403, "-1")


async def test_idle_session_is_minus_2(direct: Page) -> None:
    browser, _ = await open_page(direct, "127.0.0.2")
    async with browser:
        direct.clock.advance(direct.settings.session_idle - 5)
        assert (await fetch(browser, "GET", direct.base + "/apply")).error == "none"
        direct.clock.advance(direct.settings.session_idle + 1)
        answer = await fetch(browser, "GET", direct.base + "/apply")
        assert (answer.status, answer.error) == (403, "-2")
        # The session is over: coming back is not possible.
        assert (await fetch(browser, "GET", direct.base + "/apply")).error in ("-1", "-4")


async def test_session_older_than_max_age_is_minus_3(direct: Page) -> None:
    browser, _ = await open_page(direct, "127.0.0.2")
    async with browser:
        step = direct.settings.session_idle - 10  # active all along, never idle
        elapsed = 0
        while elapsed + step <= direct.settings.session_max_age:
            direct.clock.advance(step)
            elapsed += step
            assert (await fetch(browser, "GET", direct.base + "/apply")).error == "none"
        direct.clock.advance(step)
        answer = await fetch(browser, "GET", direct.base + "/apply")
        assert (answer.status, answer.error) == (403, "-3")
        assert "too long" in answer.text


@pytest.mark.parametrize(
    ("role", "status"), [("student", "graduated"), ("staff", "retired"), ("guest", "normal")]
)
async def test_not_current_staff_or_student_is_minus_5(
    direct: Page, role: str, status: str
) -> None:
    browser, answer = await open_page(direct, "127.0.0.2", role=role, status=status)
    async with browser:
        assert (answer.status, answer.error) == (403, "-5")
        assert "only for current staff members and students" in answer.text


async def test_session_used_from_another_address_is_ip_mismatch(direct: Page) -> None:
    owner, form = await open_page(direct, "127.0.0.2")
    async with owner, client("127.0.0.3") as thief:
        assert form.error == "none"
        thief.cookie_jar.update_cookies({"swl_page": session_id(owner)})
        for method in ("GET", "POST"):
            answer = await fetch(
                thief, method, direct.base + "/apply", data={"csrf": form.csrf, "code": "0"}
            )
            assert (answer.status, answer.error) == (403, "ip_mismatch")
        # The owner's session survives the attempt.
        assert (await fetch(owner, "GET", direct.base + "/apply")).error == "none"


# -- the form -------------------------------------------------------------------------------


async def test_wrong_code_shows_a_new_code_then_the_right_one_works(proxied: Page) -> None:
    browser, form = await open_page(proxied, ip="198.18.0.7")
    async with browser:
        old = proxied.read_code(session_id(browser))
        wrong = await submit(proxied, browser, form, code="x" + (old or ""))
        assert (wrong.status, wrong.error) == (200, "wrong_code")
        new = proxied.read_code(session_id(browser))
        assert new is not None
        assert f"{MAX_WRONG_CODES - 1} tries are left" in wrong.text
        done = await submit(proxied, browser, wrong)
        assert done.error == "none"


async def test_code_is_single_use(proxied: Page) -> None:
    browser, form = await open_page(proxied, ip="198.18.0.8")
    async with browser:
        code = proxied.read_code(session_id(browser))
        assert (await submit(proxied, browser, form, code=code)).error == "none"
        replay = await submit(proxied, browser, form, code=code)
        assert replay.error == "wrong_code"


async def test_expired_code_is_wrong_code(proxied: Page) -> None:
    browser, form = await open_page(proxied, ip="198.18.0.9")
    async with browser:
        key = proxied.code_key(session_id(browser))
        code = proxied.read_code(session_id(browser))
        assert 0 < await proxied.store._client.ttl(key) <= 300  # valid 5 minutes
        await proxied.store._client.pexpire(key, 1)  # as if five minutes had passed
        await asyncio.sleep(0.05)
        answer = await submit(proxied, browser, form, code=code)
        assert answer.error == "wrong_code"
        assert await proxied.grants.get(parse_ip("198.18.0.9")) is None  # type: ignore[arg-type]


async def test_six_wrong_codes_end_the_session_and_grant_nothing(proxied: Page) -> None:
    browser, form = await open_page(proxied, ip="198.18.0.10")
    async with browser:
        cookie = session_id(browser)
        answers = []
        for _ in range(MAX_WRONG_CODES):
            form = await submit(proxied, browser, form, code="wrong")
            answers.append((form.status, form.error))
        assert answers == [(200, "wrong_code")] * (MAX_WRONG_CODES - 1) + [(403, "wrong_code")]
        assert "session has ended" in form.text
        assert not [c for c in browser.cookie_jar if c.value]  # the cookie was cleared
        # A sixth try, even with the right code and the old cookie kept: the session is gone.
        code = proxied.read_code(cookie)
        assert code is None
        browser.cookie_jar.update_cookies({"swl_page": cookie})
        sixth = await fetch(
            browser, "POST", proxied.base + "/apply", data={"csrf": "x", "code": "12345"}
        )
        assert (sixth.status, sixth.error) == (403, "-1")
        assert await proxied.grants.get(parse_ip("198.18.0.10")) is None  # type: ignore[arg-type]


@pytest.mark.parametrize("token", [None, "", "forged"])
async def test_post_without_the_csrf_token_is_refused(proxied: Page, token: str | None) -> None:
    browser, form = await open_page(proxied, ip="198.18.0.11")
    async with browser:
        code = proxied.read_code(session_id(browser))
        data = {"code": code or ""}
        if token is not None:
            data["csrf"] = token
        # What a cross-site form would send if the browser attached the cookie at all.
        answer = await fetch(
            browser,
            "POST",
            proxied.base + "/apply",
            data=data,
            headers={"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"},
        )
        assert (answer.status, answer.error) == (403, "csrf_failed")
        assert await proxied.grants.get(parse_ip("198.18.0.11")) is None  # type: ignore[arg-type]
        # The code was not spent by the forged request.
        assert (await submit(proxied, browser, form, code=code)).error == "none"


# -- the webhook's rules, as pages ----------------------------------------------------------


async def test_loopback_address_is_invalid_ip(direct: Page) -> None:
    browser, form = await open_page(direct, "127.0.0.2")
    async with browser:
        answer = await submit(direct, browser, form)
        assert (answer.status, answer.error) == (422, "invalid_ip")


async def test_address_outside_allowed_networks_is_ip_not_allowed(proxied: Page) -> None:
    browser, form = await open_page(proxied, ip="203.0.113.5")
    async with browser:
        answer = await submit(proxied, browser, form)
        assert (answer.status, answer.error) == (422, "ip_not_allowed")
        assert "203.0.113.5 is not in the university's networks" in answer.text


async def test_too_many_grants(redis_server: RedisServer) -> None:
    settings = page_settings(redis_server.url, max_grants_per_user=1, **PROXY)
    async with running_page(settings) as page:
        await page.grants.grant(
            parse_ip("198.18.0.20"),  # type: ignore[arg-type]
            user="alice",
            role="staff",
            status="normal",
            source="webhook",
            max_per_user=1,
        )
        browser, form = await open_page(page, ip="198.18.0.21")
        async with browser:
            answer = await submit(page, browser, form)
            assert (answer.status, answer.error) == (429, "too_many_grants")


ZONE = Zone(
    ptr={"192.0.2.10": ["pc10.campus.example"]},
    forward={"pc10.campus.example": ["192.0.2.10"]},
    local=["campus.example", "2.0.192.in-addr.arpa"],
    # 198.51.100.0/24 is in no local zone and dnsmasq has no upstream: it answers REFUSED.
)


@pytest.fixture
def dnsmasq(tmp_path: Path) -> Iterator[Dnsmasq]:
    with running_dnsmasq(require_tool("dnsmasq"), tmp_path / "dns", ZONE) as server:
        yield server


@pytest.mark.parametrize(
    ("ip", "status", "error"),
    [
        ("192.0.2.10", 200, "none"),
        ("192.0.2.20", 422, "no_registered_name"),
        ("198.51.100.5", 502, "dns_error"),
    ],
)
async def test_registered_name_rule(
    redis_server: RedisServer, dnsmasq: Dnsmasq, ip: str, status: int, error: str
) -> None:
    settings = page_settings(redis_server.url, **PROXY)
    checker = RegisteredNameChecker("campus.example", [dnsmasq.server], lifetime=2.0)
    async with running_page(settings, resolver=checker) as page:
        browser, form = await open_page(page, ip=ip)
        async with browser:
            if error == "none":
                assert '<dd id="name">pc10.campus.example</dd>' in form.text
            answer = await submit(page, browser, form)
            assert (answer.status, answer.error) == (status, error)


async def test_dns_timeout(redis_server: RedisServer) -> None:
    settings = page_settings(redis_server.url, **PROXY)
    with silent_dns_server() as server:
        checker = RegisteredNameChecker("campus.example", [server], lifetime=0.5)
        async with running_page(settings, resolver=checker) as page:
            browser, form = await open_page(page, ip="192.0.2.10")
            async with browser:
                assert "could not be checked right now" in form.text
                answer = await submit(page, browser, form)
                assert (answer.status, answer.error) == (504, "dns_timeout")


async def test_redis_down_is_store_unavailable(redis_server: RedisServer) -> None:
    async with running_page(page_settings(redis_server.url, store_timeout=0.3)) as page:
        browser, form = await open_page(page, "127.0.0.2")
        async with browser:
            assert form.error == "none"
            redis_server.stop()
            answer = await fetch(browser, "GET", page.base + "/apply")
            assert (answer.status, answer.error) == (503, "store_unavailable")
            assert answer.headers["Retry-After"] == "5"
            handoff = await fetch(browser, "GET", page.handoff(ip="127.0.0.2"))
            assert handoff.error == "store_unavailable"


# -- hostile input --------------------------------------------------------------------------


async def test_forged_x_forwarded_for_from_untrusted_peer_is_ignored(direct: Page) -> None:
    # No TRUSTED_PROXIES: the socket peer is the client, whatever the header claims.
    async with client("127.0.0.2", **{XFF: "198.18.0.5"}) as browser:
        claimed = await fetch(browser, "GET", direct.handoff(ip="198.18.0.5"))
        assert (claimed.status, claimed.error) == (403, "ip_mismatch")
        real = await fetch(browser, "GET", direct.handoff(ip="127.0.0.2"))
        assert real.error == "none"
        assert '<span id="ip">127.0.0.2</span>' in real.text


async def test_rightmost_untrusted_hop_is_the_client(proxied: Page) -> None:
    # The client wrote "6.6.6.6" itself; our proxy appended the address it saw.
    async with client(**{XFF: "6.6.6.6, 198.18.0.30"}) as browser:
        forged = await fetch(browser, "GET", proxied.handoff(ip="6.6.6.6"))
        assert forged.error == "ip_mismatch"
        real = await fetch(browser, "GET", proxied.handoff(ip="198.18.0.30"))
        assert real.error == "none"
        assert '<span id="ip">198.18.0.30</span>' in real.text


async def test_script_in_user_is_escaped_and_never_granted(proxied: Page) -> None:
    user = '<script>alert("x")</script>'
    browser, form = await open_page(proxied, ip="198.18.0.40", user=user)
    async with browser:
        assert form.error == "none"
        assert "<script" not in form.text
        assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in form.text
        answer = await submit(proxied, browser, form)
        # The webhook's own rule for user names: never a Redis key or a log line.
        assert (answer.status, answer.error) == (400, "bad_request")
        assert await proxied.grants.get(parse_ip("198.18.0.40")) is None  # type: ignore[arg-type]


# -- languages ------------------------------------------------------------------------------


async def test_language_from_accept_language_and_lang(direct: Page) -> None:
    async with client("127.0.0.2", **{"Accept-Language": "zh-TW,zh;q=0.9,en;q=0.8"}) as zh:
        answer = await fetch(zh, "GET", direct.base + "/apply")
        assert answer.error == "-4"
        assert '<html lang="zh-Hant-TW">' in answer.text
        assert "入口網站檢查失敗 (-4)" in answer.text
        english = await fetch(zh, "GET", direct.base + "/apply?lang=en")
        assert "Portal check failed (-4)" in english.text
    async with client("127.0.0.2", **{"Accept-Language": "en-US,en;q=0.9"}) as en:
        chinese = await fetch(en, "GET", direct.base + "/apply?lang=zh-TW")
        assert "入口網站檢查失敗 (-4)" in chinese.text
        browser, form = await open_page(direct, "127.0.0.2")
        async with browser:
            assert "Lift the sending limit" in form.text


async def test_page_grants_are_counted_with_source_page(redis_server: RedisServer) -> None:
    metrics = Metrics()
    settings = page_settings(redis_server.url, **PROXY)
    async with running_page(settings, metrics=metrics) as page:
        browser, form = await open_page(page, ip="198.18.0.50")
        async with browser:
            assert (await submit(page, browser, form)).error == "none"
        refused, refused_form = await open_page(page, ip="203.0.113.50")
        async with refused:
            assert (await submit(page, refused, refused_form)).error == "ip_not_allowed"
    text = metrics.exposition().decode()
    assert 'smtp_whitelist_grants_total{outcome="created",source="page"} 1.0' in text
    assert 'smtp_whitelist_grants_total{outcome="refused",source="page"} 1.0' in text
