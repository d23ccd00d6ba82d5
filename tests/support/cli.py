"""The one way tests run ``smtp-whitelist COMMAND`` as an operator would: the console script
installed beside this interpreter, with settings in ``SMTP_WHITELIST_*`` variables."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

SMTP_WHITELIST = str(Path(sys.executable).with_name("smtp-whitelist"))

# How long one operator command may take before the test calls it hung.
CLI_TIMEOUT = 30.0


def clean_env(**settings: str) -> dict[str, str]:
    """The environment for a CLI subprocess: ours without any SMTP_WHITELIST_ name (nor a
    NOTIFY_SOCKET meant for us), plus ``settings`` (names without the prefix, any case)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.upper().startswith("SMTP_WHITELIST_") and k != "NOTIFY_SOCKET"
    }
    env.update({f"SMTP_WHITELIST_{name.upper()}": value for name, value in settings.items()})
    return env


def run_cli(
    *args: str, env: dict[str, str], timeout: float = CLI_TIMEOUT, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the ``smtp-whitelist`` console script; never raises on a non-zero exit."""
    return subprocess.run(
        [SMTP_WHITELIST, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=cwd,
    )


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


async def run_cli_async(*args: str, env: dict[str, str]) -> Result:
    """:func:`run_cli` without blocking the event loop (a server may be running in it)."""
    process = await asyncio.create_subprocess_exec(
        SMTP_WHITELIST,
        *args,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    async with asyncio.timeout(CLI_TIMEOUT):
        out, err = await process.communicate()
    assert process.returncode is not None
    return Result(process.returncode, out.decode(), err.decode())
