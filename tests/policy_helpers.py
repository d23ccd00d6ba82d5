"""Helpers for the policy-server tests: a realistic Postfix request, an in-process server built
the way ``main`` builds it, a protocol client over asyncio streams, and a ``policyd`` process.

Everything talks over real sockets to a real redis-server (the ``redis_server`` fixture).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from policyd.decision import PolicyDecider
from policyd.protocol import encode_request, parse_reply
from policyd.server import ConnectionLimits, PolicyServer
from ratelimit.limiter import LimitConfig, Limiter
from ratelimit.listen import ListenAddress
from ratelimit.store import Store
from smtp_whitelist.settings import Settings
from tests.helpers import POSTFIX_37_REQUEST, free_port, port_open, wait_for

SMTP_WHITELIST = str(Path(sys.executable).with_name("smtp-whitelist"))

# A LIMIT_REPLY that shows every placeholder, so a test can read which limit refused.
TEST_LIMIT_REPLY = "450 4.7.1 {ip} is over {limit} per {window}"

# How long a test waits for one answer before calling the server dead.
ANSWER_TIMEOUT = 5.0


def postfix_request(**overrides: str) -> dict[str, str]:
    """The Postfix 3.7 request with some attributes changed (``None``-free, order kept)."""
    request = dict(POSTFIX_37_REQUEST)
    request.update(overrides)
    return request


def make_settings(redis_url: str, **values: Any) -> Settings:
    """Settings for one test: its own Redis and a unique KEY_PREFIX, plus ``values``."""
    values.setdefault("key_prefix", f"t{uuid.uuid4().hex[:8]}:")
    values.setdefault("limit_reply", TEST_LIMIT_REPLY)
    values.setdefault("message_limits", "")
    values.setdefault("recipient_limits", "")
    return Settings(redis_url=redis_url, **values)


def limit_reply(ip: str, limit: str, window: str) -> str:
    return TEST_LIMIT_REPLY.format(ip=ip, limit=limit, window=window)


LOOPBACK_V4 = ListenAddress("127.0.0.1", 0, None)
LOOPBACK_V6 = ListenAddress("::1", 0, None)


@dataclass
class RunningServer:
    """An in-process policy server and what it was built from."""

    server: PolicyServer
    store: Store
    limiter: Limiter
    settings: Settings

    @property
    def address(self) -> ListenAddress:
        """The first bound address."""
        return self.server.bound[0]

    async def connect(self, address: ListenAddress | None = None) -> PolicyClient:
        return await PolicyClient.connect(address or self.address)

    async def log_size(self, network: str) -> int:
        """Entries in the client network's log in Redis (0 when the key does not exist)."""
        return int(await self.store._client.zcard(self.store.keys.client_log(network)))

    async def keys(self) -> list[str]:
        """Every key under this test's prefix."""
        pattern = self.store.keys.prefix + "*"
        return sorted([k.decode() async for k in self.store._client.scan_iter(pattern)])


@contextlib.asynccontextmanager
async def policy_server(
    settings: Settings, listen: Sequence[ListenAddress] = (LOOPBACK_V4,)
) -> AsyncIterator[RunningServer]:
    """A PolicyServer wired as ``smtp-whitelist policyd`` wires it, on ``listen`` (port 0 ok)."""
    store = Store.from_settings(settings)
    limiter = Limiter(store, LimitConfig.from_settings(settings))
    decider = PolicyDecider.from_settings(limiter, settings)
    limits = ConnectionLimits(
        settings.max_connections, settings.idle_timeout, settings.request_timeout
    )
    server = PolicyServer(decider, limits)
    await server.start(listen)
    try:
        yield RunningServer(server, store, limiter, settings)
    finally:
        await server.stop(grace=1.0)
        await store.aclose()


class PolicyClient:
    """Speaks the policy protocol as Postfix does: one request, wait for its answer, repeat."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, address: ListenAddress) -> PolicyClient:
        if address.path is not None:
            reader, writer = await asyncio.open_unix_connection(address.path)
        else:
            reader, writer = await asyncio.open_connection(address.host, address.port)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def reply(self) -> str:
        """The next reply's action (fails the test if none comes in time)."""
        data = await asyncio.wait_for(self.reader.readuntil(b"\n\n"), ANSWER_TIMEOUT)
        action = parse_reply(data)
        assert action is not None, data
        return action

    async def ask(self, **attributes: str) -> str:
        """Send the Postfix request with ``attributes`` changed; return the action."""
        await self.send(encode_request(postfix_request(**attributes)))
        return await self.reply()

    async def closed(self) -> bytes:
        """Wait until the server closes the connection; return what it sent before (if any)."""
        received = b""
        async with asyncio.timeout(ANSWER_TIMEOUT):
            while True:
                try:
                    chunk = await self.reader.read(65536)
                except (ConnectionResetError, BrokenPipeError):
                    return received
                if not chunk:
                    return received
                received += chunk

    async def aclose(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


async def assert_second_message_limited(address: ListenAddress, ip: str, reply: str) -> None:
    """Under a 1/1h message limit: ``ip``'s first message passes, its second gets ``reply``."""
    client = await PolicyClient.connect(address)
    try:
        assert await client.ask(protocol_state="DATA", client_address=ip) == "DUNNO"
        limited = reply.format(ip=ip, limit="1 messages", window="1h")
        assert await client.ask(protocol_state="DATA", client_address=ip) == limited
    finally:
        await client.aclose()


async def ask_once(address: ListenAddress, **attributes: str) -> str:
    """One connection, one request, one answer."""
    client = await PolicyClient.connect(address)
    try:
        return await client.ask(**attributes)
    finally:
        await client.aclose()


def clean_env(**settings: str) -> dict[str, str]:
    """The environment for a CLI subprocess: ours without any SMTP_WHITELIST_ name, plus
    ``settings`` (names without the prefix)."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("SMTP_WHITELIST_")}
    env.update({f"SMTP_WHITELIST_{name.upper()}": value for name, value in settings.items()})
    return env


class PolicydProcess:
    """``smtp-whitelist policyd`` in a subprocess on a free loopback port; stderr to a file."""

    def __init__(self, directory: Path, **settings: str) -> None:
        self.port = free_port()
        settings.setdefault("policy_listen", f"127.0.0.1:{self.port}")
        self.address = ListenAddress("127.0.0.1", self.port, None)
        self.log_path = directory / f"policyd-{self.port}.log"
        self.env = clean_env(**settings)
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> PolicydProcess:
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [SMTP_WHITELIST, "policyd"],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        wait_for(
            lambda: self._alive() and port_open("127.0.0.1", self.port),
            what=f"policyd on port {self.port} (log: {self.log_text()})",
        )
        return self

    def _alive(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"policyd exited {self.process.returncode}: {self.log_text()}")
        return True

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def terminate(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)

    def wait(self, timeout: float) -> int:
        assert self.process is not None
        return self.process.wait(timeout=timeout)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it does not go (tests that check the exit do it themselves)."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run the ``smtp-whitelist`` console script; never raises on a non-zero exit."""
    return subprocess.run(
        [SMTP_WHITELIST, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def elapsed(start: float) -> float:
    return time.monotonic() - start
