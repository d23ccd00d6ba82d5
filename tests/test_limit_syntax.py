"""The limit syntax (``20/1m,100/1h``) and the client address helpers, called directly."""

from __future__ import annotations

import ipaddress

import pytest

from ratelimit.addresses import client_network, in_networks, parse_ip, parse_networks
from ratelimit.limits import MAX_COUNT, MAX_WINDOW_SECONDS, Limit, format_window, parse_limits


@pytest.mark.parametrize(
    ("text", "limits"),
    [
        ("20/1m,100/1h", (Limit(20, 60), Limit(100, 3600))),
        ("100/1h", (Limit(100, 3600),)),
        ("3/2s", (Limit(3, 2),)),
        ("5/1d", (Limit(5, 86400),)),
        ("5/h", (Limit(5, 3600),)),  # "per hour" without the 1
        (" 3 / 2s , 10 / 90s ", (Limit(3, 2), Limit(10, 90))),
        ("1/7d", (Limit(1, MAX_WINDOW_SECONDS),)),
        (f"{MAX_COUNT}/1h", (Limit(MAX_COUNT, 3600),)),
        ("", ()),
        ("   ", ()),
    ],
)
def test_good_limits(text: str, limits: tuple[Limit, ...]) -> None:
    assert parse_limits(text) == limits


@pytest.mark.parametrize(
    "text",
    [
        "100",  # no window
        "100/",  # no window
        "/1h",  # no count
        "100/1y",  # unknown unit
        "100/1H",  # units are lower case, as documented
        "100/1 hour",
        "1.5/1m",
        "-1/1m",
        "0/1m",  # a limit of nothing is a typo; EXEMPT/empty settings express "none"/"all"
        "1/0s",
        "1/8d",  # longer than a week
        f"{MAX_COUNT + 1}/1h",
        "10/1m,10/1m",  # the same limit twice
        "10/1m,",  # a trailing comma is an empty item
        "10/1m;20/1h",
        "ten/1m",
    ],
)
def test_bad_limits(text: str) -> None:
    with pytest.raises(ValueError, match=r".") as raised:
        parse_limits(text)
    # The message is one line, fit to follow "SMTP_WHITELIST_MESSAGE_LIMITS: ".
    assert "\n" not in str(raised.value)


def test_bad_item_is_named() -> None:
    with pytest.raises(ValueError, match="'100/1y'"):
        parse_limits("20/1m, 100/1y")


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(1, "1s"), (90, "90s"), (60, "1m"), (120, "2m"), (3600, "1h"), (5400, "90m"), (86400, "1d")],
)
def test_format_window(seconds: int, text: str) -> None:
    assert format_window(seconds) == text
    assert parse_limits(f"1/{text}") == (Limit(1, seconds),)


def test_limit_prints_as_it_is_written() -> None:
    assert [str(lim) for lim in parse_limits("20/1m,100/60m,7/2s")] == ["20/1m", "100/1h", "7/2s"]


# -- client addresses ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("198.51.100.7", "198.51.100.7"),
        (" 198.51.100.7 ", "198.51.100.7"),
        ("2001:DB8:0:0::1", "2001:db8::1"),
        ("::ffff:198.51.100.7", "198.51.100.7"),  # a dual-stack socket's view of an IPv4 client
    ],
)
def test_parse_ip(text: str, address: str) -> None:
    assert str(parse_ip(text)) == address


@pytest.mark.parametrize("text", ["", "unknown", "999.1.1.1", "198.51.100", "fe80::1%eth0", "x"])
def test_parse_ip_refuses(text: str) -> None:
    assert parse_ip(text) is None


def test_client_network_groups_by_prefix() -> None:
    a = parse_ip("2001:db8:1:2:aaaa::1")
    b = parse_ip("2001:db8:1:2:bbbb::2")
    c = parse_ip("2001:db8:1:3::1")
    assert a is not None
    assert b is not None
    assert c is not None
    assert str(client_network(a, 32, 64)) == "2001:db8:1:2::/64"
    assert client_network(a, 32, 64) == client_network(b, 32, 64)
    assert client_network(a, 32, 64) != client_network(c, 32, 64)
    assert client_network(a, 32, 48) == client_network(c, 32, 48)
    v4 = parse_ip("198.51.100.7")
    assert v4 is not None
    assert str(client_network(v4, 32, 64)) == "198.51.100.7/32"
    assert str(client_network(v4, 24, 64)) == "198.51.100.0/24"


def test_networks() -> None:
    nets = parse_networks("192.0.2.0/24, 2001:db8::/32,")
    assert nets == (ipaddress.ip_network("192.0.2.0/24"), ipaddress.ip_network("2001:db8::/32"))
    inside, outside = parse_ip("192.0.2.200"), parse_ip("192.0.3.1")
    assert inside is not None
    assert outside is not None
    assert in_networks(inside, nets)
    assert not in_networks(outside, nets)
    with pytest.raises(ValueError, match=r"192\.0\.2\.1/24"):
        parse_networks("192.0.2.1/24")  # host bits set: probably a typo
