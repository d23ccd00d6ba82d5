"""The floor of any design that asks Redis per decision: the null server plus one bare round trip.

The same :class:`policyd.server.PolicyServer` as :mod:`benchmarks.nullserver`, whose answer
waits for one Redis round trip before saying ``DUNNO``. The requests that arrive together share
one ``PING`` (one in flight at a time, as the daemon's batches are), written and read on a raw
asyncio protocol with hiredis' reader: no redis-py, no script, no keys, nothing decided. What it
costs above the null server (the daemon's CPU and Redis') is what the socket to Redis costs
by itself; no decision that asks Redis can cost less.

    python -m benchmarks.floorserver 127.0.0.1:10042 --redis 127.0.0.1:6379
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Callable

import hiredis

from policyd.protocol import PolicyRequest
from policyd.server import ConnectionLimits, PolicyServer
from ratelimit.listen import parse_listen
from smtp_whitelist.loop import run_event_loop

Later = Callable[[str | None], None]
PING = b"*1\r\n$4\r\nPING\r\n"


class RedisRoundTrips(asyncio.Protocol):
    """One PING per batch of waiting answers; the batch is answered when its PONG is read."""

    def __init__(self) -> None:
        self.reader = hiredis.Reader()
        self.transport: asyncio.Transport | None = None
        self.waiting: list[Later] = []  # for the next round trip
        self.in_flight: list[Later] | None = None
        self.scheduled = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def ask(self, later: Later) -> None:
        self.waiting.append(later)
        if self.in_flight is None and not self.scheduled:
            # Those asking in this event-loop turn go together, as the daemon's batches do.
            self.scheduled = True
            asyncio.get_running_loop().call_soon(self._send)

    def _send(self) -> None:
        self.scheduled = False
        if self.in_flight is not None or not self.waiting or self.transport is None:
            return
        self.in_flight, self.waiting = self.waiting, []
        self.transport.write(PING)

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while self.reader.gets() is not False:
            batch, self.in_flight = self.in_flight or [], None
            for later in batch:
                later("DUNNO")
        if self.waiting:
            self._send()


async def serve(listen: str, redis_host: str, redis_port: int) -> int:
    loop = asyncio.get_running_loop()
    _, redis = await loop.create_connection(RedisRoundTrips, redis_host, redis_port)

    def answer(request: PolicyRequest, later: Later) -> None:
        redis.ask(later)

    server = PolicyServer(answer, ConnectionLimits(1000, 600.0, 10.0))
    stopping = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    await server.start(parse_listen(listen))
    print("ready", flush=True)
    await stopping.wait()
    await server.stop(grace=4.0)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.floorserver", description=__doc__)
    parser.add_argument("listen", help="host:port, as POLICY_LISTEN")
    parser.add_argument("--redis", required=True, help="host:port of the Redis to PING")
    args = parser.parse_args(argv)
    host, _, port = args.redis.rpartition(":")
    return run_event_loop(serve(args.listen, host, int(port)))


if __name__ == "__main__":
    sys.exit(main())
