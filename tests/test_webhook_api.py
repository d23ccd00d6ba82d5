"""The webhook over real HTTP: a bound port, a real Redis, a real DNS server on loopback.

Every status code of INTERFACE.md's table is produced here, and where a request changes (or
must not change) the store, the Redis state is read back to prove it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from yarl import URL

from ratelimit.addresses import parse_networks
from ratelimit.listen import ListenAddress
from ratelimit.store import KeyLayout, Store
from smtp_whitelist.settings import Settings
from smtp_whitelist.wiring import build_webhook
from tests.dns_server import Dnsmasq, Zone, running_dnsmasq, silent_dns_server
from tests.support import (
    RedisServer,
    free_port,
    make_settings,
    require_tool,
    wait_for,
)
from webhook import auth
from webhook.app import MAX_BODY
from webhook.registered_name import RegisteredNameChecker
from webhook.serve import start_webhook

SECRET = "test-secret-" + "k" * 40
PREFIX = "swl:"
KEYS = KeyLayout(PREFIX)
TTL = 3600
ALLOWED = "192.0.2.0/24,198.51.100.0/24,2001:db8::/32"

ZONE = Zone(
    ptr={
        "192.0.2.10": ["pc10.campus.example"],
        "192.0.2.11": ["pc11.campus.example"],
        "192.0.2.12": ["pc12.campus.example"],
        "192.0.2.13": ["pc13.campus.example"],
        "192.0.2.30": ["liar.campus.example"],
        "192.0.2.31": ["pc.elsewhere.example"],
        "2001:db8::10": ["pc6.campus.example"],
    },
    forward={
        "pc10.campus.example": ["192.0.2.10"],
        "pc11.campus.example": ["192.0.2.11"],
        "pc12.campus.example": ["192.0.2.12"],
        "pc13.campus.example": ["192.0.2.13"],
        "liar.campus.example": ["192.0.2.99"],
        "pc.elsewhere.example": ["192.0.2.31"],
        "pc6.campus.example": ["2001:db8::10"],
    },
    local=[
        "campus.example",
        "elsewhere.example",
        "2.0.192.in-addr.arpa",
        "8.b.d.0.1.0.0.2.ip6.arpa",
    ],
)


def grant_body(ip: str = "192.0.2.10", **change: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"ip": ip, "user": "alice", "role": "staff", "status": "normal"}
    body.update(change)
    return body


@dataclass
class Answer:
    status: int
    body: Any
    headers: Mapping[str, str]
    content_type: str


@dataclass
class Portal:
    """Signs and sends requests the way the campus portal does, with knobs to get it wrong."""

    session: aiohttp.ClientSession
    base: str
    secret: str = SECRET
    sent_nonces: list[str] = field(default_factory=list)

    async def call(
        self,
        method: str,
        path: str,
        json_body: Any = None,
        *,
        body: bytes | None = None,
        content_type: str | None = "application/json",
        timestamp: str | None = None,
        nonce: str | None = None,
        sign_method: str | None = None,
        sign_path: str | None = None,
        sign_body: bytes | None = None,
        secret: str | None = None,
        drop: tuple[str, ...] = (),
        extra: Mapping[str, str] | None = None,
        signed: bool = True,
    ) -> Answer:
        if body is None:
            body = b"" if json_body is None else json.dumps(json_body).encode()
        timestamp = timestamp or str(int(time.time()))
        nonce = nonce or secrets.token_urlsafe(24)
        self.sent_nonces.append(nonce)
        headers: dict[str, str] = {}
        if signed:
            headers = auth.signed_headers(
                secret or self.secret,
                sign_method or method,
                sign_path or path,
                body if sign_body is None else sign_body,
                timestamp=timestamp,
                nonce=nonce,
            )
        if content_type is not None and body:
            headers["Content-Type"] = content_type
        for name in drop:
            headers.pop(name, None)
        headers.update(extra or {})
        url = URL(self.base + path, encoded=True)
        async with self.session.request(method, url, data=body, headers=headers) as response:
            raw = await response.read()
            parsed = json.loads(raw) if raw else None
            return Answer(response.status, parsed, response.headers, response.content_type)


@dataclass
class Webhook:
    portal: Portal
    redis: aioredis.Redis
    settings: Settings
    redis_server: RedisServer


# What every webhook test here starts from (make_settings' defaults for these tests).
WEBHOOK_DEFAULTS: dict[str, Any] = {
    "webhook_secret": SECRET,
    "key_prefix": PREFIX,
    "whitelist_ttl": TTL,
    "allowed_networks": parse_networks(ALLOWED),
    "required_ptr_suffix": "campus.example",
    "max_grants_per_user": 3,
    "store_timeout": 0.5,
}


@pytest.fixture
def dnsmasq(tmp_path: Path) -> Iterator[Dnsmasq]:
    with running_dnsmasq(require_tool("dnsmasq"), tmp_path / "dns", ZONE) as server:
        yield server


@contextlib.asynccontextmanager
async def serving(
    redis_server: RedisServer,
    checker: RegisteredNameChecker,
    *,
    max_in_flight: int | None = None,
    **change: Any,
) -> AsyncIterator[Webhook]:
    """The webhook as the CLI starts it, on a free loopback port, with its own store."""
    settings = make_settings(redis_server.url, defaults=WEBHOOK_DEFAULTS, **change)
    store = Store.from_settings(settings)
    extra: dict[str, Any] = {} if max_in_flight is None else {"max_in_flight": max_in_flight}
    app = build_webhook(settings, store, resolver=checker, **extra)
    port = free_port()
    runner = await start_webhook(app, [ListenAddress("127.0.0.1", port, None)])
    client = aioredis.from_url(redis_server.url, decode_responses=True)
    try:
        async with aiohttp.ClientSession() as session:
            yield Webhook(
                Portal(session, f"http://127.0.0.1:{port}"), client, settings, redis_server
            )
    finally:
        await runner.cleanup()
        await client.aclose()
        await store.aclose()


@pytest.fixture
async def webhook(redis_server: RedisServer, dnsmasq: Dnsmasq) -> AsyncIterator[Webhook]:
    checker = RegisteredNameChecker("campus.example", [dnsmasq.server], lifetime=2.0)
    async with serving(redis_server, checker) as running:
        yield running


async def _grant_ttl(hook: Webhook, ip: str) -> int:
    return int(await hook.redis.ttl(_grant_key(ip)))


def _grant_key(ip: str) -> str:
    """The grant key of ``ip`` under the default prefixes (/32, /64)."""
    network = ipaddress.ip_network((ip, 32 if ":" not in ip else 64), strict=False)
    return KEYS.grant(ip, str(network))


async def _audit(hook: Webhook) -> list[dict[str, str]]:
    """Every audit record, oldest first, from every network's stream."""
    entries: list[Any] = []
    for key in await hook.redis.keys(KEYS.audit_pattern):
        entries += await hook.redis.xrange(key) or []
    entries.sort(key=lambda entry: tuple(int(x) for x in str(entry[0]).split("-")))
    return [{str(k): str(v) for k, v in (fields or {}).items()} for _, fields in entries or []]


