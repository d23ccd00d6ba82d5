"""benchmarks/variants/list_log.lua, the measured prototype of a LIST log (BENCHMARKS.md, issue
13): for what it covers (DATA decisions, every limit as long as the longest window) it gives
decide.lua's answers, so the Redis time `benchmarks.lua_cost` measures for it is the time of the
same decisions. A real redis-server; both scripts on their own keys, one call each per batch.
"""

from __future__ import annotations

from collections.abc import Iterator
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
PROTOTYPE = (ROOT / "benchmarks" / "variants" / "list_log.lua").read_text()
HOUR = 3600 * 1_000_000
CLIENTS = ("192.0.2.1", "192.0.2.2", "192.0.2.3")


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
def test_the_prototype_answers_every_data_decision_as_decide_lua(
    direct: redis.Redis, limits: tuple[int, int], batches: list[list[tuple[str, int]]]
) -> None:
    direct.flushdb()
    granted = CLIENTS[2]
    for prefix in ("zset:", "list:"):
        direct.set(KeyLayout(prefix).grant(granted, f"{granted}/32"), "{}", ex=60)
    for batch in batches:
        shipped = decide(direct, SHIPPED, "zset:", limits, batch)
        prototype = decide(direct, PROTOTYPE, "list:", limits, batch)
        assert prototype == shipped, batch
    for who in CLIENTS[:2]:  # the same messages kept (each script has its own TIME), with a TTL
        network = f"{who}/32"
        zset, listed = (
            KeyLayout("zset:").client_log(network),
            KeyLayout("list:").client_log(network),
        )
        # Both scripts' entries are "rcpts:time..."; compare how many, with which recipients.
        members = cast(list[bytes], direct.zrange(zset, 0, "+inf", byscore=True))
        listed_entries = cast(list[bytes], direct.lrange(listed, 1, -1))
        assert sorted(e.split(b":")[0] for e in listed_entries) == sorted(
            m.split(b":")[0] for m in members
        )
        assert (direct.pttl(listed) > 0) == (direct.pttl(zset) > 0)
