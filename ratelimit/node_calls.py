"""Commands written straight onto one node's connection: many in one write, replies in order.

The store uses this for the two things redis-py's own calls do badly here: a batch of decisions
on a Redis Cluster (grouped per node, each group one write; a cluster pipeline refuses EVALSHA),
and a write followed by ``WAIT`` (which only counts the writes of its own connection, so both
must go on the same one, whichever client kind it is).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

import redis.asyncio as aioredis
from hiredis import pack_command
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.exceptions import (
    AskError,
    ClusterDownError,
    ConnectionError,
    RedisError,
    ResponseError,
    TryAgainError,
)

Command = tuple[Any, ...]

# Replies that mean "not here (any more)": the slot moved or is migrating, or its node is being
# replaced. The cluster client follows these itself and refreshes its slot map.
REDIRECTS = (AskError, TryAgainError, ClusterDownError)


async def first_slot_map(client: RedisCluster) -> None:
    """Load the slot map once. Later reloads (after a node failed) are the store's, in the
    background: ``RedisCluster.initialize`` would also re-ask its default node for the command
    table, and fail every call while that node is the one that died."""
    if not client.nodes_manager.slots_cache:
        await client.initialize()


async def roundtrip(
    connection: Any, commands: Sequence[Command], replies: list[Any] | None = None
) -> list[Any]:
    """Write ``commands`` in one packed write; their replies in order (appended to ``replies``
    when given, so a caller can tell after a failure whether any reply came). An error reply
    (NOSCRIPT, MOVED) is returned as its exception, so the caller can redo just that command; a
    broken connection raises, and the caller must then drop the connection (replies may be in
    flight).
    """
    await connection.send_packed_command(
        b"".join([pack_command(command) for command in commands]), check_health=False
    )
    replies = [] if replies is None else replies
    for _ in commands:
        try:
            replies.append(await connection.read_response(disable_decoding=True))
        except ResponseError as error:
            replies.append(error)
    return replies


@contextlib.asynccontextmanager
async def connection_for(client: aioredis.Redis | RedisCluster, key: str) -> AsyncIterator[Any]:
    """A connection to the node that holds ``key`` (the only node, unless a cluster), lent for
    one exchange. The caller bounds the exchange by its own deadline, so any socket timeout is
    lifted meanwhile (``WAIT`` may take longer than STORE_TIMEOUT) and put back before the
    connection returns to its pool. On any failure the connection is closed first.
    """
    node: ClusterNode | None = None
    if isinstance(client, RedisCluster):
        await first_slot_map(client)
        node = client.get_node_from_key(key)
        if node is None:  # pragma: no cover - get_node_from_key raises for an uncovered slot
            raise ClusterDownError(f"no node holds {key!r}")
        connection = node.acquire_connection()
    else:
        connection = await client.connection_pool.get_connection()  # type: ignore[no-untyped-call]
    socket_timeout, connection.socket_timeout = connection.socket_timeout, None
    try:
        yield connection
    except BaseException:
        await connection.disconnect(nowait=True)
        raise
    finally:
        connection.socket_timeout = socket_timeout
        if node is not None:
            node.release(connection)
        else:
            await client.connection_pool.release(connection)  # type: ignore[union-attr]


async def execute_on_nodes(
    client: RedisCluster, commands: Sequence[tuple[str, Command]]
) -> list[Any]:
    """Run ``(key, command)`` pairs on a cluster: one write per node that holds any of the keys,
    all nodes at once. Replies come back in the commands' order.

    A command whose node failed gets that node's error as its reply, so decisions on the other
    nodes still stand (the caller then reloads the slot map, to find a promoted replica). A
    redirected command (its slot moved since the slot map was read, or is being taken over) is
    run once more through the client, which follows the redirection; if that fails too, the
    failure is that command's reply alone.
    """
    await first_slot_map(client)
    groups: dict[str, list[int]] = {}
    for index, (key, _) in enumerate(commands):
        node = client.get_node_from_key(key)
        if node is None:  # pragma: no cover - get_node_from_key raises for an uncovered slot
            raise ClusterDownError(f"no node holds {key!r}")
        groups.setdefault(node.name, []).append(index)
    replies: list[Any] = [None] * len(commands)

    async def on_node(indices: list[int]) -> None:
        try:
            async with connection_for(client, commands[indices[0]][0]) as connection:
                answers = await roundtrip(connection, [commands[i][1] for i in indices])
        except (ConnectionError, OSError, TimeoutError) as error:
            answers = [error] * len(indices)
        for i, answer in zip(indices, answers, strict=True):
            replies[i] = answer

    await asyncio.gather(*(on_node(indices) for indices in groups.values()))
    for i, reply in enumerate(replies):
        if isinstance(reply, REDIRECTS):
            try:
                replies[i] = await client.execute_command(*commands[i][1])
            except (RedisError, OSError, TimeoutError) as error:
                replies[i] = error
    return replies
