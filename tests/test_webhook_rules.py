"""The campus rules that need no network, and the strict request body."""

from __future__ import annotations

import ipaddress
import json

import pytest

from webhook import rules
from webhook.models import BadRequest, parse_grant_request

ELIGIBLE = frozenset({("staff", "normal"), ("student", "normal"), ("student", "resumption")})
CAMPUS = (ipaddress.ip_network("140.114.0.0/16"), ipaddress.ip_network("2001:288:1001::/48"))


@pytest.mark.parametrize(
    ("role", "status"), [("staff", "normal"), ("student", "normal"), ("student", "resumption")]
)
def test_eligible(role: str, status: str) -> None:
    rules.check_eligible(role, status, ELIGIBLE)


@pytest.mark.parametrize(
    ("role", "status"),
    [
        ("staff", "resumption"),  # resumption is for students only (SEED.md)
        ("student", "suspended"),
        ("staff", "retired"),
        ("alumni", "normal"),
        ("Staff", "normal"),  # exact: the portal sends the information system's own values
        ("staff", "Normal"),
    ],
)
def test_not_eligible(role: str, status: str) -> None:
    with pytest.raises(rules.NotEligible):
        rules.check_eligible(role, status, ELIGIBLE)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not an ip",
        "140.114.1",
        "140.114.01.1",  # leading zeros are ambiguous (octal in some parsers)
        "140.114.1.1/32",
        " 140.114.1.1",
        "140.114.1.1\n",
        "fe80::1%eth0",
        "0.0.0.0",
        "0.1.2.3",
        "::",
        "127.0.0.1",
        "::1",
        "224.0.0.1",
        "ff02::1",
        "169.254.1.1",
        "fe80::1",
        "fec0::1",
        "240.0.0.1",
        "255.255.255.255",
    ],
)
def test_invalid_ip(text: str) -> None:
    with pytest.raises(rules.InvalidIp):
        rules.check_ip(text, CAMPUS)


@pytest.mark.parametrize(
    ("text", "normal"),
    [
        ("140.114.63.1", "140.114.63.1"),
        ("2001:288:1001:0:0:0:0:1", "2001:288:1001::1"),
        ("::ffff:140.114.63.1", "140.114.63.1"),
    ],
)
def test_allowed_ip_is_normalised(text: str, normal: str) -> None:
    assert str(rules.check_ip(text, CAMPUS)) == normal


@pytest.mark.parametrize("text", ["8.8.8.8", "10.1.2.3", "2001:db8::1", "2001:288:1002::1"])
def test_ip_outside_allowed_networks(text: str) -> None:
    with pytest.raises(rules.IpNotAllowed):
        rules.check_ip(text, CAMPUS)


def test_without_allowed_networks_any_global_address() -> None:
    assert str(rules.check_ip("8.8.8.8", ())) == "8.8.8.8"
    assert str(rules.check_ip("2606:4700::1111", ())) == "2606:4700::1111"
    for private in ("10.1.2.3", "192.168.1.1", "172.16.0.1", "fd00::1", "192.0.2.1", "100.64.0.1"):
        with pytest.raises(rules.IpNotAllowed):
            rules.check_ip(private, ())


def test_private_network_may_be_allowed_on_purpose() -> None:
    assert str(rules.check_ip("10.1.2.3", (ipaddress.ip_network("10.0.0.0/8"),))) == "10.1.2.3"


GOOD = {"ip": "140.114.63.1", "user": "alice.chen@cs", "role": "student", "status": "normal"}


def test_body_parses() -> None:
    request = parse_grant_request(json.dumps(GOOD).encode())
    assert (request.ip, request.user, request.role, request.status) == tuple(GOOD.values())


@pytest.mark.parametrize(
    ("body", "where"),
    [
        (b"", "body"),
        (b"{", "body"),
        (b"[]", "body"),
        (b'"text"', "body"),
        (json.dumps({**GOOD, "admin": True}).encode(), "admin"),
        (json.dumps({k: v for k, v in GOOD.items() if k != "user"}).encode(), "user"),
        (json.dumps({**GOOD, "user": 5}).encode(), "user"),
        (json.dumps({**GOOD, "ip": ["140.114.63.1"]}).encode(), "ip"),
        (json.dumps({**GOOD, "user": ""}).encode(), "user"),
        (json.dumps({**GOOD, "user": "x" * 65}).encode(), "user"),
        (json.dumps({**GOOD, "user": "a:b"}).encode(), "user"),  # ':' separates key parts
        (json.dumps({**GOOD, "user": "a*"}).encode(), "user"),  # '*' is a SCAN pattern
        (json.dumps({**GOOD, "user": "alice\n"}).encode(), "user"),
        (json.dumps({**GOOD, "role": "staff\nINFO forged"}).encode(), "role"),
        (json.dumps({**GOOD, "status": ""}).encode(), "status"),
        (json.dumps({**GOOD, "ip": "x" * 65}).encode(), "ip"),
    ],
)
def test_bad_body(body: bytes, where: str) -> None:
    with pytest.raises(BadRequest) as caught:
        parse_grant_request(body)
    assert where in caught.value.detail


def test_bad_body_detail_does_not_echo_input() -> None:
    with pytest.raises(BadRequest) as caught:
        parse_grant_request(json.dumps({**GOOD, "user": "<script>evil</script>"}).encode())
    assert "evil" not in caught.value.detail
