"""Building the Redis client a ``REDIS_URL`` names: one server, a Sentinel-managed master, or a
Redis Cluster.

``redis://``, ``rediss://`` and ``unix://`` go to redis-py's own URL parser, as before.
``redis+sentinel://[user:password@]host:port[,host:port...]/SERVICE[/DB]`` asks the sentinels for
the master of SERVICE whenever a connection is made, so after a failover the next connection goes
to the new master without a restart. ``redis+cluster://[user:password@]host:port[,...]`` builds a
:class:`redis.asyncio.RedisCluster` from those start-up nodes; it learns the rest itself.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError

SENTINEL_SCHEME = "redis+sentinel://"
CLUSTER_SCHEME = "redis+cluster://"
PLAIN_SCHEMES = ("redis://", "rediss://", "unix://")

_HOST_PORT = re.compile(r"\[([0-9A-Fa-f:.]+)\]:(\d{1,5})|([^:\[\]/,@]+):(\d{1,5})")
_SERVICE = re.compile(r"[A-Za-z0-9_.\-]{1,64}")


@dataclass(frozen=True, slots=True)
class HaUrl:
    """A parsed ``redis+sentinel://`` or ``redis+cluster://`` URL."""

    kind: str  # "sentinel" or "cluster"
    hosts: tuple[tuple[str, int], ...]
    username: str | None
    password: str | None
    service: str = ""  # Sentinel only: the monitored master's name
    db: int = 0  # Sentinel only; a cluster has database 0 alone


def parse_redis_url(url: str) -> HaUrl | None:
    """The parts of a Sentinel or Cluster URL; None for a plain one. Raises ValueError."""
    if url.startswith(PLAIN_SCHEMES):
        return None
    if url.startswith(SENTINEL_SCHEME):
        kind, rest = "sentinel", url[len(SENTINEL_SCHEME) :]
    elif url.startswith(CLUSTER_SCHEME):
        kind, rest = "cluster", url[len(CLUSTER_SCHEME) :]
    else:
        raise ValueError(
            "must start with redis://, rediss://, unix://, redis+sentinel:// or redis+cluster://"
        )
    username = password = None
    if "@" in rest:
        credentials, rest = rest.rsplit("@", 1)
        user_part, colon, password_part = credentials.partition(":")
        username = unquote(user_part) or None
        password = unquote(password_part) if colon else None
    hostlist, _, path = rest.partition("/")
    hosts: list[tuple[str, int]] = []
    for item in hostlist.split(","):
        match = _HOST_PORT.fullmatch(item.strip())
        if match is None:
            raise ValueError(f"{item.strip()!r} is not host:port")
        port = int(match.group(2) or match.group(4))
        if not 0 < port < 65536:
            raise ValueError(f"{item.strip()!r}: port must be 1 to 65535")
        hosts.append((match.group(1) or match.group(3), port))
    parts = [p for p in path.split("/") if p]
    if kind == "cluster":
        if parts:
            raise ValueError("a cluster URL has no path (a cluster has database 0 only)")
        return HaUrl(kind, tuple(hosts), username, password)
    if not parts or len(parts) > 2 or not _SERVICE.fullmatch(parts[0]):
        raise ValueError("a sentinel URL ends in /SERVICE or /SERVICE/DB (the master's name)")
    if len(parts) == 2 and not parts[1].isdigit():
        raise ValueError(f"database {parts[1]!r} is not a number")
    db = int(parts[1]) if len(parts) == 2 else 0
    return HaUrl(kind, tuple(hosts), username, password, parts[0], db)


async def close_client(client: aioredis.Redis | RedisCluster) -> None:
    """Close the client and, for a Sentinel-managed one, its connections to the sentinels."""
    await client.aclose()
    manager = getattr(getattr(client, "connection_pool", None), "sentinel_manager", None)
    if isinstance(manager, Sentinel):
        await manager.aclose()


def build_client(url: str, timeout: float, max_connections: int) -> aioredis.Redis | RedisCluster:
    """The client for ``url``; every connection is made lazily and bounded by ``timeout``.

    A command is retried once, at once, only when its connection turns out closed (a kept
    connection Redis dropped while idle); never with a backoff: redis-py's retries with
    ``master_for`` kept dialing a dead master's address for seconds (redis-py issue 3874) and
    would hold a policy decision past STORE_TIMEOUT. The store's circuit breaker retries
    instead, by asking again every probe interval, and each new connection asks the sentinels
    (or the cluster's slot map) anew.
    """
    common: dict[str, Any] = {
        # No socket timeout: every call is bounded by STORE_TIMEOUT in Store.call() or the
        # batch's deadline. With one, redis-py writes each command under asyncio.wait_for,
        # which on Python 3.11 loses a cancellation arriving as the write completes
        # (CPython gh-86296), so the store's own deadline could expire in silence.
        "socket_timeout": None,
        "socket_connect_timeout": timeout,
        "decode_responses": False,
    }
    once_if_closed = Retry(NoBackoff(), 1, supported_errors=(ConnectionError,))
    ha = parse_redis_url(url)
    if ha is None:
        return aioredis.from_url(
            url,
            max_connections=max_connections,
            health_check_interval=0,
            retry=once_if_closed,
            retry_on_timeout=False,
            **common,
        )
    if ha.kind == "sentinel":
        sentinels = Sentinel(  # type: ignore[no-untyped-call]
            list(ha.hosts),
            # The sentinels themselves are asked without credentials (their own requirepass is
            # not supported); the credentials are the master's. They are asked only while a
            # connection is made, one after the other: a hung one must not hold up the rest.
            sentinel_kwargs={
                "socket_timeout": timeout,
                "socket_connect_timeout": timeout,
                "retry": Retry(NoBackoff(), 0),
            },
        )
        client: aioredis.Redis = sentinels.master_for(
            ha.service,
            db=ha.db,
            username=ha.username,
            password=ha.password,
            max_connections=max_connections,
            retry=once_if_closed,
            **common,
        )
        return client
    return RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in ha.hosts],
        username=ha.username,
        password=ha.password,
        max_connections=max_connections,
        # One retry after the client refreshed its slot map (a failover or a MOVED slot).
        retry=Retry(NoBackoff(), 1),
        **common,
    )
