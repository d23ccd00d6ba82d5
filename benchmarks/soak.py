"""Issue 5's soak: a million requests over 100,000 client IPs against ``smtp-whitelist policyd``.

Starts its own redis-server and daemon (as :mod:`benchmarks.run` does), sends the load in
chunks, and after each chunk samples the daemon's RSS and Redis ``used_memory``; prints the
curve (start, after warm-up, end) and then checks that every Redis key has a TTL (SCAN + TTL,
never KEYS). Bounded in requests and in seconds.

    python -m benchmarks.soak [--requests 1000000] [--ips 100000] [--every 100000]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import redis

from benchmarks.loadgen import client_ips, run_load
from benchmarks.run import HOST, Processes, free_port, more_files, rss_mb, used_memory

# Realistic limits (the defaults): some clients of a big soak do reach them, which is the
# state whose memory must stay bounded too.
SOAK_SETTINGS = {
    "SMTP_WHITELIST_MESSAGE_LIMITS": "100/1h",
    "SMTP_WHITELIST_RECIPIENT_LIMITS": "1000/1h",
}


def keys_without_ttl(client: redis.Redis) -> tuple[int, int]:
    """(keys scanned, keys with no TTL)."""
    scanned = missing = 0
    cursor = 0
    while True:  # one full SCAN cycle
        cursor, keys = client.scan(cursor, count=1000)
        if keys:
            pipe = client.pipeline(transaction=False)
            for key in keys:
                pipe.ttl(key)
            for ttl in pipe.execute():
                scanned += 1
                missing += ttl == -1  # -1: no expiry; -2: expired meanwhile, which is fine
        if cursor == 0:
            break
    return scanned, missing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__)
    parser.add_argument("--requests", type=int, default=1_000_000)
    parser.add_argument("--ips", type=int, default=100_000)
    parser.add_argument("--every", type=int, default=100_000, help="sample every N requests")
    parser.add_argument("--connections", type=int, default=20)
    parser.add_argument("--mix", default="RCPT:1,DATA:1")
    parser.add_argument("--max-seconds", type=float, default=600.0)
    args = parser.parse_args(argv)
    deadline = time.monotonic() + args.max_seconds
    with tempfile.TemporaryDirectory(prefix="swl-soak-") as tmp, more_files():
        procs = Processes(Path(tmp))
        try:
            redis_port, port = free_port(), free_port()
            procs.redis(redis_port)
            pid = procs.policyd(port, redis_port, **SOAK_SETTINGS)
            client = redis.Redis(host=HOST, port=redis_port)
            addresses = client_ips(args.ips, base="10.64.0.0")
            print(f"{'requests':>10} {'req/s':>8} {'policyd RSS MB':>15} {'redis used MB':>14}")
            print(f"{0:>10} {'':>8} {rss_mb(pid):>15.1f} {used_memory(client) / 2**20:>14.1f}")
            sent, chunk = 0, 0
            while sent < args.requests and time.monotonic() < deadline:
                n = min(args.every, args.requests - sent)
                result = run_load(
                    HOST,
                    port,
                    connections=args.connections,
                    requests=n,
                    duration=max(1.0, deadline - time.monotonic()),
                    ips=addresses,
                    mix=args.mix,
                    seed=100 + chunk,
                )
                sent += result.requests
                chunk += 1
                if result.errors:
                    print(f"errors: {result.errors}", file=sys.stderr)
                print(
                    f"{sent:>10} {result.rate:>8,.0f} {rss_mb(pid):>15.1f}"
                    f" {used_memory(client) / 2**20:>14.1f}",
                    flush=True,
                )
            scanned, missing = keys_without_ttl(client)
            print(f"keys: {scanned:,} scanned, {missing} without a TTL")
            return 0 if missing == 0 and sent >= args.requests else 1
        finally:
            procs.stop_all()


if __name__ == "__main__":
    sys.exit(main())
