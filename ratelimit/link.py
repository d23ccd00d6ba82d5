"""The policy server's own connection to one Redis: an asyncio protocol with hiredis' reader.

The connection is opened by redis-py's pool and then taken over (link_batches.py), so the
URL's every form keeps working exactly as elsewhere: TCP or a UNIX socket, TLS, AUTH, the
database number, and on Sentinel the current master. Replies are parsed as they arrive, in
``data_received``, and handed on from there: no stream reader, no task woken per batch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import hiredis
from redis._parsers.base import BaseParser
from redis.exceptions import ResponseError

from ratelimit.errors import describe


def _reply_error(message: str) -> ResponseError:
    """An error reply as redis-py's own parser makes it (NOSCRIPT, READONLY and the rest get
    their classes, and the same messages), so callers cannot tell which path read it."""
    error: ResponseError = BaseParser.parse_error(message)  # type: ignore[no-untyped-call]
    return error


class LinkLost(Exception):
    """The connection closed, or sent what hiredis cannot parse, with a batch in flight."""

    def __init__(self, why: str, *, stale: bool) -> None:
        super().__init__(why)
        # It had served before and no reply of this batch was read: it died while idle, before
        # the batch reached a running Redis, so a second try cannot count a message twice.
        self.stale = stale


class RedisLink(asyncio.Protocol):
    """One Redis connection taken over from redis-py's pool: writes, and hiredis reading."""

    def __init__(self, connection: Any, replaced: asyncio.BaseProtocol | None = None) -> None:
        self.connection = connection  # redis-py's, released to its pool when this one is done
        # The stream protocol this one replaced on the transport: told of the close too, or
        # redis-py's own disconnect would wait for a close it never hears of.
        self.replaced = replaced
        self.transport: asyncio.Transport | None = None
        self.reader = hiredis.Reader(replyError=_reply_error)
        self.lost = False
        self.served = False  # some batch's replies were all read on it
        self._expected = 0
        self._replies: list[Any] = []
        self._done: Callable[[list[Any] | LinkLost], None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(
        self, payload: bytes, replies: int, done: Callable[[list[Any] | LinkLost], None]
    ) -> None:
        """Write ``payload``; ``done`` gets its ``replies`` replies in order, or LinkLost."""
        self._expected, self._replies, self._done = replies, [], done
        if self.transport is None or self.lost or self.transport.is_closing():
            self._lose("the connection is closed")
            return
        self.transport.write(payload)

    def forget(self) -> None:
        """Stop waiting (the batch timed out) and close: replies may still be on their way."""
        self._done = None
        self.close()

    def close(self) -> None:
        self.lost = True
        if self.transport is not None:
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        replies = self._replies
        while True:
            try:
                reply = self.reader.gets()
            except hiredis.ProtocolError as error:
                self._lose(f"unreadable reply from Redis: {error}")
                self.close()
                return
            if reply is False:
                return
            replies.append(reply)
            if len(replies) == self._expected and self._done is not None:
                done, self._done = self._done, None
                self.served = True
                done(replies)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.replaced is not None:
            self.replaced.connection_lost(exc)
        self._lose(describe(exc) if exc is not None else "Redis closed the connection")

    def _lose(self, why: str) -> None:
        if self._done is not None:
            done, self._done = self._done, None
            done(LinkLost(why, stale=self.served and not self._replies))