# -- grants: 201, 200, GET, list, DELETE ------------------------------------------------------


async def test_new_grant_is_201_and_written_to_redis(webhook: Webhook) -> None:
    answer = await webhook.portal.call("POST", "/v1/whitelist", grant_body())
    assert answer.status == 201
    assert answer.content_type == "application/json"
    assert answer.body["ip"] == "192.0.2.10"
    assert answer.body["user"] == "alice"
    assert answer.body["ttl"] == TTL
    assert answer.body["expires_at"].endswith("Z")
    expires = time.mktime(time.strptime(answer.body["expires_at"], "%Y-%m-%dT%H:%M:%SZ"))
    assert abs(expires - time.timezone - (time.time() + TTL)) < 5
    assert TTL - 5 <= await _grant_ttl(webhook, "192.0.2.10") <= TTL
    [entry] = await _audit(webhook)
    assert entry["ip"] == "192.0.2.10"
    assert entry["user"] == "alice"
    assert entry["source"] == "webhook"


async def test_second_post_refreshes_to_full_ttl_with_200(webhook: Webhook) -> None:
    assert (await webhook.portal.call("POST", "/v1/whitelist", grant_body())).status == 201
    await webhook.redis.expire(_grant_key("192.0.2.10"), 60)
    answer = await webhook.portal.call("POST", "/v1/whitelist", grant_body())
    assert answer.status == 200
    assert answer.body["ttl"] == TTL
    assert await _grant_ttl(webhook, "192.0.2.10") >= TTL - 5


