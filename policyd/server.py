"""The asyncio policy server: listeners, connections, their limits and timeouts, shutdown.

It only moves bytes: :mod:`policyd.protocol` parses them and the ``answer`` callable it is
given makes each decision (at once, or by calling back when Redis has answered). One
``asyncio.Protocol`` per connection (cheaper than streams on the hot path); requests on one
connection are answered in order, one at a time, as Postfix expects.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from policyd.connection import PolicyConnection
from policyd.protocol import PolicyRequest
from ratelimit.listen import ListenAddress, bind_listeners

log = logging.getLogger(__name__)

# Gets a decision's action once Redis has answered; None: the decision failed (logged), so no
# reply is sent and the connection is closed.
Later = Callable[[str | None], None]
# The decision: ``answer(request, later)`` returns the action, or None and calls ``later(action)``
# once Redis has answered.
Answer = Callable[[PolicyRequest, Later], str | None]

# Postfix opens one connection per smtpd process; hundreds may connect at once after a reload,
# and the kernel's default backlog (often 128) would make some wait for a SYN retry.
LISTEN_BACKLOG = 1024
# Refused connections are logged at most this often, with a count, so a flood does not become a
# flood of log lines as well.
REFUSAL_LOG_INTERVAL = 10.0
# Mode of a UNIX socket: the daemon and Postfix (through the daemon's group) may connect.
UNIX_SOCKET_MODE = 0o660


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """MAX_CONNECTIONS, IDLE_TIMEOUT and REQUEST_TIMEOUT (docs/interface.md)."""

    max_connections: int
    idle_timeout: float
    request_timeout: float


class PolicyServer:
    """Listens on every configured address and serves policy connections."""

    def __init__(self, answer: Answer, limits: ConnectionLimits) -> None:
        self.answer = answer
        self.limits = limits
        self.connections: set[PolicyConnection] = set()
        self.listeners: list[asyncio.Server] = []
        self.unix_paths: list[str] = []
        self.draining = False
        self._refused = 0
        self._refusal_logged_at = 0.0
        self._all_closed = asyncio.Event()
        self._all_closed.set()

    def admit(self, connection: PolicyConnection) -> bool:
        """MAX_CONNECTIONS: refuse at once (and say so, now and then) when full or stopping."""
        if self.draining:
            return False
        if len(self.connections) >= self.limits.max_connections:
            self._refused += 1
            now = time.monotonic()
            if now - self._refusal_logged_at >= REFUSAL_LOG_INTERVAL:
                log.warning(
                    "refused %d policy connection(s): MAX_CONNECTIONS=%d reached (latest from %s)",
                    self._refused,
                    self.limits.max_connections,
                    connection.peer,
                )
                self._refused = 0
                self._refusal_logged_at = now
            return False
        self.connections.add(connection)
        self._all_closed.clear()
        return True

    def forget(self, connection: PolicyConnection) -> None:
        self.connections.discard(connection)
        if not self.connections:
            self._all_closed.set()

    async def start(self, addresses: Sequence[ListenAddress]) -> None:
        """Bind every address (raise OSError naming the one that failed)."""
        loop = asyncio.get_running_loop()
        sockets = bind_listeners(addresses, unix_mode=UNIX_SOCKET_MODE)
        try:
            for sock in sockets:
                if sock.family == socket.AF_UNIX:
                    self.unix_paths.append(sock.getsockname())
                self.listeners.append(
                    await loop.create_server(
                        lambda: PolicyConnection(self), sock=sock, backlog=LISTEN_BACKLOG
                    )
                )
        except BaseException:
            for sock in sockets:
                sock.close()
            await self.stop(grace=0)
            raise
        for address in addresses:
            log.info("policy server listening on %s", address)

    @property
    def bound(self) -> list[ListenAddress]:
        """The addresses actually bound (port 0 resolved), for tests and logs."""
        found: list[ListenAddress] = []
        for server in self.listeners:
            for sock in server.sockets:
                name = sock.getsockname()
                if sock.family == socket.AF_UNIX:
                    found.append(ListenAddress(None, None, str(name)))
                else:
                    found.append(ListenAddress(name[0], name[1], None))
        return found

    async def stop(self, grace: float) -> None:
        """Stop accepting, answer what is in flight (up to ``grace`` seconds), close the rest."""
        self.draining = True
        for server in self.listeners:
            server.close()
        for connection in list(self.connections):
            connection.shutdown()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace):
                await self._all_closed.wait()
        for connection in list(self.connections):
            connection._close(abort=True)
        for server in self.listeners:
            with contextlib.suppress(Exception):
                await server.wait_closed()
        for path in self.unix_paths:
            with contextlib.suppress(OSError):
                os.unlink(path)
        self.unix_paths.clear()
        self.listeners.clear()
