"""A load generator that talks to a policy server the way Postfix's smtpd processes do.

Each connection is one smtpd process: persistent, one request in flight, the next request sent
as soon as the answer arrives (a closed loop, so latency and throughput are tied by Little's law).
Requests carry the attribute set Postfix 3.7 sends (SMTPD_POLICY_README, "Policy protocol
attributes"), for a configurable number of client IPs and mix of stages.

The client side is written as plain ``asyncio.Protocol`` callbacks (no task or future per
request) on uvloop when installed, so that one generator process costs well under the server
it measures; ``--processes`` spreads the connections over several processes where there are
cores to spare. The generator reports its own CPU time, so a run can show it was not the limit.

    python -m benchmarks.loadgen 127.0.0.1:10031 --connections 20 --ips 10000 --requests 50000
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import multiprocessing
import os
import random
import sys
import time
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

# Postfix 3.7's attributes, in its order. %(...)s fields are filled per request; the others are
# what a relay for authenticated campus clients typically sends.
REQUEST_TEMPLATE = (
    b"request=smtpd_access_policy\n"
    b"protocol_state=%(state)s\n"
    b"protocol_name=ESMTP\n"
    b"client_address=%(ip)s\n"
    b"client_name=unknown\n"
    b"client_port=%(port)d\n"
    b"reverse_client_name=unknown\n"
    b"server_address=192.0.2.25\n"
    b"server_port=25\n"
    b"helo_name=[%(ip)s]\n"
    b"sender=user%(n)d@example.edu\n"
    b"recipient=%(recipient)s\n"
    b"recipient_count=%(rcpts)d\n"
    b"queue_id=%(queue_id)s\n"
    b"instance=%(instance)s\n"
    b"size=%(size)d\n"
    b"etrn_domain=\n"
    b"stress=\n"
    b"sasl_method=\n"
    b"sasl_username=\n"
    b"sasl_sender=\n"
    b"ccert_subject=\n"
    b"ccert_issuer=\n"
    b"ccert_fingerprint=\n"
    b"ccert_pubkey_fingerprint=\n"
    b"encryption_protocol=TLSv1.3\n"
    b"encryption_cipher=TLS_AES_256_GCM_SHA384\n"
    b"encryption_keysize=256\n"
    b"policy_context=\n"
    b"compatibility_level=3.6\n"
    b"mail_version=3.7.11\n"
    b"\n"
)

# How long one connection waits for one answer before the run counts it as lost and stops that
# connection (a server that never answers must not hang the benchmark).
REPLY_TIMEOUT = 10.0


def client_ips(count: int, base: str = "10.0.0.0") -> list[bytes]:
    """``count`` distinct IPv4 addresses (each its own /32 client) from ``base`` upwards."""
    start = int(ipaddress.IPv4Address(base)) + 1
    return [str(ipaddress.IPv4Address(start + i)).encode() for i in range(count)]


def parse_mix(text: str) -> list[tuple[bytes, float]]:
    """``DATA`` or ``RCPT:3,DATA:1`` -> cumulative weights per stage."""
    parts: list[tuple[bytes, float]] = []
    for item in text.split(","):
        name, _, weight = item.partition(":")
        parts.append((name.strip().upper().encode(), float(weight or 1)))
    total = sum(w for _, w in parts)
    if total <= 0:
        raise ValueError(f"mix {text!r} has no weight")
    cumulative: list[tuple[bytes, float]] = []
    acc = 0.0
    for stage, w in parts:
        acc += w / total
        cumulative.append((stage, acc))
    return cumulative


class RequestMaker:
    """Builds request bytes: cheap enough (one %-format) not to weigh on the generator."""

    def __init__(
        self, ips: Sequence[bytes], mix: list[tuple[bytes, float]], seed: int, cycle: bool = False
    ) -> None:
        self.ips = ips
        self.cycle = cycle  # every address in turn (exactly requests/len(ips) each), not at random
        self.turn = 0
        self.mix = mix
        self.single = mix[0][0] if len(mix) == 1 else None
        self.rng = random.Random(seed)
        self.n = seed * 1_000_003

    def make(self) -> bytes:
        self.n += 1
        n = self.n
        rng = self.rng
        if self.cycle:
            ip = self.ips[self.turn % len(self.ips)]
            self.turn += 1
        else:
            ip = self.ips[rng.randrange(len(self.ips))]
        state = self.single
        if state is None:
            r = rng.random()
            state = next(s for s, acc in self.mix if r <= acc) if r < 1 else self.mix[-1][0]
        data = state == b"DATA"
        return REQUEST_TEMPLATE % {
            b"state": state,
            b"ip": ip,
            b"port": 1024 + n % 60000,
            b"n": n % 5000,
            b"recipient": b"" if data else b"rcpt%d@example.org" % (n % 997),
            b"rcpts": 1 + n % 3 if data else 0,
            b"queue_id": b"%010X" % n if data else b"",
            b"instance": b"%x.%x" % (n >> 4, n),
            b"size": 1000 + n % 50000 if data else 0,
        }


@dataclass
class LoadResult:
    """What one run measured (latencies in ns, one per answered request)."""

    requests: int = 0
    elapsed: float = 0.0
    latencies: array[int] = field(default_factory=lambda: array("q"))
    actions: dict[str, int] = field(default_factory=dict)
    errors: int = 0
    cpu_seconds: float = 0.0  # the generator's own CPU time (user + system)

    @property
    def rate(self) -> float:
        return self.requests / self.elapsed if self.elapsed else 0.0

    def percentile(self, q: float) -> float:
        """Latency percentile in milliseconds."""
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        index = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))
        return ordered[index] / 1e6

    def merge(self, other: LoadResult) -> None:
        self.requests += other.requests
        self.elapsed = max(self.elapsed, other.elapsed)
        self.latencies.extend(other.latencies)
        for action, n in other.actions.items():
            self.actions[action] = self.actions.get(action, 0) + n
        self.errors += other.errors
        self.cpu_seconds += other.cpu_seconds

    def summary(self) -> dict[str, object]:
        return {
            "requests": self.requests,
            "elapsed": round(self.elapsed, 3),
            "rate": round(self.rate, 1),
            "p50_ms": round(self.percentile(50), 3),
            "p99_ms": round(self.percentile(99), 3),
            "errors": self.errors,
            "actions": self.actions,
            "loadgen_cpu_s": round(self.cpu_seconds, 3),
        }


class _Run:
    """State shared by the connections of one process: the budget and the results."""

    def __init__(self, requests: int, deadline: float, maker: RequestMaker) -> None:
        self.left = requests
        self.deadline = deadline
        self.maker = maker
        self.result = LoadResult()
        self.open = 0
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def finished(self) -> None:
        self.open -= 1
        if self.open == 0 and not self.done.done():
            self.done.set_result(None)


class _Client(asyncio.Protocol):
    """One smtpd process: send, wait for the whole answer, record, send the next."""

    def __init__(self, run: _Run) -> None:
        self.run = run
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.sent_at = 0
        self.active = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.run.open += 1
        self._send()

    def _send(self) -> None:
        run = self.run
        if run.left <= 0 or time.monotonic() >= run.deadline:
            self._stop()
            return
        run.left -= 1
        assert self.transport is not None
        request = run.maker.make()
        self.sent_at = time.perf_counter_ns()
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.buffer.endswith(b"\n\n"):
            return
        latency = time.perf_counter_ns() - self.sent_at
        reply, self.buffer = self.buffer, b""
        result = self.run.result
        result.requests += 1
        result.latencies.append(latency)
        action = reply[7:-2].decode() if reply.startswith(b"action=") else "?"
        if action != "DUNNO":
            action = action.split(" ", 1)[0]  # "450 4.7.1 ..." -> "450"
        result.actions[action] = result.actions.get(action, 0) + 1
        self._send()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.active:
            self.active = False
            if self.run.left > 0 and time.monotonic() < self.run.deadline:
                self.run.result.errors += 1  # closed by the server mid-run
            self.run.finished()

    def _stop(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def _run_async(
    host: str,
    port: int,
    connections: int,
    requests: int,
    duration: float,
    maker: RequestMaker,
) -> LoadResult:
    loop = asyncio.get_running_loop()
    run = _Run(requests, time.monotonic() + duration, maker)
    cpu0 = os.times()
    started = time.perf_counter()
    transports = []
    for _ in range(connections):
        transport, _ = await loop.create_connection(lambda: _Client(run), host, port)
        transports.append(transport)
    try:
        await asyncio.wait_for(asyncio.shield(run.done), duration + REPLY_TIMEOUT)
    except TimeoutError:
        run.result.errors += run.open
        for transport in transports:
            transport.abort()
    run.result.elapsed = time.perf_counter() - started
    cpu1 = os.times()
    run.result.cpu_seconds = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    return run.result


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's when installed (as the daemon uses), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def run_load(
    host: str,
    port: int,
    *,
    connections: int = 20,
    requests: int = 50_000,
    duration: float = 30.0,
    ips: int | Sequence[bytes] = 10_000,
    mix: str = "DATA",
    seed: int = 1,
    cycle: bool = False,
) -> LoadResult:
    """Run one load in this process (its own event loop); bounded by ``requests`` and time.

    ``cycle``: use every address in turn (so each sends requests/ips), not at random.
    """
    addresses = client_ips(ips) if isinstance(ips, int) else ips
    maker = RequestMaker(addresses, parse_mix(mix), seed, cycle)
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(_run_async(host, port, connections, requests, duration, maker))


def _worker(job: dict[str, Any]) -> LoadResult:
    return run_load(**job)


def run_load_processes(
    targets: Sequence[tuple[str, int]],
    *,
    processes: int = 1,
    connections: int = 20,
    requests: int = 50_000,
    **options: Any,
) -> LoadResult:
    """The load spread over ``processes`` generator processes, connections and requests split
    evenly, the processes taking the ``targets`` (servers) in turn."""
    processes = max(processes, len(targets))
    if processes == 1:
        host, port = targets[0]
        return run_load(host, port, connections=connections, requests=requests, **options)
    jobs = [
        {
            "host": targets[i % len(targets)][0],
            "port": targets[i % len(targets)][1],
            "connections": connections // processes + (i < connections % processes),
            "requests": requests // processes + (i < requests % processes),
            **options,
            "seed": options.get("seed", 1) * 1000 + i,
        }
        for i in range(processes)
    ]
    with multiprocessing.get_context("fork").Pool(processes) as pool:
        parts = pool.map(_worker, jobs)
    total = LoadResult()
    for part in parts:
        total.merge(part)
    return total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.loadgen", description=__doc__)
    parser.add_argument("targets", nargs="+", help="host:port of each policy server")
    parser.add_argument("--connections", type=int, default=20)
    parser.add_argument("--ips", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=50_000)
    parser.add_argument("--duration", type=float, default=30.0, help="at most this many seconds")
    parser.add_argument("--mix", default="DATA", help="stages and weights, e.g. RCPT:3,DATA:1")
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--cycle", action="store_true", help="every IP in turn, not at random")
    args = parser.parse_args(argv)
    targets = []
    for target in args.targets:
        host, _, port = target.rpartition(":")
        targets.append((host.strip("[]"), int(port)))
    result = run_load_processes(
        targets,
        processes=args.processes,
        connections=args.connections,
        requests=args.requests,
        duration=args.duration,
        ips=args.ips,
        mix=args.mix,
        seed=args.seed,
        cycle=args.cycle,
    )
    json.dump(result.summary(), sys.stdout)
    print()
    return 0 if result.errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
