"""The operator's ``add`` (issue 9, items 10 and 11).

10. ``add`` used to accept anything: an unspecified or multicast address, a user name with a
    space or a ``:`` (which lands in a key as ``u:a:b`` and breaks the OpenAPI ``Grant.user``
    pattern). The address and user rules are now checked in one place, by every entry point;
    an operator still overrides the campus rules (loopback, private ranges).
11. An operator's grant recorded an empty actor, and counted against the user's portal cap:
    three of them made the user's next portal request 429. The operator is now the actor of
    every change, and an override stands outside the cap.
"""

from __future__ import annotations

import json

import pytest

from ratelimit.addresses import parse_ip
from ratelimit.grant_rules import InvalidGrant
from ratelimit.grants import Grants
from ratelimit.store import Store
from tests.support import RedisServer, clean_env, make_settings, run_cli
from tests.test_webhook_api import grant_body, serving
from webhook.registered_name import RegisteredNameChecker

OPERATOR = "opsjane"


@pytest.fixture
def env(redis_server: RedisServer) -> dict[str, str]:
    return clean_env(redis_url=redis_server.url, key_prefix="swl:") | {"SUDO_USER": OPERATOR}


@pytest.mark.parametrize(
    "ip", ["0.0.0.0", "0.1.2.3", "224.0.0.1", "255.255.255.255", "240.0.0.1", "ff02::1", "::"]
)
def test_add_refuses_an_address_no_computer_sends_from(
    redis_server: RedisServer, env: dict[str, str], ip: str
) -> None:
    result = run_cli("add", ip, env=env)
    assert result.returncode == 2, result
    [line] = result.stderr.splitlines()
    assert "address" in line
    assert redis_server.cli("DBSIZE") == "0"


@pytest.mark.parametrize("ip", ["127.0.0.1", "10.1.2.3", "192.168.0.9", "::1", "fd00::5"])
def test_add_still_overrides_the_campus_rules(env: dict[str, str], ip: str) -> None:
    result = run_cli("add", ip, env=env)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("user", ["bad user", "a:b", "x" * 65, "tab\there", "alice\n"])
def test_add_refuses_a_user_name_outside_the_alphabet(
    redis_server: RedisServer, env: dict[str, str], user: str
) -> None:
    result = run_cli("add", "192.0.2.10", "--user", user, env=env)
    assert result.returncode == 2, result
    [line] = result.stderr.splitlines()
    assert "user" in line
    assert redis_server.cli("DBSIZE") == "0"


async def test_every_entry_point_goes_through_the_same_rules(redis_server: RedisServer) -> None:
    settings = make_settings(redis_server.url)
    store = Store.from_settings(settings)
    grants = Grants(store, settings)
    try:
        for ip, user in (("192.0.2.10", "a:b"), ("224.0.0.1", "alice"), ("0.0.0.0", "alice")):
            address = parse_ip(ip)
            assert address is not None
            with pytest.raises(InvalidGrant):
                await grants.grant(
                    address,
                    user=user,
                    role="staff",
                    status="normal",
                    source="webhook",
                    max_per_user=3,
                )
        assert await store._client.dbsize() == 0
    finally:
        await store.aclose()


def _audit(env: dict[str, str]) -> list[dict[str, str]]:
    result = run_cli("audit", "--json", env=env)
    assert result.returncode == 0, result.stderr
    items: list[dict[str, str]] = json.loads(result.stdout)["items"]
    return items


def test_the_operator_is_the_actor_of_every_change(env: dict[str, str]) -> None:
    assert run_cli("add", "192.0.2.10", "--user", "alice", env=env).returncode == 0
    assert run_cli("add", "192.0.2.10", "--user", "alice", env=env).returncode == 0
    assert run_cli("add", "192.0.2.11", env=env).returncode == 0
    assert run_cli("remove", "192.0.2.10", env=env).returncode == 0
    entries = _audit(env)
    assert [(e["event"], e["user"], e["actor"]) for e in entries] == [
        ("grant", "alice", OPERATOR),
        ("refresh", "alice", OPERATOR),
        ("grant", OPERATOR, OPERATOR),
        ("remove", "alice", OPERATOR),
    ]


async def test_operator_grants_do_not_use_up_the_users_cap(
    redis_server: RedisServer, env: dict[str, str]
) -> None:
    async with serving(redis_server, RegisteredNameChecker(""), required_ptr_suffix="") as hook:
        # A grant alice made herself, then taken over by an operator: no longer hers to count.
        answer = await hook.portal.call("POST", "/v1/whitelist", grant_body("192.0.2.20"))
        assert answer.status == 201
        for ip in ("192.0.2.20", "192.0.2.21", "192.0.2.22", "192.0.2.23"):
            result = run_cli("add", ip, "--user", "alice", env=env)
            assert result.returncode == 0, result.stderr
        # MAX_GRANTS_PER_USER is 3: her own three still fit beside four overrides ...
        for ip in ("192.0.2.30", "192.0.2.31", "192.0.2.32"):
            answer = await hook.portal.call("POST", "/v1/whitelist", grant_body(ip))
            assert answer.status == 201, answer.body
        # ... and the cap still holds for what she asks herself.
        answer = await hook.portal.call("POST", "/v1/whitelist", grant_body("192.0.2.33"))
        assert answer.status == 429
