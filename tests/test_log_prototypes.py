"""The measured prototypes of other client logs in benchmarks/variants/ (BENCHMARKS.md, issue 13):
a LIST, a list with its sums in a string, one packed string. For what they cover (DATA
decisions, every limit as long as the longest window) each gives decide.lua's answers and keeps
the same messages, so the Redis time and instructions the benchmarks measure for them are those
of the same decisions. A real redis-server; each script on its own keys, one call per batch.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ratelimit.keys import KeyLayout
from tests.support import RedisServer

ROOT = Path(__file__).parent.parent
SHIPPED = (ROOT / "ratelimit" / "lua" / "decide.lua").read_text()
VARIANTS = ROOT / "benchmarks" / "variants"
HOUR = 3600 * 1_000_000
CLIENTS = ("192.0.2.1", "192.0.2.2", "192.0.2.3")


def list_after_sums(direct: redis.Redis, key: str) -> list[bytes]:
    """list_log.lua: element 1 holds the sums, then one "rcpts:time" per message."""
    return cast(list[bytes], direct.lrange(key, 1, -1))


def whole_list(direct: redis.Redis, key: str) -> list[bytes]:
    """split_log.lua: the list holds only the entries (the sums are in key + ':s')."""
    return cast(list[bytes], direct.lrange(key, 0, -1))


def packed_string(direct: redis.Redis, key: str) -> list[bytes]:
    """string_log.lua: a 12-byte header, then (time µs as a double, rcpts as 4 bytes) each."""
    value = cast(bytes | None, direct.get(key)) or b""
    return [b"%d:%d" % (rcpts, at) for at, rcpts in struct.iter_unpack("<dI", value[12:])]


# Each prototype, and how to read its entries back as "rcpts:time".
PROTOTYPES: dict[str, Callable[[redis.Redis, str], list[bytes]]] = {
    "list_log.lua": list_after_sums,
    "split_log.lua": whole_list,
    "string_log.lua": packed_string,
}


@pytest.fixture
def direct(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url)
    yield client
    client.close()


def decide(
    client: redis.Redis, script: str, prefix: str, limits: tuple[int, int], batch: list[Any]
) -> list[Any]:
    keys_layout = KeyLayout(prefix)
    keys: list[str] = []
    args: list[Any] = []
    for who, rcpts in batch:
        network = f"{who}/32"
        keys += [
            keys_layout.client_log(network),
            keys_layout.grant(who, network),
            keys_layout.offender(who, network),
        ]
        args += ["count", rcpts]
    shared = [1, limits[0], HOUR, 1, limits[1], HOUR, 1000]
    replies: list[Any] = client.eval(script, len(keys), *keys, *shared, *args)
    return replies


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    limits=st.tuples(st.integers(1, 6), st.integers(1, 15)),
    batches=st.lists(
        st.lists(st.tuples(st.sampled_from(CLIENTS), st.integers(0, 4)), min_size=1, max_size=5),
        min_size=1,
        max_size=12,
    ),
)
@pytest.mark.parametrize("variant", sorted(PROTOTYPES))
def test_the_prototype_answers_every_data_decision_as_decide_lua(
    direct: redis.Redis,
    variant: str,
    limits: tuple[int, int],
    batches: list[list[tuple[str, int]]],
) -> None:
    prototype = (VARIANTS / variant).read_text()
    entries_of = PROTOTYPES[variant]
    direct.flushdb()
    granted = CLIENTS[2]
    for prefix in ("zset:", "other:"):
        direct.set(KeyLayout(prefix).grant(granted, f"{granted}/32"), "{}", ex=60)
    for batch in batches:
        shipped = decide(direct, SHIPPED, "zset:", limits, batch)
        answers = decide(direct, prototype, "other:", limits, batch)
        assert answers == shipped, batch
    for who in CLIENTS[:2]:  # the same messages kept (each script has its own TIME), with a TTL
        network = f"{who}/32"
        zset, other = (
            KeyLayout("zset:").client_log(network),
            KeyLayout("other:").client_log(network),
        )
        # Every script's entries read as "rcpts:time..."; compare how many, with which recipients.
        members = cast(list[bytes], direct.zrange(zset, 0, "+inf", byscore=True))
        assert sorted(e.split(b":")[0] for e in entries_of(direct, other)) == sorted(
            m.split(b":")[0] for m in members
        )
        assert (direct.pttl(other) > 0) == (direct.pttl(zset) > 0)
