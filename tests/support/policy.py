"""The one policy client, spoken as Postfix does: one request, wait for its answer, repeat.

:class:`PolicyClient` is policyd.client's (the one ``smtp-whitelist query`` uses) with test
conveniences; :class:`BlockingPolicyClient` is the same conversation on a plain socket, for
synchronous tests against a service process, which also reach its socket to flood or trickle
bytes. Both encode and parse with policyd.protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket

from policyd.client import PolicyClient as ProtocolClient
from policyd.protocol import encode_request, parse_reply
from ratelimit.listen import ListenAddress
from tests.support.requests import postfix_request

# How long a test waits for one answer before calling the server dead.
ANSWER_TIMEOUT = 5.0


class PolicyClient(ProtocolClient):
    """policyd.client's client with what tests need on top: requests built from the Postfix
    3.7 attributes, a time limit on every answer, raw sends and the wait for a close."""

    @classmethod
    async def connect(cls, address: ListenAddress) -> PolicyClient:
        connected = await ProtocolClient.connect(address)
        return cls(connected.reader, connected.writer)

    async def ask(self, request: dict[str, str] | bytes | None = None, **attributes: str) -> str:
        """Send ``request``, or the Postfix request with ``attributes`` changed; the action
        (fails the test if none comes in time)."""
        if request is None:
            request = encode_request(postfix_request(**attributes))
        action = await asyncio.wait_for(super().ask(request), ANSWER_TIMEOUT)
        assert action is not None, "the server closed the connection without a reply"
        return action

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def reply(self) -> str:
        """The next reply's action (fails the test if none comes in time)."""
        data = await asyncio.wait_for(self.reader.readuntil(b"\n\n"), ANSWER_TIMEOUT)
        action = parse_reply(data)
        assert action is not None, data
        return action

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
        await self.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


class BlockingPolicyClient:
    """A blocking policy client on one persistent connection, as one smtpd holds."""

    def __init__(self, host: str, port: int, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)

    def ask(self, request: bytes) -> str | None:
        """Send one request; the action, or None when the server closed without a reply."""
        self.sock.sendall(request)
        reply = b""
        while not reply.endswith(b"\n\n"):
            chunk = self.sock.recv(65536)
            if not chunk:
                return None
            reply += chunk
        action = parse_reply(reply)
        assert action is not None, reply
        return action

    def close(self) -> None:
        self.sock.close()


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
        return await client.ask(encode_request(postfix_request(**attributes)))
    finally:
        await client.aclose()
