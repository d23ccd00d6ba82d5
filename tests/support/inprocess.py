"""The policy server in the test's own event loop, built by smtp_whitelist.wiring as the
service builds it."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from policyd.decision import PolicyDecider
from policyd.server import PolicyServer
from ratelimit.limiter import Limiter
from ratelimit.listen import ListenAddress
from ratelimit.store import Store
from smtp_whitelist.settings import Settings
from smtp_whitelist.wiring import build_policy
from tests.support.policy import PolicyClient

LOOPBACK_V4 = ListenAddress("127.0.0.1", 0, None)
LOOPBACK_V6 = ListenAddress("::1", 0, None)


@dataclass
class RunningServer:
    """An in-process policy server and what it was built from."""

    server: PolicyServer
    decider: PolicyDecider
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
        """Entries in the client network's log in Redis (0 when the key does not exist): its
        members scored 0 or more, as decide.lua keeps its running sums below zero."""
        log = self.store.keys.client_log(network)
        return int(await self.store._client.zcount(log, 0, "+inf"))

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
    policy = build_policy(settings, store)
    server = policy.server
    await server.start(listen)
    try:
        yield RunningServer(server, policy.decider, store, policy.limiter, settings)
    finally:
        await server.stop(grace=1.0)
        await store.aclose()