async def test_ipv6_grant_and_ipv4_mapped_address(webhook: Webhook) -> None:
    answer = await webhook.portal.call("POST", "/v1/whitelist", grant_body("2001:DB8:0::10"))
    assert (answer.status, answer.body["ip"]) == (201, "2001:db8::10")
    answer = await webhook.portal.call("POST", "/v1/whitelist", grant_body("::ffff:192.0.2.10"))
    assert (answer.status, answer.body["ip"]) == (201, "192.0.2.10")
    assert await webhook.redis.exists(_grant_key("2001:db8::10"), _grant_key("192.0.2.10")) == 2


async def test_get_one_grant_and_404(webhook: Webhook) -> None:
    await webhook.portal.call("POST", "/v1/whitelist", grant_body())
    answer = await webhook.portal.call("GET", "/v1/whitelist/192.0.2.10")
    assert answer.status == 200
    assert answer.body["ip"] == "192.0.2.10"
    assert answer.body["user"] == "alice"
    assert TTL - 5 <= answer.body["ttl"] <= TTL
    missing = await webhook.portal.call("GET", "/v1/whitelist/192.0.2.11")
    assert (missing.status, missing.body["error"]) == (404, "not_found")


async def test_get_ipv6_grant_by_path(webhook: Webhook) -> None:
    await webhook.portal.call("POST", "/v1/whitelist", grant_body("2001:db8::10"))
    answer = await webhook.portal.call("GET", "/v1/whitelist/2001:db8::10")
    assert (answer.status, answer.body["ip"]) == (200, "2001:db8::10")


async def test_path_ip_must_be_an_address(webhook: Webhook) -> None:
    answer = await webhook.portal.call("GET", "/v1/whitelist/not-an-ip")
    assert (answer.status, answer.body["error"]) == (422, "invalid_ip")


async def test_list(webhook: Webhook) -> None:
    empty = await webhook.portal.call("GET", "/v1/whitelist")
    assert (empty.status, empty.body) == (200, {"items": []})
    await webhook.portal.call("POST", "/v1/whitelist", grant_body("192.0.2.10"))
    await webhook.portal.call("POST", "/v1/whitelist", grant_body("192.0.2.11", user="bob"))
    answer = await webhook.portal.call("GET", "/v1/whitelist")
    assert answer.status == 200
    assert sorted((i["ip"], i["user"]) for i in answer.body["items"]) == [
        ("192.0.2.10", "alice"),
        ("192.0.2.11", "bob"),
    ]
    assert set(answer.body["items"][0]) == {"ip", "user", "expires_at", "ttl"}


async def test_delete_ends_the_grant(webhook: Webhook) -> None:
    await webhook.portal.call("POST", "/v1/whitelist", grant_body())
    answer = await webhook.portal.call("DELETE", "/v1/whitelist/192.0.2.10")
    assert (answer.status, answer.body) == (204, None)
    assert await webhook.redis.exists(_grant_key("192.0.2.10")) == 0
    again = await webhook.portal.call("DELETE", "/v1/whitelist/192.0.2.10")
    assert (again.status, again.body["error"]) == (404, "not_found")
    events = [(e.get("event"), e.get("source")) for e in await _audit(webhook)]
    assert events[-1] == ("remove", "webhook")


async def test_grants_and_removals_are_logged(
    webhook: Webhook, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="webhook")
    await webhook.portal.call("POST", "/v1/whitelist", grant_body())
    await webhook.portal.call("POST", "/v1/whitelist", grant_body())
    await webhook.portal.call("DELETE", "/v1/whitelist/192.0.2.10")
    lines = [r.getMessage() for r in caplog.records if r.name == "webhook.app"]
    for word in ("grant", "refresh", "removal"):
        line = next(x for x in lines if f"webhook {word} " in x)
        for part in ("ip=192.0.2.10", "user=alice", "role=staff", "status=normal"):
            assert part in line
    assert all(SECRET not in r.getMessage() for r in caplog.records)


# -- campus rules -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("role", "status"), [("staff", "resumption"), ("student", "suspended"), ("guest", "normal")]
)
async def test_not_eligible_is_403(webhook: Webhook, role: str, status: str) -> None:
    answer = await webhook.portal.call(
        "POST", "/v1/whitelist", grant_body(role=role, status=status)
    )
    assert (answer.status, answer.body["error"]) == (403, "not_eligible")
    assert await webhook.redis.exists(_grant_key("192.0.2.10")) == 0


