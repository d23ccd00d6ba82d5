"""Real distributed Redis set-ups for tests, on loopback: a Redis Cluster and a Sentinel set.

Both follow ../shared/reference/redis-ha-tests.md (set-ups shown to work on this machine): a
fresh directory per run (a stale ``nodes-P.conf`` would rejoin an old cluster, a rewritten
sentinel config keeps its old id), ``repl-diskless-sync-delay 0`` (else a replica's first sync
waits 5 s), cluster ports whose bus port (P+10000) is free too, and readiness checked the way
the clients will see it: ``cluster_state:ok`` with every replica listed in ``CLUSTER SLOTS``;
sentinels that know each other and see the replica with flags exactly ``slave``.
Every process is stopped by its own PID.
"""

from __future__ import annotations

import functools
import random
import socket
import subprocess
from pathlib import Path
from typing import Protocol

from tests.support import wait_for

# How long a set-up may take to become ready before the test fails (measured: cluster 2.6-4.1 s,
# sentinels 2.1-3.2 s on two cores; the margin is for a loaded CI machine).
READY_TIMEOUT = 60.0

# Sentinel: a master unreachable this long is subjectively down; the failover then takes about
# another second (measured 2.2 s in all). Short, so the test runs in seconds.
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 5000


class RedisEndpoint(Protocol):
    """What the core limit tests need of a Redis: its REDIS_URL and redis-cli against it."""

    @property
    def url(self) -> str: ...

    def cli(self, *args: str) -> str: ...


def _free(port: int) -> bool:
    try:
        socket.create_server(("127.0.0.1", port)).close()
    except OSError:
        return False
    return True


def free_ports(count: int, *, bus: bool = False) -> list[int]:
    """``count`` free loopback ports; with ``bus``, P+10000 (the cluster bus) is free too."""
    found: list[int] = []
    while len(found) < count:
        port = random.randrange(20000, 30000)
        if port not in found and _free(port) and (not bus or _free(port + 10000)):
            found.append(port)
    return found


def _pong(port: int) -> bool:
    return cli(port, "PING").strip() == "PONG"


def cli(port: int, *args: str) -> str:
    """redis-cli against a loopback port; its output ("" when nothing answers)."""
    return subprocess.run(
        ["redis-cli", "-h", "127.0.0.1", "-p", str(port), *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    ).stdout


class RedisSet:
    """Processes of one set-up, started in one directory, stopped by PID."""

    def __init__(self, binary: str, directory: Path) -> None:
        self.binary = binary
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.processes: dict[int, subprocess.Popen[bytes]] = {}

    def spawn(self, port: int, *args: str) -> None:
        self.processes[port] = subprocess.Popen(
            [
                self.binary,
                *args,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.directory),
                "--logfile",
                str(self.directory / f"{port}.log"),
                "--save",
                "",
                "--appendonly",
                "no",
                "--repl-diskless-sync-delay",
                "0",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def kill(self, port: int) -> None:
        """SIGKILL, as a crash: nothing is persisted, so nothing is lost that a test relies on."""
        process = self.processes.pop(port)
        process.kill()
        process.wait(timeout=10)

    def stop(self) -> None:
        for port in list(self.processes):
            self.kill(port)

    def log(self, port: int) -> str:
        path = self.directory / f"{port}.log"
        return path.read_text(errors="replace") if path.exists() else ""


class Cluster(RedisSet):
    """``masters`` masters with one replica each, made by ``redis-cli --cluster create``."""

    def start(self, masters: int = 3, replicas: int = 1) -> Cluster:
        self.ports = free_ports(masters * (1 + replicas), bus=True)
        for port in self.ports:
            self.spawn(
                port,
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                f"nodes-{port}.conf",
                "--cluster-node-timeout",
                "2000",
                # Without it a replica's offset stays 0 for ~9 s and CLUSTER SLOTS omits it.
                "--repl-ping-replica-period",
                "1",
            )
        for port in self.ports:
            wait_for(functools.partial(_pong, port), READY_TIMEOUT, f"node {port}")
        subprocess.run(
            [
                "redis-cli",
                "--cluster",
                "create",
                *[f"127.0.0.1:{port}" for port in self.ports],
                "--cluster-replicas",
                str(replicas),
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )

        def ready(port: int) -> bool:
            return "cluster_state:ok" in cli(port, "CLUSTER", "INFO") and cli(
                port, "CLUSTER", "SLOTS"
            ).count("127.0.0.1") == len(self.ports)

        for port in self.ports:
            wait_for(
                functools.partial(ready, port), READY_TIMEOUT, f"cluster ready as seen from {port}"
            )
        return self

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{port}" for port in self.ports[:2])

    def cli(self, *args: str) -> str:
        """redis-cli following redirections (-c), so a key's command reaches its node."""
        return subprocess.run(
            ["redis-cli", "-c", "-h", "127.0.0.1", "-p", str(self.ports[0]), *args],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout.strip()

    def masters(self) -> list[int]:
        """Ports of the nodes that are masters now."""
        return [p for p in self.ports if "role:master" in cli(p, "INFO", "replication")]


class SentinelSet(RedisSet):
    """One master, one replica, three sentinels (``redis-server --sentinel``), quorum 2."""

    SERVICE = "mymaster"

    def start(self) -> SentinelSet:
        self.master, self.replica, *self.sentinels = free_ports(5)
        self.spawn(self.master)
        self.spawn(self.replica, "--replicaof", "127.0.0.1", str(self.master))
        # Sentinels started before the replica's link is up find the replica ~10 s later.
        wait_for(
            lambda: "master_link_status:up" in cli(self.replica, "INFO", "replication"),
            READY_TIMEOUT,
            "the replica's link",
        )
        for port in self.sentinels:
            # A new file per run: sentinels rewrite their config (their id, what they learnt).
            conf = self.directory / f"sentinel-{port}.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {self.directory}\n"
                f"logfile {self.directory / f'{port}.log'}\n"
                f"sentinel monitor {self.SERVICE} 127.0.0.1 {self.master} 2\n"
                f"sentinel down-after-milliseconds {self.SERVICE} {DOWN_AFTER_MS}\n"
                f"sentinel failover-timeout {self.SERVICE} {FAILOVER_TIMEOUT_MS}\n"
            )
            self.processes[port] = subprocess.Popen(
                [self.binary, str(conf), "--sentinel"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )

        def ready(port: int) -> bool:
            return "num-other-sentinels\n2\n" in cli(
                port, "SENTINEL", "MASTER", self.SERVICE
            ) and "flags\nslave\n" in cli(port, "SENTINEL", "REPLICAS", self.SERVICE)

        for port in self.sentinels:
            wait_for(functools.partial(ready, port), READY_TIMEOUT, f"sentinel {port} ready")
        return self

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.sentinels)
        return f"redis+sentinel://{hosts}/{self.SERVICE}"

    def cli(self, *args: str) -> str:
        """redis-cli against the master of now."""
        return cli(self.master_port(), *args).strip()

    def master_port(self) -> int:
        """The master's port as the sentinels report it now."""
        reply = cli(self.sentinels[0], "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.SERVICE)
        return int(reply.split()[1])
