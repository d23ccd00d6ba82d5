"""The programs a test needs: found on this machine, or a skip (a failure in CI)."""

from __future__ import annotations

import os
import shutil

import pytest


def require_tool(name: str) -> str:
    """The path of a program the test needs; skip without it, except in CI where it fails.

    In CI (``CI`` set) a missing tool is a failure, never a skip: a green run must mean the
    end-to-end paths really ran.
    """
    path = shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.access(p, os.X_OK)), None
    )
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is not installed; .ci/run must install it")
        pytest.skip(f"{name} is not installed")
    return path