@pytest.mark.parametrize(("role", "status"), [("student", "normal"), ("student", "resumption")])
async def test_students_are_eligible(webhook: Webhook, role: str, status: str) -> None:
    answer = await webhook.portal.call(
        "POST", "/v1/whitelist", grant_body(role=role, status=status)
    )
    assert answer.status == 201


@pytest.mark.parametrize("ip", ["127.0.0.1", "::1", "224.0.0.5", "169.254.0.9", "0.0.0.0", "x"])
async def test_invalid_ip_is_422(webhook: Webhook, ip: str) -> None:
    answer = await webhook.portal.call("POST", "/v1/whitelist", grant_body(ip))
    assert (answer.status, answer.body["error"]) == (422, "invalid_ip")


@pytest.mark.parametrize("ip", ["203.0.113.7", "10.0.0.1", "2001:db9::1"])
async def test_ip_outside_allowed_networks_is_422(webhook: Webhook, ip: str) -> None:
    answer = await webhook.portal.call("POST", "/v1/whitelist", grant_body(ip))
    assert (answer.status, answer.body["error"]) == (422, "ip_not_allowed")
    assert await webhook.redis.keys(f"{PREFIX}wl:*") == []


async def test_eligibility_is_checked_before_the_ip(webhook: Webhook) -> None:
    answer = await webhook.portal.call(
        "POST", "/v1/whitelist", grant_body("127.0.0.1", role="guest")
    )
    assert answer.status == 403


@pytest.mark.parametrize("ip", ["192.0.2.30", "192.0.2.31", "192.0.2.40"])
async def test_no_registered_name_is_422(webhook: Webhook, ip: str) -> None:
    # resolves elsewhere / outside the suffix / no PTR at all
    answer = await webhook.portal.call("POST", "/v1/whitelist", grant_body(ip))
    assert (answer.status, answer.body["error"]) == (422, "no_registered_name")
    assert await webhook.redis.exists(_grant_key(ip)) == 0


async def test_dns_failure_is_502(webhook: Webhook) -> None:
    # 198.51.100.0/24 is allowed, but the test DNS server refuses queries for it.
    answer = await webhook.portal.call("POST", "/v1/whitelist", grant_body("198.51.100.5"))
    assert (answer.status, answer.body["error"]) == (502, "dns_error")
    assert await webhook.redis.exists(_grant_key("198.51.100.5")) == 0


async def test_dns_timeout_is_504(redis_server: RedisServer) -> None:
    with silent_dns_server() as silent:
        checker = RegisteredNameChecker("campus.example", [silent], lifetime=1.0, try_timeout=0.5)
        async with serving(redis_server, checker) as hook:
            started = time.monotonic()
            answer = await hook.portal.call("POST", "/v1/whitelist", grant_body())
            assert (answer.status, answer.body["error"]) == (504, "dns_timeout")
            assert time.monotonic() - started < 3
            assert await hook.redis.exists(_grant_key("192.0.2.10")) == 0


async def test_without_suffix_no_dns_is_asked(redis_server: RedisServer) -> None:
    with silent_dns_server() as silent:
        checker = RegisteredNameChecker("", [silent])
        async with serving(redis_server, checker, required_ptr_suffix="") as hook:
            answer = await hook.portal.call("POST", "/v1/whitelist", grant_body("192.0.2.40"))
            assert answer.status == 201


async def test_too_many_grants_is_429_but_refresh_is_allowed(webhook: Webhook) -> None:
    for ip in ("192.0.2.10", "192.0.2.11", "192.0.2.12"):
        assert (await webhook.portal.call("POST", "/v1/whitelist", grant_body(ip))).status == 201
    answer = await webhook.portal.call("POST", "/v1/whitelist", grant_body("192.0.2.13"))
    assert (answer.status, answer.body["error"]) == (429, "too_many_grants")
    assert await webhook.redis.exists(_grant_key("192.0.2.13")) == 0
    refresh = await webhook.portal.call("POST", "/v1/whitelist", grant_body("192.0.2.11"))
    assert refresh.status == 200
    other = await webhook.portal.call("POST", "/v1/whitelist", grant_body("192.0.2.13", user="bob"))
    assert other.status == 201
    # Ending one grant makes room again.
    await webhook.portal.call("DELETE", "/v1/whitelist/192.0.2.12")
    again = await webhook.portal.call("POST", "/v1/whitelist", grant_body("2001:db8::10"))
    assert again.status == 201


