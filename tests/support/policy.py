"""The one policy client, spoken as Postfix does: one request, wait for its answer, repeat.

:class:`PolicyClient` is asyncio (for tests that run a server in their own loop);
:class:`BlockingPolicyClient` is the same conversation on a plain socket, for synchronous
tests against a service process. Both encode and parse with policyd.protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket

from policyd.protocol import encode_request, parse_reply
from ratelimit.listen import ListenAddress
from tests.support.requests import postfix_request

# How long a test waits for one answer before calling the server dead.
ANSWER_TIMEOUT = 5.0


class PolicyClient:
    """An asyncio policy client on one connection."""

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
        return await client.ask(**attributes)
    finally:
        await client.aclose()
