"""The limiter's clients, remembered by their client_address text (pure: Redis is never asked).

A decision looks its client up by the text Postfix wrote, whose hash Python keeps, instead of
by the parsed address, whose hash ipaddress computes in Python on every lookup (issue 13).
These pin down that the memo changes nothing a decision sees.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from ipaddress import IPv4Address, IPv6Address
from typing import Any

import pytest

import ratelimit.limiter
from ratelimit.limiter import LimitConfig, Limiter, Outcome
from ratelimit.store import Store
from tests.support.settings import make_settings

URL = "redis://127.0.0.1:1/0"  # never connected: nothing here reaches Redis


@pytest.fixture
async def store() -> AsyncIterator[Store]:
    store = Store.from_settings(make_settings(URL, key_prefix="t:"))
    yield store
    await store.aclose()


def limiter_with(store: Store, **settings: Any) -> Limiter:
    return Limiter(store, LimitConfig.from_settings(make_settings(URL, **settings)))


async def test_a_client_is_made_once_with_its_network_keys_and_verdict(store: Store) -> None:
    limiter = limiter_with(store, ipv4_prefix="24")
    client = limiter.client("192.0.2.7")
    assert client is not None
    assert client.address == IPv4Address("192.0.2.7")
    assert (client.passed.outcome, client.passed.network) == (Outcome.ACCEPTED, "192.0.2.0/24")
    assert client.keys == (
        "t:c:{192.0.2.0/24}",
        "t:wl:{192.0.2.0/24}:192.0.2.7",
        "t:o:{192.0.2.0/24}:192.0.2.7",
    )
    assert limiter.client("192.0.2.7") is client  # remembered: the same object, made once
    neighbour = limiter.client("192.0.2.8")
    assert neighbour is not None
    assert neighbour.keys is not None
    assert neighbour.keys[0] == client.keys[0]  # one network, one log
    assert neighbour.keys[1] != client.keys[1]  # a grant is for the exact address


async def test_texts_of_one_address_are_one_client_and_garbage_is_none(store: Store) -> None:
    limiter = limiter_with(store)
    plain, mapped = limiter.client("192.0.2.7"), limiter.client("::ffff:192.0.2.7")
    assert plain is not None
    assert mapped is not None
    assert mapped.address == IPv4Address("192.0.2.7")
    assert mapped.keys == plain.keys
    v6 = limiter.client("2001:DB8::1")
    assert v6 is not None
    assert v6.address == IPv6Address("2001:db8::1")
    assert v6.passed.network == "2001:db8::/64"
    for text in ("", "not an address", "192.0.2.300", "fe80::1%eth0"):
        assert limiter.client(text) is None
        assert limiter.client(text) is None  # remembered as none, asked again


async def test_an_exempt_client_has_no_keys(store: Store) -> None:
    limiter = limiter_with(store, exempt_networks="192.0.2.0/28")
    exempt, counted = limiter.client("192.0.2.3"), limiter.client("192.0.2.30")
    assert exempt is not None
    assert counted is not None
    assert (exempt.passed.outcome, exempt.keys) == (Outcome.EXEMPT, None)
    assert counted.passed.outcome is Outcome.ACCEPTED
    assert counted.keys is not None


async def test_new_settings_forget_every_client(store: Store) -> None:
    limiter = limiter_with(store, ipv4_prefix="32")
    before = limiter.client("192.0.2.7")
    assert before is not None
    assert before.passed.network == "192.0.2.7/32"
    limiter.reconfigure(LimitConfig.from_settings(make_settings(URL, ipv4_prefix="24")))
    after = limiter.client("192.0.2.7")
    assert after is not None
    assert after is not before
    assert after.passed.network == "192.0.2.0/24"
    assert after.keys is not None
    assert after.keys[0] == "t:c:{192.0.2.0/24}"


async def test_the_memo_is_bounded(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """A relay seeing ever new addresses (a scan, a botnet) must not grow it without bound:
    when full it starts again from empty."""
    monkeypatch.setattr(ratelimit.limiter, "MAX_REMEMBERED_CLIENTS", 3)
    limiter = limiter_with(store)
    first = limiter.client("192.0.2.1")
    assert first is not None
    assert limiter.client("192.0.2.1") is first
    for n in range(2, 5):  # the memo fills up and is emptied
        limiter.client(f"192.0.2.{n}")
    again = limiter.client("192.0.2.1")
    assert again is not None
    assert again is not first
    assert again.keys == first.keys  # made again, the same