# -- authentication ---------------------------------------------------------------------------


async def _assert_401(hook: Webhook, answer: Answer) -> None:
    assert (answer.status, answer.body["error"]) == (401, "unauthorized")
    # Nothing an unauthenticated caller sends may be written: no nonce, no grant.
    assert await hook.redis.keys("*") == []


@pytest.mark.parametrize(
    "header", [auth.TIMESTAMP_HEADER, auth.NONCE_HEADER, auth.SIGNATURE_HEADER]
)
async def test_missing_header_is_401(webhook: Webhook, header: str) -> None:
    answer = await webhook.portal.call("POST", "/v1/whitelist", grant_body(), drop=(header,))
    await _assert_401(webhook, answer)
    assert header in answer.body["detail"]


async def test_unsigned_request_is_401_on_every_v1_route(webhook: Webhook) -> None:
    for method, path in [
        ("POST", "/v1/whitelist"),
        ("GET", "/v1/whitelist"),
        ("GET", "/v1/whitelist/192.0.2.10"),
        ("DELETE", "/v1/whitelist/192.0.2.10"),
    ]:
        answer = await webhook.portal.call(method, path, signed=False)
        await _assert_401(webhook, answer)


@pytest.mark.parametrize(
    ("header", "value"),
    [
        (auth.TIMESTAMP_HEADER, "soon"),
        (auth.NONCE_HEADER, "short"),
        (auth.SIGNATURE_HEADER, "sha256=abc"),
        (auth.SIGNATURE_HEADER, "md5=" + "0" * 32),
    ],
)
async def test_malformed_header_is_401(webhook: Webhook, header: str, value: str) -> None:
    answer = await webhook.portal.call("POST", "/v1/whitelist", grant_body(), extra={header: value})
    await _assert_401(webhook, answer)


async def test_header_given_twice_is_401(webhook: Webhook) -> None:
    portal = webhook.portal
    timestamp, nonce = str(int(time.time())), secrets.token_urlsafe(24)
    good = auth.sign(SECRET, timestamp, nonce, "GET", "/v1/whitelist", b"")
    headers = [
        (auth.TIMESTAMP_HEADER, timestamp),
        (auth.NONCE_HEADER, nonce),
        (auth.SIGNATURE_HEADER, "sha256=" + "0" * 64),
        (auth.SIGNATURE_HEADER, good),
    ]
    async with portal.session.get(portal.base + "/v1/whitelist", headers=headers) as response:
        assert response.status == 401
        assert (await response.json())["error"] == "unauthorized"


async def test_wrong_key_is_401(webhook: Webhook) -> None:
    answer = await webhook.portal.call("POST", "/v1/whitelist", grant_body(), secret="x" * 40)
    await _assert_401(webhook, answer)


@pytest.mark.parametrize("offset", [-auth.TIMESTAMP_WINDOW - 30, auth.TIMESTAMP_WINDOW + 30])
async def test_stale_or_future_timestamp_is_401(webhook: Webhook, offset: int) -> None:
    timestamp = str(int(time.time()) + offset)
    answer = await webhook.portal.call("POST", "/v1/whitelist", grant_body(), timestamp=timestamp)
    await _assert_401(webhook, answer)
    assert "300 s" in answer.body["detail"]


async def test_body_altered_after_signing_is_401(webhook: Webhook) -> None:
    signed_for = json.dumps(grant_body("192.0.2.10")).encode()
    answer = await webhook.portal.call(
        "POST", "/v1/whitelist", grant_body("192.0.2.11"), sign_body=signed_for
    )
    await _assert_401(webhook, answer)


async def test_path_altered_after_signing_is_401(webhook: Webhook) -> None:
    await webhook.portal.call("POST", "/v1/whitelist", grant_body())
    answer = await webhook.portal.call(
        "DELETE", "/v1/whitelist/192.0.2.10", sign_path="/v1/whitelist/192.0.2.11"
    )
    assert (answer.status, answer.body["error"]) == (401, "unauthorized")
    assert await webhook.redis.exists(_grant_key("192.0.2.10")) == 1


async def test_method_altered_after_signing_is_401(webhook: Webhook) -> None:
    await webhook.portal.call("POST", "/v1/whitelist", grant_body())
    answer = await webhook.portal.call("DELETE", "/v1/whitelist/192.0.2.10", sign_method="GET")
    assert answer.status == 401
    assert await webhook.redis.exists(_grant_key("192.0.2.10")) == 1


