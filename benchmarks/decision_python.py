"""What a decision costs in Python alone, beside what the script floor's Python costs.

    python -m benchmarks.decision_python [--batch 10] [--decisions 20000] [--rounds 7]

No Redis: the daemon's own objects — :meth:`PolicyDecider.answer`, the limiter, the store's
batcher on its Redis link — decide the same parsed DATA requests (10,000 client IPs, as
``make bench``) in batches of ``--batch``, the link writing to a transport that keeps nothing
and reading, for each batch, the reply Redis would send (every decision accepted). The script
floor's protocol (:mod:`benchmarks.floorserver`) does the same with the same requests. Both
take their event-loop turn per batch as they do serving. µs of wall time per decision, minimum
and median of the rounds, on a warm process (the first round is not counted). What is left
between the two is the decision's own Python: under load the daemon pays it again in caches,
which this does not show.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Callable

from benchmarks.floorserver import EMPTY_SHA, RedisRoundTrips
from benchmarks.loadgen import RequestMaker, client_ips, parse_mix
from policyd.protocol import PolicyRequest, RequestParser
from ratelimit.link import RedisLink
from ratelimit.link_batches import LinkBatcher
from ratelimit.store import Store
from smtp_whitelist.settings import Settings
from smtp_whitelist.wiring import build_policy


class Sink(asyncio.Transport):
    """A transport to Redis that takes every write and keeps nothing."""

    def write(self, data: bytes | bytearray | memoryview) -> None:
        pass

    def is_closing(self) -> bool:
        return False

    def abort(self) -> None:
        pass


def accepted_reply(decisions: int) -> bytes:
    """What Redis answers one script call of ``decisions`` decisions, each accepted."""
    return b"*%d\r\n" % decisions + b":0\r\n" * decisions


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: a whole number is needed here") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: at least 1")
    return value


def requests(count: int) -> list[PolicyRequest]:
    maker = RequestMaker(client_ips(10_000), parse_mix("DATA"), 1)
    parser = RequestParser()
    found: list[PolicyRequest] = []
    while len(found) < count:
        found.extend(parser.feed(maker.make()))
    return found


async def timed_round(
    made: list[PolicyRequest],
    batch: int,
    ask: Callable[[PolicyRequest, Callable[[str | None], None]], object],
    reply: Callable[[bytes], None],
) -> float:
    """µs per request: ``ask`` each request of a batch, one loop turn (the batch is sent),
    then ``reply`` with Redis' answer to it; every request must be answered DUNNO."""
    answered: list[str | None] = []
    later = answered.append
    replies = {n: accepted_reply(n) for n in {batch, len(made) % batch} if n}
    started = time.perf_counter()
    for i in range(0, len(made), batch):
        part = made[i : i + batch]
        for request in part:
            ask(request, later)
        await asyncio.sleep(0)
        reply(replies[len(part)])
    took = time.perf_counter() - started
    if answered != ["DUNNO"] * len(made):
        raise RuntimeError(f"{len(answered)} of {len(made)} requests answered DUNNO")
    return took / len(made) * 1e6


async def measure(batch: int, decisions: int, rounds: int) -> int:
    settings = Settings(
        message_limits="1000000/1h",
        recipient_limits="1000000/1h",
        redis_url="redis://127.0.0.1:1/0",  # never connected: the link below is Redis
    )
    store = Store.from_settings(settings)
    batcher = store.batcher
    if not isinstance(batcher, LinkBatcher):
        raise TypeError("a single Redis' batcher was expected")
    link = RedisLink(None)
    link.connection_made(Sink())
    batcher._link = link  # the batches' connection, as if opened (nothing reaches a socket)
    answer = build_policy(settings, store).decider.answer  # once: its memos warm, as a daemon's

    floor = RedisRoundTrips(EMPTY_SHA)
    floor.connection_made(Sink())

    made = requests(decisions)
    ours: list[float] = []
    theirs: list[float] = []
    for n in range(rounds + 1):
        mine = await timed_round(made, batch, answer, link.data_received)
        other = await timed_round(
            made, batch, lambda r, later: floor.ask(later, r.client_address), floor.data_received
        )
        if n:  # the first round warms caches and memos
            ours.append(mine)
            theirs.append(other)
    for name, values in (("daemon's decision", ours), ("script floor's path", theirs)):
        print(
            f"{name}: min {min(values):.2f} µs, median {statistics.median(values):.2f} µs"
            f" per decision (batches of {batch})"
        )
    print(f"the decision's own Python: {min(ours) - min(theirs):.2f} µs (minima)")
    batcher._link = None
    await store.aclose()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.decision_python", description=__doc__
    )
    parser.add_argument("--batch", type=positive_int, default=10)
    parser.add_argument("--decisions", type=positive_int, default=20_000)
    parser.add_argument("--rounds", type=positive_int, default=7)
    args = parser.parse_args(argv)
    return asyncio.run(measure(args.batch, args.decisions, args.rounds))


if __name__ == "__main__":
    sys.exit(main())
