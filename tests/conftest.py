"""Shared fixtures: a real redis-server per test (on a free port), and tool look-up.

In CI (``CI`` set) a missing tool is a failure, never a skip: a green run must mean the
end-to-end paths really ran.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import RedisServer, free_port


def require_tool(name: str) -> str:
    """The path of a program the test needs; skip without it, except in CI where it fails."""
    path = shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.access(p, os.X_OK)), None
    )
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is not installed; .ci/run must install it")
        pytest.skip(f"{name} is not installed")
    return path


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A private redis-server on a free loopback port, stopped after the test."""
    server = RedisServer(require_tool("redis-server"), tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()


__all__ = ["free_port", "require_tool", "socket", "subprocess", "time"]
