"""The registered-name rule against a real DNS server (dnsmasq on loopback, its own zone)."""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.dns_server import Dnsmasq, Zone, running_dnsmasq, silent_dns_server
from tests.support import require_tool
from webhook.registered_name import (
    DnsError,
    DnsTimeout,
    NoRegisteredName,
    RegisteredNameChecker,
)

SUFFIX = "campus.example"

# Every case of the rule, by address (documentation ranges, RFC 5737 and RFC 3849).
ZONE = Zone(
    ptr={
        "192.0.2.10": ["pc1.campus.example"],  # matches and resolves back
        "192.0.2.11": ["liar.campus.example"],  # under the suffix, resolves elsewhere
        "192.0.2.12": ["pc.elsewhere.example"],  # resolves back, but outside the suffix
        "192.0.2.13": ["pc.evilcampus.example"],  # "ends with" the suffix, not on a dot
        "192.0.2.14": ["PC14.Campus.Example"],  # case does not matter in DNS
        "192.0.2.15": ["gone.campus.example"],  # PTR to a name that does not exist
        "192.0.2.16": ["other.elsewhere.example", "pc16.lab.campus.example"],
        "192.0.2.17": ["pc17.slow.campus.example"],  # forward zone never answers
        "2001:db8::10": ["pc6.campus.example"],
        "2001:db8::11": ["pc1.campus.example"],  # an IPv4-only name for an IPv6 address
        # 192.0.2.20: no PTR at all (NXDOMAIN from the local reverse zone)
    },
    forward={
        "pc1.campus.example": ["192.0.2.10"],
        "liar.campus.example": ["192.0.2.99"],
        "pc.elsewhere.example": ["192.0.2.12"],
        "pc.evilcampus.example": ["192.0.2.13"],
        "pc14.campus.example": ["192.0.2.14"],
        "other.elsewhere.example": ["192.0.2.16"],
        "pc16.lab.campus.example": ["192.0.2.16"],
        "pc6.campus.example": ["2001:db8::10"],
    },
    local=[
        "campus.example",
        "elsewhere.example",
        "evilcampus.example",
        "2.0.192.in-addr.arpa",
        "8.b.d.0.1.0.0.2.ip6.arpa",
    ],
    # 198.51.100.0/24 is in no local zone and dnsmasq has no upstream: it answers REFUSED.
)

# Short, so the never-answering cases finish quickly; long enough for loopback answers.
LIFETIME = 1.0


@pytest.fixture
def dnsmasq(tmp_path: Path) -> Iterator[Dnsmasq]:
    with silent_dns_server() as silent:
        zone = Zone(
            ptr=ZONE.ptr,
            forward=ZONE.forward,
            local=ZONE.local,
            forward_to=[("slow.campus.example", *silent)],
        )
        with running_dnsmasq(require_tool("dnsmasq"), tmp_path / "dns", zone) as server:
            yield server


def _checker(server: Dnsmasq, suffix: str = SUFFIX) -> RegisteredNameChecker:
    return RegisteredNameChecker(suffix, [server.server], lifetime=LIFETIME, try_timeout=0.5)


@pytest.mark.parametrize(
    ("ip", "name"),
    [
        ("192.0.2.10", "pc1.campus.example"),
        ("192.0.2.14", "pc14.campus.example"),
        ("192.0.2.16", "pc16.lab.campus.example"),
        ("2001:db8::10", "pc6.campus.example"),
    ],
)
async def test_forward_confirmed_name_passes(dnsmasq: Dnsmasq, ip: str, name: str) -> None:
    assert await _checker(dnsmasq).check(ipaddress.ip_address(ip)) == name


@pytest.mark.parametrize(
    ("ip", "why"),
    [
        ("192.0.2.11", "does not resolve back"),
        ("192.0.2.12", "not under campus.example"),
        ("192.0.2.13", "not under campus.example"),
        ("192.0.2.15", "does not resolve back"),
        ("192.0.2.20", "no PTR record"),
        ("2001:db8::11", "does not resolve back"),
        ("2001:db8::99", "no PTR record"),
    ],
)
async def test_no_registered_name(dnsmasq: Dnsmasq, ip: str, why: str) -> None:
    with pytest.raises(NoRegisteredName, match=why):
        await _checker(dnsmasq).check(ipaddress.ip_address(ip))


async def test_suffix_compared_case_insensitively(dnsmasq: Dnsmasq) -> None:
    checker = _checker(dnsmasq, "CAMPUS.Example.")
    assert await checker.check(ipaddress.ip_address("192.0.2.10")) == "pc1.campus.example"


async def test_suffix_may_be_a_subdomain(dnsmasq: Dnsmasq) -> None:
    checker = _checker(dnsmasq, "lab.campus.example")
    assert await checker.check(ipaddress.ip_address("192.0.2.16")) == "pc16.lab.campus.example"
    with pytest.raises(NoRegisteredName):
        await checker.check(ipaddress.ip_address("192.0.2.10"))


async def test_refusing_server_is_an_error_not_a_refusal(dnsmasq: Dnsmasq) -> None:
    with pytest.raises(DnsError):
        await _checker(dnsmasq).check(ipaddress.ip_address("198.51.100.5"))


async def test_silent_server_times_out_within_the_lifetime() -> None:
    with silent_dns_server() as silent:
        checker = RegisteredNameChecker(SUFFIX, [silent], lifetime=LIFETIME, try_timeout=0.3)
        started = time.monotonic()
        with pytest.raises(DnsTimeout):
            await checker.check(ipaddress.ip_address("192.0.2.10"))
        assert time.monotonic() - started < LIFETIME + 0.5


async def test_silent_forward_lookup_is_a_timeout_not_a_refusal(dnsmasq: Dnsmasq) -> None:
    started = time.monotonic()
    with pytest.raises(DnsTimeout):
        await _checker(dnsmasq).check(ipaddress.ip_address("192.0.2.17"))
    assert time.monotonic() - started < LIFETIME + 0.5


async def test_second_server_answers_when_the_first_is_silent(dnsmasq: Dnsmasq) -> None:
    with silent_dns_server() as silent:
        checker = RegisteredNameChecker(
            SUFFIX, [silent, dnsmasq.server], lifetime=2.0, try_timeout=0.3
        )
        assert await checker.check(ipaddress.ip_address("192.0.2.10")) == "pc1.campus.example"


async def test_no_suffix_means_no_lookup() -> None:
    with silent_dns_server() as silent:
        checker = RegisteredNameChecker("", [silent], lifetime=LIFETIME)
        assert not checker.enabled
        started = time.monotonic()
        assert await checker.check(ipaddress.ip_address("192.0.2.20")) is None
        assert time.monotonic() - started < 0.1
