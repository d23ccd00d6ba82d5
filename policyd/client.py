"""An async client of the policy protocol, one persistent connection as one smtpd holds.

``smtp-whitelist query``, the tests and the benchmarks all speak to a running server through it,
so the protocol's client side is written once (the server side is policyd.protocol).
"""

from __future__ import annotations

import asyncio
import secrets
from types import TracebackType

from policyd.protocol import encode_request, parse_reply
from ratelimit.listen import ListenAddress

# What a reply may grow to before the client gives up on it: a Postfix reply is one short line,
# so anything near this size is not a policy server.
MAX_REPLY = 65536


def query_request(
    client_address: str, *, state: str = "RCPT", recipients: int = 1
) -> dict[str, str]:
    """The attributes Postfix sends for one client at ``state``, with harmless placeholders."""
    return {
        "request": "smtpd_access_policy",
        "protocol_state": state,
        "protocol_name": "ESMTP",
        "client_address": client_address,
        "client_name": "unknown",
        "reverse_client_name": "unknown",
        "helo_name": "query.invalid",
        "sender": "query@smtp-whitelist.invalid",
        "recipient": "postmaster@smtp-whitelist.invalid",
        "recipient_count": str(recipients),
        "queue_id": "",
        "instance": f"query.{secrets.token_hex(4)}",
        "size": "0",
    }


class PolicyClient:
    """``async with await PolicyClient.connect(address) as client: await client.ask(request)``."""

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

    async def ask(self, request: dict[str, str] | bytes) -> str | None:
        """Send one request; its action, or None when the server closed without a reply."""
        self.writer.write(request if isinstance(request, bytes) else encode_request(request))
        await self.writer.drain()
        reply = b""
        while not reply.endswith(b"\n\n"):
            chunk = await self.reader.read(4096)
            if not chunk or len(reply) > MAX_REPLY:
                return None
            reply += chunk
        return parse_reply(reply)

    async def close(self) -> None:
        self.writer.close()

    async def __aenter__(self) -> PolicyClient:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


async def ask_once(address: ListenAddress, request: dict[str, str] | bytes) -> str | None:
    """One request on a connection of its own (``smtp-whitelist query``)."""
    async with await PolicyClient.connect(address) as client:
        return await client.ask(request)
