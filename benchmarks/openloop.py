"""An open-loop load generator: requests fall due on a fixed schedule, whatever the server does.

The closed loop of :mod:`benchmarks.loadgen` measures saturation: a slow answer delays the next
request, so a stall hides itself (coordinated omission). Mail does not wait for the policy
server: messages arrive at their own rate. Here request ``i`` falls due at ``start + i / rate``
on connection ``i % connections``; each connection still carries one request at a time (as one
smtpd process does), so a request due while its connection waits for an answer is queued, and
its latency is counted **from the moment it fell due**, so that queueing shows in p99, p99.9
and the longest answer.

    python -m benchmarks.openloop 127.0.0.1:10031 --rate 3000 --duration 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections import deque
from dataclasses import dataclass

from benchmarks.loadgen import (
    REPLY_TIMEOUT,
    LoadResult,
    RequestMaker,
    client_ips,
    new_event_loop,
    parse_mix,
)
from ratelimit.listen import parse_listen

# The event loop's timers (asyncio's epoll wait, libuv's) count whole milliseconds.
TIMER_RESOLUTION = 0.001


@dataclass
class OpenLoopResult:
    """What one open-loop run measured: latencies from due time, in ns."""

    offered_rate: float
    load: LoadResult

    def percentile(self, q: float) -> float:
        return self.load.percentile(q)

    @property
    def longest_ms(self) -> float:
        return max(self.load.latencies) / 1e6 if self.load.latencies else float("nan")

    def summary(self) -> dict[str, object]:
        return {
            "offered_rate": self.offered_rate,
            **self.load.summary(),
            "p999_ms": round(self.percentile(99.9), 3),
            "max_ms": round(self.longest_ms, 3),
        }


class _Connection(asyncio.Protocol):
    """One smtpd process under an open schedule: due requests queue behind the one in flight."""

    def __init__(self, run: _Schedule) -> None:
        self.run = run
        self.transport: asyncio.Transport | None = None
        self.due: deque[int] = deque()  # due times (monotonic_ns) not yet sent
        self.in_flight_due = 0  # when the clock of the request in flight started; 0 = none
        self.queued = False  # whether the next request to send fell due while one was in flight
        self.buffer = b""
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def fall_due(self, due_ns: int) -> None:
        self.due.append(due_ns)
        if not self.in_flight_due:
            self.queued = False
            self._send_next()

    def _send_next(self) -> None:
        if not self.due or self.transport is None or self.closed:
            return
        due = self.due.popleft()
        request = self.run.maker.make()
        # Idle connection: the clock starts now (see _run_async); queued: at its due time.
        self.in_flight_due = due if self.queued else max(due, time.monotonic_ns())
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.buffer.endswith(b"\n\n"):
            return
        now = time.monotonic_ns()
        reply, self.buffer = self.buffer, b""
        result = self.run.result
        result.requests += 1
        result.latencies.append(now - self.in_flight_due)
        action = reply[7:-2].decode() if reply.startswith(b"action=") else "?"
        if action != "DUNNO":
            action = action.split(" ", 1)[0]
        result.actions[action] = result.actions.get(action, 0) + 1
        self.in_flight_due = 0
        self.run.answered()
        self.queued = True  # anything still in self.due waited behind this answer
        self._send_next()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed:
            self.closed = True
            lost = len(self.due) + (1 if self.in_flight_due else 0)
            self.run.result.errors += lost
            self.run.answered(lost)


class _Schedule:
    """The run's shared state: the request maker, the results, and when every answer is in."""

    def __init__(self, maker: RequestMaker, total: int) -> None:
        self.maker = maker
        self.result = LoadResult()
        self.outstanding = total
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def answered(self, count: int = 1) -> None:
        self.outstanding -= count
        if self.outstanding <= 0 and not self.done.done():
            self.done.set_result(None)


async def _run_async(
    host: str, port: int, connections: int, rate: float, duration: float, maker: RequestMaker
) -> OpenLoopResult:
    loop = asyncio.get_running_loop()
    total = max(1, int(rate * duration))
    run = _Schedule(maker, total)
    peers: list[_Connection] = []
    for _ in range(connections):
        _, peer = await loop.create_connection(lambda: _Connection(run), host, port)
        peers.append(peer)
    interval_ns = int(1e9 / rate)
    cpu0 = os.times()
    start_ns = time.monotonic_ns()  # the event loop's clock, so sleeps and due times agree
    sent = 0
    # Each wake-up releases every request whose time has come. The event loop's timers have a
    # resolution of 1 ms, so a release can be up to that late; a request that finds its
    # connection idle is therefore timed from the moment it is sent, and one that must wait
    # behind an unanswered request from the moment it fell due (that wait is the server's).
    while sent < total:
        now_ns = time.monotonic_ns()
        due_count = min(total, (now_ns - start_ns) // interval_ns + 1)
        while sent < due_count:
            peers[sent % connections].fall_due(start_ns + sent * interval_ns)
            sent += 1
        if sent < total:
            wait_ns = start_ns + sent * interval_ns - time.monotonic_ns()
            # Never less than the timers' 1 ms: a shorter sleep is rounded to 0 and spins.
            await asyncio.sleep(max(wait_ns / 1e9, TIMER_RESOLUTION))
    try:
        await asyncio.wait_for(asyncio.shield(run.done), REPLY_TIMEOUT)
    except TimeoutError:
        run.result.errors += run.outstanding
    elapsed = (time.monotonic_ns() - start_ns) / 1e9
    cpu1 = os.times()
    for peer in peers:
        if peer.transport is not None:
            peer.transport.close()
    run.result.elapsed = elapsed
    run.result.cpu_seconds = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    return OpenLoopResult(rate, run.result)


def run_open_loop(
    host: str,
    port: int,
    *,
    rate: float,
    duration: float = 10.0,
    connections: int = 20,
    ips: int = 10_000,
    mix: str = "DATA",
    seed: int = 1,
) -> OpenLoopResult:
    """Offer ``rate`` requests per second for ``duration`` seconds over ``connections``."""
    maker = RequestMaker(client_ips(ips), parse_mix(mix), seed)
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(_run_async(host, port, connections, rate, duration, maker))


def tcp_address(text: str) -> tuple[str, int]:
    """host:port or [v6addr]:port (POLICY_LISTEN's syntax), for argparse: a bad one is a usage
    error, not a traceback."""
    try:
        addresses = parse_listen(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    if len(addresses) != 1:
        raise argparse.ArgumentTypeError(f"{text!r}: one host:port is needed here")
    [address] = addresses
    if address.host is None or address.port is None:
        raise argparse.ArgumentTypeError(f"{text!r}: a TCP address is needed here")
    return address.host, address.port


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.openloop", description=__doc__)
    parser.add_argument("target", type=tcp_address, help="host:port of the policy server")
    parser.add_argument("--rate", type=float, default=1000.0, help="requests per second offered")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=20)
    parser.add_argument("--ips", type=int, default=10_000)
    parser.add_argument("--mix", default="DATA")
    args = parser.parse_args(argv)
    host, port = args.target
    result = run_open_loop(
        host,
        port,
        rate=args.rate,
        duration=args.duration,
        connections=args.connections,
        ips=args.ips,
        mix=args.mix,
    )
    json.dump(result.summary(), sys.stdout)
    print()
    return 0 if result.load.errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
