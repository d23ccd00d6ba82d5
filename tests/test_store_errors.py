"""Redis answering an error is not Redis unreachable, and a grant's TTL is bounded (issue 9,
item 6).

``add --ttl 99999999999`` used to reach Redis, which refused the expiry; that error became
"Redis unreachable" and exit 3 although Redis was fine. Now ``--ttl`` is bounded as
``WHITELIST_TTL`` is (bad usage, exit 2), and an error answer from Redis (here: a read-only replica)
is reported as such everywhere: the CLI exits 1 saying so, the webhook's log and detail say so,
the policy server logs a store error and does not open its circuit.
"""

from __future__ import annotations

import logging

import pytest

from ratelimit.addresses import parse_ip
from ratelimit.grant_rules import MAX_WHITELIST_TTL
from ratelimit.grants import Grants
from ratelimit.store import KeyLayout, Store
from tests.support import RedisServer, clean_env, free_port, make_settings, policy_server, run_cli
from tests.test_webhook_api import grant_body, serving
from webhook.registered_name import RegisteredNameChecker

IP = "198.51.100.23"
ON_STORE_ERROR = "451 4.3.0 store error"


def read_only(redis: RedisServer) -> None:
    """Every write is refused with a READONLY error reply (a replica of a master nobody runs,
    as after a failover gone wrong); Redis itself answers fine."""
    redis.cli("REPLICAOF", "127.0.0.1", str(free_port()))


@pytest.mark.parametrize("ttl", ["99999999999", str(MAX_WHITELIST_TTL + 1)])
def test_add_ttl_beyond_the_bound_is_bad_usage(redis_server: RedisServer, ttl: str) -> None:
    env = clean_env(redis_url=redis_server.url)
    result = run_cli("add", IP, "--ttl", ttl, env=env)
    assert result.returncode == 2, result
    assert "--ttl" in result.stderr
    assert "unreachable" not in result.stderr
    assert redis_server.cli("EXISTS", KeyLayout("swl:").grant(IP, f"{IP}/32")) == "0"
    longest = run_cli("add", IP, "--ttl", str(MAX_WHITELIST_TTL), env=env)
    assert longest.returncode == 0, longest.stderr


async def test_grants_refuse_a_ttl_out_of_bounds(redis_server: RedisServer) -> None:
    settings = make_settings(redis_server.url)
    store = Store.from_settings(settings)
    address = parse_ip(IP)
    assert address is not None
    try:
        for ttl in (0, MAX_WHITELIST_TTL + 1, 10**12):
            with pytest.raises(ValueError, match="a grant lasts"):
                await Grants(store, settings).grant(
                    address,
                    user="op",
                    role="operator",
                    status="override",
                    source="cli",
                    ttl=ttl,
                    max_per_user=None,
                )
    finally:
        await store.aclose()


def test_cli_says_redis_answered_an_error_not_unreachable(redis_server: RedisServer) -> None:
    read_only(redis_server)
    result = run_cli("add", IP, env=clean_env(redis_url=redis_server.url))
    assert result.returncode == 1, result
    [line] = result.stderr.splitlines()
    assert "Redis answered an error" in line
    assert "read only replica" in line
    assert "unreachable" not in line


async def test_webhook_says_redis_answered_an_error(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="webhook")
    async with serving(redis_server, RegisteredNameChecker(""), required_ptr_suffix="") as hook:
        read_only(redis_server)
        answer = await hook.portal.call("POST", "/v1/whitelist", grant_body())
    assert answer.status == 503
    assert answer.body["detail"] == "the grant store (Redis) answered an error"
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("Redis answered an error" in m for m in lines), lines
    assert not any("unavailable" in m for m in lines), lines


async def test_policy_server_logs_a_store_error_and_keeps_its_circuit_closed(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(redis_server.url, message_limits="5/1h", on_store_error=ON_STORE_ERROR)
    async with policy_server(settings) as running:
        read_only(redis_server)
        client = await running.connect()
        try:
            for _ in range(5):
                assert await client.ask(protocol_state="DATA", client_address=IP) == ON_STORE_ERROR
            assert not running.store.breaker.is_open
            redis_server.cli("REPLICAOF", "NO", "ONE")
            # Reachable all along: the very next request is decided, no probe to wait for.
            assert await client.ask(protocol_state="DATA", client_address=IP) == "DUNNO"
        finally:
            await client.aclose()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(
        m.startswith("store error (Redis answered an error: You can't write") for m in warnings
    )
