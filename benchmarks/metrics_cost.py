"""CPU that counting metrics adds to one policy decision (the budget is 2 µs).

``python -m benchmarks.metrics_cost``: the same :class:`PolicyDecider` decides the same DATA
requests with metrics off (METRICS_LISTEN empty) and on, in alternating rounds; the figure is
the difference of the median CPU time per decision (``time.process_time``). The client is in an
exempt network, so the decision is the whole Python path without a Redis round trip: what is
measured is the decider's own cost, of which counting is the only difference. A scrape of
``/metrics`` is timed as well (it happens once per scrape interval, not per decision).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time

from policyd.decision import PolicyDecider, Replies
from policyd.protocol import PolicyRequest, RequestParser
from ratelimit.limiter import LimitConfig, Limiter
from ratelimit.metrics import Metrics
from ratelimit.store import Store
from smtp_whitelist.settings import Settings
from tests.support import policy_request


def _request() -> PolicyRequest:
    (request,) = RequestParser().feed(policy_request("192.0.2.10", "DATA", 3))
    return request


async def _cpu_per_call(decider: PolicyDecider, request: PolicyRequest, calls: int) -> float:
    started = time.process_time()
    for _ in range(calls):
        await decider(request)
    return (time.process_time() - started) / calls


async def measure(calls: int, rounds: int) -> tuple[float, float, float]:
    """Median CPU seconds per decision without and with metrics, and per scrape."""
    # The Redis URL is never connected to: an exempt client's decision does not reach Redis.
    settings = Settings(exempt_networks="0.0.0.0/0", redis_url="redis://127.0.0.1:1/0")
    store = Store.from_settings(settings)
    limiter = Limiter(store, LimitConfig.from_settings(settings))
    metrics = Metrics()
    off = PolicyDecider(limiter, Replies.from_settings(settings))
    on = PolicyDecider(limiter, Replies.from_settings(settings), metrics=metrics)
    request = _request()
    for decider in (off, on):  # warm-up: memos filled, code paths hot
        await _cpu_per_call(decider, request, calls // 10)
    without, with_ = [], []
    for _ in range(rounds):
        without.append(await _cpu_per_call(off, request, calls))
        with_.append(await _cpu_per_call(on, request, calls))
    started = time.process_time()
    for _ in range(100):
        metrics.exposition()
    scrape = (time.process_time() - started) / 100
    await store.aclose()
    return statistics.median(without), statistics.median(with_), scrape


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.metrics_cost", description=__doc__)
    parser.add_argument("--calls", type=int, default=200_000, help="decisions per round")
    parser.add_argument("--rounds", type=int, default=7, help="alternating rounds (median)")
    args = parser.parse_args(argv)
    without, with_, scrape = asyncio.run(measure(args.calls, args.rounds))
    print(f"CPU per decision, metrics off: {without * 1e6:.3f} µs")
    print(f"CPU per decision, metrics on:  {with_ * 1e6:.3f} µs")
    print(f"added by counting:             {(with_ - without) * 1e6:.3f} µs (budget 2 µs)")
    print(f"CPU per /metrics scrape:       {scrape * 1e3:.3f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
