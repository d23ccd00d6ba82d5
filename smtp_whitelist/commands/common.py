"""What every operator command shares: exit statuses, usage errors, a store per command, formats."""

from __future__ import annotations

import argparse
import getpass
import os
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ratelimit.addresses import IPAddress, parse_ip
from ratelimit.store import Store
from smtp_whitelist.settings import Settings

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_STORE = 0, 1, 2, 3

# A command: its parsed arguments, the settings and the env file they came from -> exit status.
Command = Callable[[argparse.Namespace, Settings, Path | None], Awaitable[int]]


class UsageError(Exception):
    """Bad command-line input: exit 2 with this line."""


def address_arg(text: str) -> IPAddress:
    address = parse_ip(text)
    if address is None:
        raise UsageError(f"{text!r} is not an IP address")
    return address


def operator() -> str:
    """Who is running the command: the person behind sudo (or doas), else the login name."""
    return os.environ.get("SUDO_USER") or os.environ.get("DOAS_USER") or getpass.getuser()


class open_store:
    """``async with open_store(settings) as store``: a store for one command, closed after."""

    def __init__(self, settings: Settings) -> None:
        self.store = Store.from_settings(settings)

    async def __aenter__(self) -> Store:
        return self.store

    async def __aexit__(self, *exc: object) -> None:
        await self.store.aclose()


def time_text(moment: Any) -> str:
    from ratelimit.grants import rfc3339

    return rfc3339(moment)


def from_us(micros: int) -> datetime:
    return datetime.fromtimestamp(micros / 1_000_000, tz=UTC)


def duration(seconds: int) -> str:
    """``3725`` -> ``1h 2m 5s``: what an operator reads at a glance."""
    hours, rest = divmod(max(seconds, 0), 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{hours}h"] if hours else []
    parts += [f"{minutes}m"] if minutes or hours else []
    return " ".join([*parts, f"{secs}s"])
