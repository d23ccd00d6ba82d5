"""What a decision costs in Python alone, beside what the script floor's Python costs.

    python -m benchmarks.decision_python [--batch 10] [--decisions 20000] [--rounds 7]

No sockets and no Redis: the same parsed DATA requests (10,000 client IPs, as ``make bench``)
go through the daemon's own path — :meth:`PolicyDecider.answer`, the limiter, the batch queue,
grouping and packing the batch as ``EVALSHA``, and delivering an accepted reply to every
decision until its answer is handed back — in batches of ``--batch``; and through the script
floor's path (:mod:`benchmarks.floorserver`: queue the answer, build the same keys, pack the
same command, answer ``DUNNO``). µs of wall time per decision, minimum and median of the
rounds, on a warm process (the first round is not counted). What is left between the two is
the decision's own Python: under load the daemon pays it again in caches, which this does not
show.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from typing import Any

import hiredis

from benchmarks.floorserver import RedisRoundTrips, script_call
from benchmarks.loadgen import RequestMaker, client_ips, parse_mix
from policyd.protocol import PolicyRequest, RequestParser
from policyd.server import Answer
from ratelimit.batch import Pending, deliver_replies, script_calls
from ratelimit.scripts import Script
from ratelimit.store import Store
from smtp_whitelist.settings import Settings
from smtp_whitelist.wiring import build_policy

ACCEPTED = [0, 0, 0, 0]


class CollectingBatcher:
    """The batch queue of a Store, without Redis: keeps what is submitted for the caller."""

    def __init__(self) -> None:
        self.batch: list[Pending] = []

    def submit(
        self, script: Script, shared: list[Any], keys: Any, args: list[Any], slot: Any
    ) -> None:
        self.batch.append((script, shared, keys, args, slot))


def requests(count: int) -> list[PolicyRequest]:
    maker = RequestMaker(client_ips(10_000), parse_mix("DATA"), 1)
    parser = RequestParser()
    found: list[PolicyRequest] = []
    while len(found) < count:
        found.extend(parser.feed(maker.make()))
    return found


def daemon_round(
    answer: Answer, collecting: CollectingBatcher, batch: int, made: list[PolicyRequest]
) -> float:
    answered: list[str | None] = []
    later = answered.append
    started = time.perf_counter()
    for i in range(0, len(made), batch):
        for request in made[i : i + batch]:
            if answer(request, later) is not None:
                raise RuntimeError("answered without Redis: the benchmark measures nothing")
        pending, collecting.batch = collecting.batch, []
        calls = script_calls(pending, per_slot=False)
        b"".join([hiredis.pack_command(call.command()) for call in calls])
        deliver_replies(pending, calls, [[ACCEPTED] * len(pending)])
    took = time.perf_counter() - started
    if answered != ["DUNNO"] * len(made):
        raise RuntimeError("not every decision was answered DUNNO")
    return took / len(made) * 1e6


def floor_round(batch: int, made: list[PolicyRequest]) -> float:
    floor = RedisRoundTrips(script=True)
    floor.in_flight = []  # a batch is "out": ask() only queues
    answered: list[str | None] = []
    later = answered.append
    started = time.perf_counter()
    for i in range(0, len(made), batch):
        for request in made[i : i + batch]:
            floor.ask(later, request.client_address)
        addresses, floor.addresses = floor.addresses, []
        waiting, floor.waiting = floor.waiting, []
        script_call(addresses)
        for each in waiting:
            each("DUNNO")
    took = time.perf_counter() - started
    if len(answered) != len(made):
        raise RuntimeError("not every request was answered")
    return took / len(made) * 1e6


async def measure(batch: int, decisions: int, rounds: int) -> int:
    settings = Settings(
        message_limits="1000000/1h",
        recipient_limits="1000000/1h",
        redis_url="redis://127.0.0.1:1/0",  # never connected: nothing reaches Redis
    )
    store = Store.from_settings(settings)
    kept = store.batcher
    collecting = CollectingBatcher()
    store.batcher = collecting  # type: ignore[assignment]
    answer = build_policy(settings, store).decider.answer  # once: its memos warm, as a daemon's
    made = requests(decisions)
    ours: list[float] = []
    floor: list[float] = []
    for n in range(rounds + 1):
        mine = daemon_round(answer, collecting, batch, made)
        theirs = floor_round(batch, made)
        if n:  # the first round warms caches and memos
            ours.append(mine)
            floor.append(theirs)
    for name, values in (("daemon's decision", ours), ("script floor's path", floor)):
        print(
            f"{name}: min {min(values):.2f} µs, median {statistics.median(values):.2f} µs"
            f" per decision (batches of {batch})"
        )
    print(f"the decision's own Python: {min(ours) - min(floor):.2f} µs (minima)")
    store.batcher = kept
    await store.aclose()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.decision_python", description=__doc__
    )
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--decisions", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)
    return asyncio.run(measure(args.batch, args.decisions, args.rounds))


if __name__ == "__main__":
    sys.exit(main())