async def test_reused_nonce_is_409_replayed(webhook: Webhook) -> None:
    nonce = secrets.token_urlsafe(24)
    first = await webhook.portal.call("POST", "/v1/whitelist", grant_body(), nonce=nonce)
    assert first.status == 201
    assert auth.NONCE_TTL - 5 <= await webhook.redis.ttl(f"{PREFIX}nonce:{nonce}") <= auth.NONCE_TTL
    await webhook.portal.call("DELETE", "/v1/whitelist/192.0.2.10")
    replay = await webhook.portal.call("POST", "/v1/whitelist", grant_body(), nonce=nonce)
    assert (replay.status, replay.body["error"]) == (409, "replayed")
    assert await webhook.redis.exists(_grant_key("192.0.2.10")) == 0


async def test_replay_is_refused_by_another_webhook_process(
    webhook: Webhook, dnsmasq: Dnsmasq
) -> None:
    """Two webhooks sharing one Redis (or one restarted): a nonce counts once for all."""
    nonce = secrets.token_urlsafe(24)
    assert (await webhook.portal.call("GET", "/v1/whitelist", nonce=nonce)).status == 200
    checker = RegisteredNameChecker("campus.example", [dnsmasq.server])
    async with serving(webhook.redis_server, checker) as other:
        replay = await other.portal.call("GET", "/v1/whitelist", nonce=nonce)
        assert (replay.status, replay.body["error"]) == (409, "replayed")


# -- body and transport -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"[]",
        json.dumps({"ip": "192.0.2.10", "user": "alice", "role": "staff"}).encode(),
        json.dumps({**grant_body(), "ttl": 86400}).encode(),
        json.dumps({**grant_body(), "user": 7}).encode(),
        json.dumps({**grant_body(), "user": "alice:*"}).encode(),
    ],
)
async def test_bad_body_is_400(webhook: Webhook, body: bytes) -> None:
    answer = await webhook.portal.call("POST", "/v1/whitelist", body=body)
    assert (answer.status, answer.body["error"]) == (400, "bad_request")
    assert await webhook.redis.keys(f"{PREFIX}wl:*") == []


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", None, "application/json; charset=latin-1"],
)
async def test_not_json_is_415(webhook: Webhook, content_type: str | None) -> None:
    answer = await webhook.portal.call(
        "POST", "/v1/whitelist", grant_body(), content_type=content_type
    )
    assert (answer.status, answer.body["error"]) == (415, "unsupported_media_type")


async def test_json_with_utf8_charset_is_fine(webhook: Webhook) -> None:
    answer = await webhook.portal.call(
        "POST", "/v1/whitelist", grant_body(), content_type="application/json; charset=utf-8"
    )
    assert answer.status == 201


async def test_body_over_4_kib_is_413(webhook: Webhook) -> None:
    body = json.dumps({**grant_body(), "pad": "x" * MAX_BODY}).encode()
    answer = await webhook.portal.call("POST", "/v1/whitelist", body=body)
    assert (answer.status, answer.body["error"]) == (413, "too_large")


async def test_chunked_body_over_4_kib_is_413(webhook: Webhook) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b"x" * 1024

    portal = webhook.portal
    headers = {"Content-Type": "application/json"}
    async with portal.session.post(
        portal.base + "/v1/whitelist", data=chunks(), headers=headers
    ) as response:
        assert response.status == 413
        assert (await response.json())["error"] == "too_large"


async def test_unknown_path_is_json_404(webhook: Webhook) -> None:
    for path in ("/", "/v1/nothing", "/v2/whitelist"):
        answer = await webhook.portal.call("GET", path, signed=False)
        assert (answer.status, answer.content_type) == (404, "application/json")
        assert answer.body["error"] == "not_found"


async def test_wrong_method_is_json_405(webhook: Webhook) -> None:
    answer = await webhook.portal.call("PUT", "/v1/whitelist", grant_body())
    assert (answer.status, answer.content_type) == (405, "application/json")
    assert answer.body["error"] == "method_not_allowed"
    assert "POST" in answer.headers["Allow"]


