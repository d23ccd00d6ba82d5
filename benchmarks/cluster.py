"""Decisions per second on a Redis Cluster, and per Redis core, against a single Redis.

``.venv/bin/python -m benchmarks.cluster [--seconds 5] [--processes 2] [--concurrency 200]``

Starts its own redis-server with one replica and its own 3-master, 3-replica cluster on loopback (as
the tests do, :mod:`tests.redis_ha`), then drives each with the store and limiter the policy
server uses (DATA decisions over 10,000 client IPs, limits so high nobody is limited; the
policy protocol is left out, so the figure is the Redis side's). It reports decisions/s, the
Redis CPU per decision summed over the masters (``INFO cpu``), hence decisions per Redis
core-second, and Redis memory per tracked client; with ``--failover``, how long decisions fail
when a cluster master is killed. Every run is bounded in seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import multiprocessing
import random
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import redis

from ratelimit.limiter import LimitConfig, Limiter
from ratelimit.limits import Limit
from ratelimit.store import Store, StoreUnavailable
from smtp_whitelist.settings import Settings
from tests.redis_ha import Cluster, RedisSet, free_ports

CLIENTS = 10_000
MEMORY_MESSAGES = 3
PREFIX = "bench:"
UNLIMITED = LimitConfig((Limit(1_000_000, 3600),), (Limit(1_000_000, 3600),), 32, 64, ())


def _addresses() -> list[ipaddress.IPv4Address]:
    base = int(ipaddress.IPv4Address("10.0.0.0"))
    return [ipaddress.IPv4Address(base + n) for n in range(CLIENTS)]


async def _drive(url: str, seconds: float, concurrency: int, seed: int) -> int:
    """Decisions made in ``seconds`` by ``concurrency`` callers sharing one store."""
    store = Store.from_settings(Settings(redis_url=url, key_prefix=PREFIX, store_timeout=5))
    limiter = Limiter(store, UNLIMITED)
    addresses = _addresses()
    rng = random.Random(seed)
    deadline = time.monotonic() + seconds
    made = 0

    async def caller() -> None:
        nonlocal made
        while time.monotonic() < deadline:
            await limiter.count_message(rng.choice(addresses), 1)
            made += 1

    await limiter.count_message(addresses[0], 1)  # scripts loaded before the clock starts
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    await store.aclose()
    return made


async def _fill(url: str, messages: int) -> None:
    """Every client sends ``messages`` messages (for memory per tracked client)."""
    store = Store.from_settings(Settings(redis_url=url, key_prefix="mem:", store_timeout=5))
    limiter = Limiter(store, UNLIMITED)
    for chunk in range(0, CLIENTS, 500):
        await asyncio.gather(
            *(
                limiter.count_message(address, 1)
                for address in _addresses()[chunk : chunk + 500]
                for _ in range(messages)
            )
        )
    await store.aclose()


def _process(url: str, seconds: float, concurrency: int, seed: int) -> int:
    return asyncio.run(_drive(url, seconds, concurrency, seed))


@dataclass
class Figures:
    decisions: int
    seconds: float
    redis_cpu: float  # seconds, summed over the masters
    memory_per_client: float  # bytes, a client that sent MEMORY_MESSAGES messages

    def line(self, name: str) -> str:
        rate = self.decisions / self.seconds
        per_core = self.decisions / self.redis_cpu if self.redis_cpu else float("nan")
        return (
            f"{name:8} {rate:10,.0f} decisions/s   {1e6 * self.redis_cpu / self.decisions:5.1f}"
            f" µs Redis CPU each = {per_core:9,.0f} decisions per Redis core-second"
            f"   {self.memory_per_client:4.0f} bytes per client ({MEMORY_MESSAGES} messages)"
        )


def _masters(ports: list[int]) -> list[redis.Redis]:
    nodes = [redis.Redis(host="127.0.0.1", port=p) for p in ports]
    return [n for n in nodes if n.info("replication")["role"] == "master"]


def _cpu(nodes: list[redis.Redis]) -> float:
    return sum(
        float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
        for info in (n.info("cpu") for n in nodes)
    )


def _memory(nodes: list[redis.Redis]) -> int:
    """Memory the data takes: used_memory without the replication backlog and the replicas'
    output buffers, which fill up to fixed sizes whatever the number of clients."""
    total = 0
    for node in nodes:
        info = node.info("memory")
        total += int(info["used_memory"]) - int(info["mem_replication_backlog"])
        total -= int(info["mem_clients_slaves"])
    return total


def measure(url: str, ports: list[int], seconds: float, processes: int, conc: int) -> Figures:
    nodes = _masters(ports)
    memory_before = _memory(nodes)
    asyncio.run(_fill(url, MEMORY_MESSAGES))
    time.sleep(1)  # the replicas' output buffers drain (they count in used_memory meanwhile)
    per_client = (_memory(nodes) - memory_before) / CLIENTS
    cpu_before = _cpu(nodes)
    started = time.monotonic()
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        made = pool.starmap(_process, [(url, seconds, conc, seed) for seed in range(processes)])
    elapsed = time.monotonic() - started
    cpu = _cpu(nodes) - cpu_before
    for node in nodes:
        node.close()
    # Process start-up is in `elapsed`; the callers ran `seconds` each, in parallel.
    return Figures(sum(made), min(elapsed, seconds), cpu, per_client)


async def _failover_gap(cluster: Cluster) -> tuple[float, int]:
    """Decide for 60 clients every 20 ms, ``kill -9`` one master after a second; the seconds
    from the kill until every decision succeeds again, and how many failed meanwhile."""
    settings = Settings(redis_url=cluster.url, key_prefix="fail:", message_limits="100000/1h")
    store = Store.from_settings(settings)
    limiter = Limiter(store, LimitConfig.from_settings(settings))
    addresses = _addresses()[:60]
    loop = asyncio.get_running_loop()
    killed_at: float | None = None
    last_failure, failed, started = 0.0, 0, loop.time()
    while loop.time() - started < 20:
        if killed_at is None and loop.time() - started > 1:
            cluster.kill(cluster.masters()[0])
            killed_at = loop.time()
        replies = await asyncio.gather(
            *(limiter.count_message(a, 1) for a in addresses), return_exceptions=True
        )
        bad = sum(isinstance(r, StoreUnavailable) for r in replies)
        if bad:
            failed, last_failure = failed + bad, loop.time()
        elif killed_at is not None and loop.time() - max(last_failure, killed_at) > 3:
            break  # three clean seconds after the outage
        await asyncio.sleep(0.02)
    await store.aclose()
    assert killed_at is not None
    return max(last_failure - killed_at, 0.0), failed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=200, help="callers per process")
    parser.add_argument(
        "--failover", action="store_true", help="also kill a cluster master under decisions"
    )
    args = parser.parse_args()
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    with tempfile.TemporaryDirectory(prefix="swl-bench-cluster-") as scratch:
        single = RedisSet(binary, Path(scratch) / "single")
        cluster = Cluster(binary, Path(scratch) / "cluster")
        try:
            port, replica = free_ports(2)
            single.spawn(port)
            single.spawn(replica, "--replicaof", "127.0.0.1", str(port))  # like the cluster's
            time.sleep(0.5)
            cluster.start(masters=3, replicas=1)
            figures = {
                "single": measure(
                    f"redis://127.0.0.1:{port}/0",
                    [port, replica],
                    args.seconds,
                    args.processes,
                    args.concurrency,
                ),
                "cluster": measure(
                    cluster.url, cluster.ports, args.seconds, args.processes, args.concurrency
                ),
            }
            gap = asyncio.run(_failover_gap(cluster)) if args.failover else None
        finally:
            single.stop()
            cluster.stop()
    print(
        f"{CLIENTS:,} client IPs, {args.processes} processes x {args.concurrency} callers,"
        f" {args.seconds:g} s each, DATA decisions, nobody limited"
    )
    for name, figure in figures.items():
        print(figure.line(name))
    if gap is not None:
        print(
            f"cluster failover: decisions fail for {gap[0]:.2f}s after kill -9 of a master"
            f" ({gap[1]} decisions answered ON_STORE_ERROR), then all succeed again"
        )


if __name__ == "__main__":
    main()
