"""How the webhook refuses (issue 9, items 4 and 12): the Content-Type spellings real clients
send are accepted, and every refusal leaves one INFO line (code, user, address; never the
secret) for the helpdesk.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import pytest

from tests.support import RedisServer
from tests.test_webhook_api import SECRET, Webhook, grant_body, serving
from webhook.registered_name import RegisteredNameChecker


@pytest.fixture
async def webhook(redis_server: RedisServer) -> AsyncIterator[Webhook]:
    """The webhook without the DNS rule (these tests are about the answers, not DNS)."""
    async with serving(redis_server, RegisteredNameChecker(""), required_ptr_suffix="") as hook:
        yield hook


@pytest.mark.parametrize(
    "content_type",
    [
        "application/json",
        "application/json; charset=UTF-8",  # what Java's HTTP clients send
        "application/json; charset=utf-8",
        "application/json;charset=UTF-8",  # Spring, OkHttp
        'application/json; charset="utf-8"',  # a quoted parameter value (RFC 9110 §5.6.6)
        "application/json; charset=utf8",  # PHP and Node clients
        "Application/JSON; Charset=UTF-8",  # type and parameter names are case-insensitive
    ],
)
async def test_json_in_utf8_is_accepted_however_it_is_spelt(
    webhook: Webhook, content_type: str
) -> None:
    answer = await webhook.portal.call(
        "POST", "/v1/whitelist", grant_body(), content_type=content_type
    )
    assert answer.status == 201, answer.body


@pytest.mark.parametrize(
    "content_type",
    ["application/json; charset=latin-1", "application/json; charset=UTF-16", "text/json"],
)
async def test_other_charsets_are_still_415(webhook: Webhook, content_type: str) -> None:
    answer = await webhook.portal.call(
        "POST", "/v1/whitelist", grant_body(), content_type=content_type
    )
    assert answer.status == 415
    assert answer.body["error"] == "unsupported_media_type"


REFUSALS = {
    # name: (request body change, content type, status, code, user and address in the line)
    "invalid_ip": ({"ip": "127.0.0.1"}, "application/json", 422, "invalid_ip", "127.0.0.1"),
    "ip_not_allowed": ({"ip": "203.0.113.9"}, "application/json", 422, "ip_not_allowed", None),
    "not_eligible": ({"status": "graduated"}, "application/json", 403, "not_eligible", None),
    "bad_request": ({"extra": "x"}, "application/json", 400, "bad_request", None),
    "unsupported_media_type": ({}, "text/plain", 415, "unsupported_media_type", None),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
async def test_every_refusal_is_one_info_line(
    webhook: Webhook, caplog: pytest.LogCaptureFixture, case: str
) -> None:
    change, content_type, status, code, address = REFUSALS[case]
    body = grant_body(**change)
    caplog.set_level(logging.INFO, logger="webhook")
    answer = await webhook.portal.call("POST", "/v1/whitelist", body, content_type=content_type)
    assert (answer.status, answer.body["error"]) == (status, code)
    lines = [r for r in caplog.records if r.name.startswith("webhook")]
    [line] = lines
    assert line.levelno == logging.INFO
    text = line.getMessage()
    assert f"{status} {code}" in text
    if status in (400, 415):  # the body was not read as a request: nobody to name
        assert "user=- ip=-" in text
    else:
        assert "user=alice" in text
        assert f"ip={address or body['ip']}" in text
    assert SECRET not in text


async def test_an_address_that_is_not_one_is_logged_escaped(
    webhook: Webhook, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="webhook")
    answer = await webhook.portal.call("POST", "/v1/whitelist", grant_body(ip="1.2.3.4\nforged"))
    assert answer.status == 422
    [line] = [r.getMessage() for r in caplog.records if r.name.startswith("webhook")]
    assert "\n" not in line
    assert r"ip='1.2.3.4\nforged'" in line


async def test_auth_failures_are_one_warning_line(
    webhook: Webhook, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="webhook")
    answer = await webhook.portal.call("POST", "/v1/whitelist", grant_body(), secret="x" * 40)
    assert answer.status == 401
    [line] = [r for r in caplog.records if r.name.startswith("webhook")]
    assert line.levelno == logging.WARNING
    assert "401 unauthorized" in line.getMessage()
