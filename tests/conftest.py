"""Shared fixtures: a real redis-server per test (on a free port).

The machinery they use lives in tests/support/ (one of each: service runner, CLI runner,
policy client, request builder, signed-request helper, make_settings).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import RedisServer, require_tool


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A private redis-server on a free loopback port, stopped after the test."""
    server = RedisServer(require_tool("redis-server"), tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()