async def test_too_many_in_flight_is_503(redis_server: RedisServer) -> None:
    with silent_dns_server() as silent:
        checker = RegisteredNameChecker("campus.example", [silent], lifetime=2.0)
        async with serving(redis_server, checker, max_in_flight=1) as hook:
            slow = asyncio.create_task(hook.portal.call("POST", "/v1/whitelist", grant_body()))
            await asyncio.sleep(0.5)  # the first request is now waiting for DNS
            busy = await hook.portal.call("GET", "/v1/whitelist")
            assert (busy.status, busy.body["error"]) == (503, "busy")
            assert busy.headers["Retry-After"]
            assert (await slow).status == 504
            assert (await hook.portal.call("GET", "/v1/whitelist")).status == 200


# -- health and Redis failures ----------------------------------------------------------------


async def test_healthz_ok_without_signature(webhook: Webhook) -> None:
    answer = await webhook.portal.call("GET", "/healthz", signed=False)
    assert (answer.status, answer.body) == (200, {"redis": "ok"})


async def test_redis_down_is_503(webhook: Webhook) -> None:
    webhook.redis_server.stop()
    health = await webhook.portal.call("GET", "/healthz", signed=False)
    assert health.status == 503
    assert health.body["redis"] == "unavailable"
    assert health.body["error"] == "store_unavailable"
    for method, path, body in [
        ("POST", "/v1/whitelist", grant_body()),
        ("GET", "/v1/whitelist", None),
        ("GET", "/v1/whitelist/192.0.2.10", None),
        ("DELETE", "/v1/whitelist/192.0.2.10", None),
    ]:
        answer = await webhook.portal.call(method, path, body)
        assert (answer.status, answer.body["error"]) == (503, "store_unavailable"), path
        assert answer.headers["Retry-After"]
    # Unsigned requests are refused before Redis is asked, so they stay 401.
    assert (await webhook.portal.call("GET", "/v1/whitelist", signed=False)).status == 401
    webhook.redis_server.start()
    # The store may hold its circuit open for a moment after failures: health comes back soon.
    deadline = time.monotonic() + 5
    while (await webhook.portal.call("GET", "/healthz", signed=False)).status != 200:
        assert time.monotonic() < deadline, "/healthz did not recover after Redis came back"
        await asyncio.sleep(0.1)
    assert (await webhook.portal.call("POST", "/v1/whitelist", grant_body())).status == 201


async def test_body_over_4_kib_is_413_before_the_signature_is_checked(webhook: Webhook) -> None:
    """The signature covers the body, so the size cap comes first (the README's order)."""
    body = json.dumps({**grant_body(), "pad": "x" * MAX_BODY}).encode()
    answer = await webhook.portal.call("POST", "/v1/whitelist", body=body, signed=False)
    assert (answer.status, answer.body["error"]) == (413, "too_large")


# -- GRANT_MIN_REPLICAS ------------------------------------------------------------------------


async def test_grant_min_replicas_answers_503_until_a_replica_confirms(
    redis_server: RedisServer, dnsmasq: Dnsmasq, tmp_path: Path
) -> None:
    checker = RegisteredNameChecker("campus.example", [dnsmasq.server], lifetime=2.0)
    # STORE_TIMEOUT is also how long WAIT waits: generous, so a busy machine's replica answers.
    async with serving(redis_server, checker, grant_min_replicas=1, store_timeout=2.0) as hook:
        # No replica at all: WAIT 1 reports 0 after STORE_TIMEOUT, so the grant is not confirmed.
        answer = await hook.portal.call("POST", "/v1/whitelist", grant_body())
        assert answer.status == 503
        assert answer.body["error"] == "store_unavailable"
        assert "may not have been kept" in answer.body["detail"]
        assert "0 of 1 replicas" in answer.body["detail"]
        assert "Retry-After" in answer.headers
        # Without this the master holds a new replica's first sync back by 5 s.
        redis_server.cli("CONFIG", "SET", "repl-diskless-sync-delay", "0")
        replica = RedisServer(
            require_tool("redis-server"),
            tmp_path / "replica",
            [
                "--save",
                "",
                "--appendonly",
                "no",
                "--replicaof",
                "127.0.0.1",
                str(redis_server.port),
            ],
        )
        replica.start()
        try:
            wait_for(
                lambda: "master_link_status:up" in replica.cli("INFO", "replication"),
                what="the replica's link to its master",
            )
            # The first attempt did reach the master, so this one refreshes it: 200, confirmed.
            answer = await hook.portal.call("POST", "/v1/whitelist", grant_body())
            assert answer.status == 200
            assert replica.cli("EXISTS", _grant_key("192.0.2.10")) == "1"
        finally:
            replica.stop()
