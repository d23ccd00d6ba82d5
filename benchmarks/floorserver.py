"""The floors of any design that asks Redis per decision: the null server plus one round trip.

The same :class:`policyd.server.PolicyServer` as :mod:`benchmarks.nullserver`, whose answer
waits for one Redis round trip before saying ``DUNNO``. The requests that arrive together share
one command (one in flight at a time, as the daemon's batches are), written and read on a raw
asyncio protocol with hiredis' reader: no redis-py, nothing decided.

- ``PING`` (the default): what the socket to Redis costs by itself; no decision that asks
  Redis can cost less.
- ``--script``: one EVALSHA per batch of a script that reads nothing and answers each call
  ``0`` (decide.lua's "accepted"), with the daemon's own arguments (three keys and two
  arguments per decision after the seven the batch shares): what calling a Lua script with a
  batch costs, before the script does any work. No atomic decision in Redis (a script) can
  cost less.
- ``--decide``: the same call of the daemon's own ``ratelimit/lua/decide.lua``, its replies
  read and not looked at: every decision's Redis work as the daemon's, with none of its
  Python. What is left between this and the daemon is the decision's Python, and what it costs
  the daemon to wait for that Redis work is measured apart from it.

    python -m benchmarks.floorserver 127.0.0.1:10042 --redis 127.0.0.1:6379 [--script|--decide]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import sys
from pathlib import Path
from typing import Any

import hiredis

from benchmarks.nullserver import serve_answers
from benchmarks.openloop import tcp_address
from policyd.protocol import PolicyRequest
from policyd.server import Later
from ratelimit.keys import KeyLayout
from smtp_whitelist.loop import run_event_loop

PING = b"*1\r\n$4\r\nPING\r\n"


EMPTY_SCRIPT = "local r = {} for i = 1, #KEYS / 3 do r[i] = 0 end return r"
DECIDE_SCRIPT = (Path(__file__).resolve().parent.parent / "ratelimit/lua/decide.lua").read_text()


def sha1(source: str) -> str:
    return hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()


EMPTY_SHA = sha1(EMPTY_SCRIPT)
# The limits as the daemon's batches share them: 1000000/1h for messages and for recipients,
# OFFENDER_THRESHOLD 50.
SHARED = (1, 1000000, 3600 * 10**6, 1, 1000000, 3600 * 10**6, 50)
FLOOR_KEYS = KeyLayout("floor:")


def pack(command: tuple[Any, ...]) -> bytes:
    return bytes(hiredis.pack_command(command))


def data_decisions(layout: KeyLayout, addresses: list[str]) -> tuple[list[str], list[str | int]]:
    """decide.lua's keys and arguments for one one-recipient DATA decision per (IPv4) address,
    as the daemon's Limiter gives them: each client's log, grant and offender keys."""
    keys: list[str] = []
    args: list[str | int] = []
    for ip in addresses:
        network = f"{ip}/32"
        keys += [
            layout.client_log(network),
            layout.grant(ip, network),
            layout.offender(ip, network),
        ]
        args += ["count", 1]
    return keys, args


def script_call(addresses: list[str], sha: str = EMPTY_SHA) -> bytes:
    """One EVALSHA of the empty script (or another) for these client addresses, shaped as the
    daemon's."""
    keys, args = data_decisions(FLOOR_KEYS, addresses)
    return pack(("EVALSHA", sha, len(keys), *keys, *SHARED, *args))


class RedisRoundTrips(asyncio.Protocol):
    """One command per batch of waiting answers; the batch is answered when its reply is read."""

    def __init__(self, sha: str | None = None) -> None:
        self.sha = sha  # of the script called per batch; None: PING
        self.addresses: list[str] = []  # of the next batch (script floors only)
        self.reader = hiredis.Reader()
        self.transport: asyncio.Transport | None = None
        self.waiting: list[Later] = []  # for the next round trip
        self.in_flight: list[Later] | None = None
        self.scheduled = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def ask(self, later: Later, address: str) -> None:
        self.waiting.append(later)
        if self.sha is not None:
            self.addresses.append(address)
        if self.in_flight is None and not self.scheduled:
            # Those asking in this event-loop turn go together, as the daemon's batches do.
            self.scheduled = True
            asyncio.get_running_loop().call_soon(self._send)

    def _send(self) -> None:
        self.scheduled = False
        if self.in_flight is not None or not self.waiting or self.transport is None:
            return
        self.in_flight, self.waiting = self.waiting, []
        if self.sha is not None:
            addresses, self.addresses = self.addresses, []
            self.transport.write(script_call(addresses, self.sha))
        else:
            self.transport.write(PING)

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while self.reader.gets() is not False:
            batch, self.in_flight = self.in_flight or [], None
            for later in batch:
                later("DUNNO")
        if self.waiting:
            self._send()


async def serve(listen: str, redis_host: str, redis_port: int, source: str | None) -> int:
    """``source``: the script called per batch (None: PING)."""
    loop = asyncio.get_running_loop()
    sha = sha1(source) if source is not None else None
    _, redis = await loop.create_connection(lambda: RedisRoundTrips(sha), redis_host, redis_port)
    if source is not None:
        _, loader = await asyncio.open_connection(redis_host, redis_port)
        loader.write(pack(("SCRIPT", "LOAD", source)))
        await loader.drain()
        loader.close()
        await asyncio.sleep(0.2)

    def answer(request: PolicyRequest, later: Later) -> None:
        redis.ask(later, request.client_address)

    return await serve_answers(listen, answer)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.floorserver", description=__doc__)
    parser.add_argument("listen", help="host:port, as POLICY_LISTEN")
    parser.add_argument(
        "--redis", required=True, type=tcp_address, help="host:port of the Redis to ask"
    )
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--script", action="store_true", help="an empty EVALSHA, not PING")
    which.add_argument("--decide", action="store_true", help="decide.lua's EVALSHA, not PING")
    args = parser.parse_args(argv)
    host, port = args.redis
    source = EMPTY_SCRIPT if args.script else DECIDE_SCRIPT if args.decide else None
    return run_event_loop(serve(args.listen, host, port, source))


if __name__ == "__main__":
    sys.exit(main())
