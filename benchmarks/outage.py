"""Answer times during a Redis outage, before and after the circuit breaker opens (issue 5).

Starts its own redis-server and ``smtp-whitelist policyd``, measures a healthy baseline, then
freezes Redis with ``CLIENT PAUSE`` (a hung Redis: the worst case, every call waits out
STORE_TIMEOUT) and then stops it (connection refused), each time sending requests one after
another on 20 persistent connections, and prints p50/p99 of the answer times: the first
requests of the outage (breaker still closed) apart from the rest (breaker open). Last, the
daemon's RSS with 5,000 idle connections. Not a test: ``.venv/bin/python -m benchmarks.outage``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from benchmarks.run import HOST, Processes, free_port, idle_connections_rss, more_files, rss_mb

REQUEST = (
    b"request=smtpd_access_policy\nprotocol_state=DATA\nclient_address=192.0.2.%d\n"
    b"recipient_count=1\nqueue_id=OUTAGE\ninstance=outage.%d\n\n"
)


def redis_cli(port: int, *command: str) -> None:
    """Fault injection from outside, as an operator's redis-cli would do it."""
    subprocess.run(["redis-cli", "-p", str(port), *command], check=False, capture_output=True)


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


async def timed_requests(port: int, connections: int, per_connection: int) -> list[list[float]]:
    """Each connection sends ``per_connection`` requests in turn; answer times in ms, in order."""

    async def one(index: int) -> list[float]:
        reader, writer = await asyncio.open_connection(HOST, port)
        times = []
        try:
            for n in range(per_connection):
                began = time.perf_counter()
                writer.write(REQUEST % (index % 250 + 1, n))
                await reader.readuntil(b"\n\n")
                times.append((time.perf_counter() - began) * 1000)
        finally:
            writer.close()
        return times

    return list(await asyncio.gather(*(one(i) for i in range(connections))))


def summary(label: str, times: list[float]) -> str:
    return (
        f"| {label} | {len(times)} | {statistics.median(times):.3f} | "
        f"{percentile(times, 0.99):.3f} | {max(times):.3f} |"
    )


def phase(port: int, connections: int, per_connection: int) -> tuple[list[float], list[float]]:
    """(answer times of the first 3 requests of each connection, of all later ones)."""
    runs = asyncio.run(timed_requests(port, connections, per_connection))
    first = [t for run in runs for t in run[:3]]
    later = [t for run in runs for t in run[3:]]
    return first, later


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.outage", description=__doc__)
    parser.add_argument("--store-timeout", default="0.5")
    parser.add_argument("--connections", type=int, default=20)
    parser.add_argument("--requests", type=int, default=50, help="per connection and phase")
    parser.add_argument("--idle", type=int, default=5000)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="swl-outage-") as tmp, more_files():
        procs = Processes(Path(tmp))
        try:
            redis_port, port = free_port(), free_port()
            procs.redis(redis_port)
            pid = procs.policyd(
                port,
                redis_port,
                SMTP_WHITELIST_STORE_TIMEOUT=args.store_timeout,
                SMTP_WHITELIST_MAX_CONNECTIONS="6000",
            )
            print(f"STORE_TIMEOUT={args.store_timeout}s, {args.connections} connections")
            print("| phase | requests | p50 ms | p99 ms | max ms |")
            print("|---|---:|---:|---:|---:|")
            healthy = [
                t
                for run in asyncio.run(timed_requests(port, args.connections, args.requests))
                for t in run
            ]
            print(summary("Redis healthy", healthy))

            # Redis 7.0 pauses CLIENT UNPAUSE too, so the pause is long enough for the phase
            # (the first requests wait out STORE_TIMEOUT, the rest are answered at once) and
            # then lifts by itself.
            pause_ms = 8000
            paused_at = time.monotonic()
            redis_cli(redis_port, "CLIENT", "PAUSE", str(pause_ms), "ALL")
            first, later = phase(port, args.connections, args.requests)
            print(summary("Redis hung, breaker closed (first 3 per connection)", first))
            print(summary("Redis hung, breaker open", later))
            # The breaker's probe closes it again within BREAKER_PROBE_INTERVAL of the end.
            time.sleep(max(0.0, paused_at + pause_ms / 1000 - time.monotonic()) + 1.5)

            subprocess.run(
                ["redis-cli", "-p", str(redis_port), "shutdown", "nosave"],
                check=False,
                capture_output=True,
            )
            first, later = phase(port, args.connections, args.requests)
            print(summary("Redis stopped, breaker closed (first 3 per connection)", first))
            print(summary("Redis stopped, breaker open", later))

            before, with_idle, answered = idle_connections_rss(pid, port, args.idle)
            print(
                f"\npolicyd RSS {before:.1f} MB; with {args.idle} idle connections "
                f"{with_idle:.1f} MB ({answered} answered); now {rss_mb(pid):.1f} MB"
            )
        finally:
            procs.stop_all()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
