"""A real Redis Cluster (3 masters, 3 replicas, ``redis-cli --cluster create``) on loopback.

The core limit tests of test_policy_server run against it unchanged (the same functions, given
the cluster instead of a single redis-server), then what only a cluster can break: decisions for
clients on different nodes in one batch, grants found by the policy server in the client's slot,
and the CLI's list and audit gathered from every master.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio.cluster import RedisCluster

from ratelimit.addresses import IPAddress, parse_ip
from ratelimit.grants import Grants
from ratelimit.limiter import LimitConfig, Limiter, Outcome, Verdict
from ratelimit.store import KeyLayout, Store, StoreUnavailable
from tests import test_policy_server as core
from tests.redis_ha import Cluster
from tests.support import (
    PolicyClient,
    clean_env,
    limit_reply,
    make_settings,
    policy_server,
    require_tool,
    run_cli,
)
from webhook.page.handoff import Handoff
from webhook.page.session import PageSessions


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    require_tool("redis-cli")
    cluster = Cluster(require_tool("redis-server"), tmp_path_factory.mktemp("cluster"))
    try:
        yield cluster.start(masters=3, replicas=1)
    finally:
        cluster.stop()


async def test_core_50_way_race_admits_exactly_n_on_a_cluster(redis_cluster: Cluster) -> None:
    await core.test_50_concurrent_connections_on_one_ip_admit_exactly_n(redis_cluster)


async def test_core_two_daemons_admit_exactly_n_together_on_a_cluster(
    redis_cluster: Cluster, tmp_path: Path
) -> None:
    await core.test_two_daemon_processes_admit_exactly_n_together(redis_cluster, tmp_path)


def _clients(count: int) -> list[str]:
    return [f"198.51.{n // 200}.{n % 200 + 1}" for n in range(count)]


async def test_one_batch_spans_every_master_and_each_client_stays_exact(
    redis_cluster: Cluster,
) -> None:
    settings = make_settings(redis_cluster.url, message_limits="3/1m")
    clients = _clients(60)
    async with policy_server(settings) as running:
        connections = await asyncio.gather(*(running.connect() for _ in clients))

        async def five_messages(connection: PolicyClient, ip: str) -> list[str]:
            return [
                await connection.ask(protocol_state="DATA", client_address=ip) for _ in range(5)
            ]

        answers = await asyncio.gather(
            *(five_messages(c, ip) for c, ip in zip(connections, clients, strict=True))
        )
        for ip, replies in zip(clients, answers, strict=True):
            assert replies[:3] == ["DUNNO"] * 3, ip
            assert replies[3:] == [limit_reply(ip, "3 messages", "1m")] * 2, ip
        await asyncio.gather(*(c.aclose() for c in connections))
        # The clients' logs are spread over the masters: every master held some decisions.
        store = running.store
        assert isinstance(store._client, RedisCluster)
        holders = {
            store._client.get_node_from_key(store.keys.client_log(f"{ip}/32")) for ip in clients
        }
        assert len(holders) == 3
        for ip in clients:
            assert await running.log_size(f"{ip}/32") == 3


async def test_grants_work_and_the_cli_lists_and_audits_every_master(
    redis_cluster: Cluster,
) -> None:
    prefix = "grantcl:"
    settings = make_settings(redis_cluster.url, message_limits="1/1m", key_prefix=prefix)
    granted = _clients(30)[::3]  # ten addresses, in slots on every master
    async with policy_server(settings) as running:
        client = await running.connect()
        for ip in granted:
            assert await client.ask(protocol_state="DATA", client_address=ip) == "DUNNO"
            assert await client.ask(protocol_state="DATA", client_address=ip) != "DUNNO"
        grants = Grants(running.store, settings)
        for ip in granted:
            address = parse_ip(ip)
            assert address is not None
            await grants.grant(
                address,
                user="carol",
                role="staff",
                status="normal",
                source="test",
                max_per_user=None,
            )
        # The policy server finds each grant in the slot of the client's own log.
        for ip in granted:
            assert await client.ask(protocol_state="DATA", client_address=ip) == "DUNNO"
        await client.aclose()
    layout = KeyLayout(prefix)
    nodes = {
        redis_cluster.cli("CLUSTER", "KEYSLOT", layout.grant(ip, f"{ip}/32")) for ip in granted
    }
    assert len(nodes) == len(granted)  # distinct slots, so the list below must gather them
    env = clean_env(redis_url=redis_cluster.url, key_prefix=prefix)
    listed = json.loads(run_cli("list", "--json", env=env).stdout)["items"]
    assert sorted(item["ip"] for item in listed) == sorted(granted)
    shown = run_cli("show", granted[1], "--json", env=env)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["grant"]["user"] == "carol"
    assert json.loads(shown.stdout)["limits"][0]["used"] == 1
    # Each was refused once before its grant: the offender view gathers them from every master.
    top = run_cli("top", "--json", "--last", "50", env=env)
    assert top.returncode == 0, top.stderr
    assert sorted(item["ip"] for item in json.loads(top.stdout)["items"]) == sorted(granted)
    removed = run_cli("remove", granted[0], env=env)
    assert removed.returncode == 0, removed.stderr
    audit = json.loads(run_cli("audit", "--last", "100", "--json", env=env).stdout)["items"]
    assert sorted((e["event"], e["ip"]) for e in audit) == sorted(
        [("grant", ip) for ip in granted] + [("remove", granted[0])]
    )
    assert audit[-1]["event"] == "remove"  # merged by time across the streams


@pytest.fixture
def cluster_to_break(tmp_path: Path) -> Iterator[Cluster]:
    """A cluster of its own: the test kills one of its masters."""
    require_tool("redis-cli")
    cluster = Cluster(require_tool("redis-server"), tmp_path / "cluster")
    try:
        yield cluster.start(masters=3, replicas=1)
    finally:
        cluster.stop()


async def test_a_dead_master_fails_only_its_slots_and_its_replica_takes_over(
    cluster_to_break: Cluster,
) -> None:
    settings = make_settings(cluster_to_break.url, message_limits="5/1h", store_timeout=0.5)
    store = Store.from_settings(settings)
    limiter = Limiter(store, LimitConfig.from_settings(settings))
    addresses = [a for a in (parse_ip(ip) for ip in _clients(30)) if a is not None]
    try:
        assert isinstance(store._client, RedisCluster)
        assert all(v.outcome is Outcome.ACCEPTED for v in await decide_all(limiter, addresses))
        node_of = {
            a: store._client.get_node_from_key(store.keys.client_log(f"{a}/32")) for a in addresses
        }
        # The worst master to lose: the one the client asks for its command table.
        victim = store._client.get_default_node()
        assert victim in node_of.values()
        cluster_to_break.kill(int(victim.port))
        # Within the node timeout (2 s) the cluster has not declared the failure yet: the other
        # masters go on deciding, and only the dead master's clients get StoreUnavailable.
        for _ in range(3):
            replies = await decide_all(limiter, addresses)
            for address, reply in zip(addresses, replies, strict=True):
                if node_of[address] == victim:
                    assert isinstance(reply, StoreUnavailable), (address, reply)
                else:
                    assert isinstance(reply, Verdict), (address, reply)
                    assert reply.outcome is Outcome.ACCEPTED
        # Its replica is promoted; the store finds it without a restart, and the counts it
        # replicated still hold: 5 less what each client had counted are left.
        async with asyncio.timeout(30):
            while True:
                if all(isinstance(r, Verdict) for r in await decide_all(limiter, addresses)):
                    break
                await asyncio.sleep(0.1)
        usage = {a: (await limiter.usage(a))[0].used for a in addresses}
        for address in addresses:
            left = 5 - usage[address]
            verdicts = [await limiter.count_message(address, 1) for _ in range(left + 1)]
            assert [v.outcome for v in verdicts] == [Outcome.ACCEPTED] * left + [Outcome.LIMITED]
    finally:
        await store.aclose()


async def decide_all(limiter: Limiter, addresses: list[IPAddress]) -> list[Any]:
    """One DATA decision for each address, all at once; failures returned, not raised."""
    results: list[Any] = await asyncio.gather(
        *(limiter.count_message(a, 1) for a in addresses), return_exceptions=True
    )
    return results


async def test_page_sessions_work_on_a_cluster(redis_cluster: Cluster) -> None:
    settings = make_settings(redis_cluster.url, key_prefix="pagecl:")
    store = Store.from_settings(settings)
    sessions = PageSessions(store, max_age=1800)
    try:
        handoff = Handoff(
            user="dave", role="staff", status="normal", ip="192.0.2.9", ts=0, sig="ab"
        )
        assert await sessions.claim_handoff(handoff, 60)
        assert not await sessions.claim_handoff(handoff, 60)
        now = time.time()  # the session's key expires relative to it
        session = await sessions.create(handoff, now)
        code = await sessions.show(session, now + 1)
        assert await sessions.peek_code(session.id) == code
        assert await sessions.take_code(session, now + 2) == code
        assert await sessions.take_code(session, now + 3) is None  # single use
        assert await sessions.count_wrong(session) == 1
        loaded = await sessions.load(session.id)
        assert loaded is not None
        assert (loaded.user, loaded.seen, loaded.wrong) == ("dave", now + 3, 1)
        await sessions.end(session.id)
        assert await sessions.load(session.id) is None
    finally:
        await store.aclose()
