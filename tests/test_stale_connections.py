"""A connection Redis has closed must not cost a decision: the first request after the event
gets a real answer (issue 9, item 1).

Two ways a kept connection goes stale without anyone asking during the outage: Redis' own idle
``timeout`` closes it, or Redis is killed and started again on the same port. In both cases the
next call finds a dead socket; it must be retried once on a fresh connection, within the same
STORE_TIMEOUT, for the policy server's batch connection, the webhook's pool and the CLI.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest

from tests.support import (
    RedisServer,
    Service,
    clean_env,
    free_port,
    limit_reply,
    make_settings,
    policy_server,
    run_cli,
    wait_for,
)
from tests.test_webhook_api import Portal, grant_body

IP = "198.51.100.23"
ON_STORE_ERROR = "451 4.3.0 store error"
SECRET = "stale-test-secret-" + "s" * 32


def _clients(redis: RedisServer) -> int:
    """Clients connected to Redis, not counting the redis-cli that asks."""
    for line in redis.cli("INFO", "clients").splitlines():
        if line.startswith("connected_clients:"):
            return int(line.split(":")[1]) - 1
    raise AssertionError("no connected_clients in INFO")


def idle_timeout(redis: RedisServer) -> None:
    """Redis closes every idle connection (``timeout 1``); wait until it has."""
    redis.cli("CONFIG", "SET", "timeout", "1")
    wait_for(lambda: _clients(redis) == 0, what="Redis closing idle connections")


def restart(redis: RedisServer) -> None:
    """A crash and a start on the same address; nobody asks while it is down."""
    redis.kill()
    redis.start()


EVENTS: dict[str, Callable[[RedisServer], None]] = {"timeout": idle_timeout, "restart": restart}


@pytest.mark.parametrize("event", [*sorted(EVENTS), "restart with AOF"])
async def test_policy_server_decides_the_first_request_after_a_stale_connection(
    redis_server: RedisServer, event: str
) -> None:
    aof = event == "restart with AOF"
    if aof:
        # From the start, so the count below is in the file the restarted Redis reads back.
        redis_server.extra = ["--save", "", "--appendonly", "yes", "--appendfsync", "always"]
        redis_server.stop()
        redis_server.start()
    settings = make_settings(redis_server.url, message_limits="1/1h", on_store_error=ON_STORE_ERROR)
    async with policy_server(settings) as running:
        client = await running.connect()
        try:
            assert await client.ask(protocol_state="DATA", client_address=IP) == "DUNNO"
            EVENTS["restart" if aof else event](redis_server)
            # After a timeout, or a restart from the AOF, the count survived and the limit is
            # met; a restarted Redis without persistence is empty, so the message is counted.
            limited = limit_reply(IP, "1 messages", "1h")
            expected = "DUNNO" if event == "restart" else limited
            assert await client.ask(protocol_state="DATA", client_address=IP) == expected
            # And the next one is decided from Redis too (counted, then limited).
            after = await client.ask(protocol_state="DATA", client_address=IP)
            assert after == limit_reply(IP, "1 messages", "1h")
        finally:
            await client.aclose()


async def _post_grant(port: int, ip: str) -> int:
    user = "u" + ip.rsplit(".", 1)[1]  # one user per address: MAX_GRANTS_PER_USER is not tested
    async with aiohttp.ClientSession() as session:
        portal = Portal(session, f"http://127.0.0.1:{port}", secret=SECRET)
        answer = await portal.call("POST", "/v1/whitelist", grant_body(ip, user=user))
        return answer.status


@pytest.mark.parametrize("event", sorted(EVENTS))
async def test_webhook_grants_on_the_first_request_after_a_stale_connection(
    redis_server: RedisServer, tmp_path: Path, event: str
) -> None:
    port = free_port()
    daemon = Service(
        "webhook",
        {
            "REDIS_URL": redis_server.url,
            "WEBHOOK_LISTEN": f"127.0.0.1:{port}",
            "WEBHOOK_SECRET": SECRET,
            "ALLOWED_NETWORKS": "192.0.2.0/24",
        },
        tmp_path / "webhook",
    )
    daemon.start()
    try:
        # Two requests at once, so the pool holds more than one connection to go stale.
        statuses = await asyncio.gather(*(_post_grant(port, f"192.0.2.{n}") for n in (10, 11)))
        assert statuses == [201, 201]
        EVENTS[event](redis_server)
        assert await _post_grant(port, "192.0.2.12") == 201, daemon.log()
        assert await _post_grant(port, "192.0.2.13") == 201, daemon.log()
    finally:
        assert daemon.stop() == 0
    assert "Redis unavailable" not in daemon.log()


@pytest.mark.parametrize("event", sorted(EVENTS))
async def test_cli_works_at_once_after_the_event(redis_server: RedisServer, event: str) -> None:
    env = clean_env(redis_url=redis_server.url)
    assert run_cli("add", IP, env=env).returncode == 0
    EVENTS[event](redis_server)
    result = run_cli("add", "198.51.100.24", env=env)
    assert result.returncode == 0, result.stderr
