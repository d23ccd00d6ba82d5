"""Issue 13's table: each target, the figure the issue measured before the work, this run's.

Every figure is a ratio to the null server measured next to it in the same run (a null round,
then ours, so a slow spell of the shared machine hits both), the median of the rounds' ratios,
with their range. The longest answer is in milliseconds, as its target is.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol


class ClosedRound(Protocol):
    """One closed-loop round of one server (benchmarks.run.Round)."""

    @property
    def per_1k(self) -> float: ...  # server CPU s per 1,000 requests
    @property
    def redis_per_1k(self) -> float: ...
    @property
    def rate(self) -> float: ...


@dataclass(frozen=True)
class OpenRound:
    """One open-loop round at one rate, of one server."""

    p99: float  # ms, from the due time
    p999: float
    longest: float
    cpu: float  # µs of the server per answered request
    redis_cpu: float  # µs of Redis per answered request


@dataclass(frozen=True)
class Target:
    measure: str
    before: str  # issue 13's "today" column, measured on main before the work
    goal: str
    limit: float
    at_most: bool  # the figure must be <= limit (else >= limit)


THROUGHPUT = Target("throughput, closed loop", "0.31-0.35x", ">= 0.5x", 0.5, False)
DAEMON_CPU = Target("daemon CPU per decision, closed loop", "2.1-2.3x", "<= 1.5x", 1.5, True)
REDIS_CPU = Target(
    "Redis CPU per decision (of null's CPU per request)", "1.2x", "<= 0.6x", 0.6, True
)
BOTH_CPU = Target("daemon + Redis CPU per decision, closed loop", "3.0-3.5x", "<= 2.1x", 2.1, True)
P99_BEFORE = {1000.0: "4.7x", 3000.0: "2.9x", 6000.0: "3.4x"}
P999 = "<= 3x"
LONGEST_MS = 10.0
BOTH_AT_1000 = Target("daemon + Redis CPU per decision at 1,000/s", "3.8x", "<= 2.5x", 2.5, True)


# The floor servers (benchmarks/floorserver.py) whose ratios stand beside ours: a bare PING
# per batch, an empty script per batch, and decide.lua itself per batch with none of the
# decision's Python (what is left between it and ours is the daemon's own work).
FLOORS = ("floor", "script floor", "decide floor")


def _row(
    target: Target, ratios: Sequence[float], floors: Sequence[Sequence[float]], unit: str = "x"
) -> str:
    middle = statistics.median(ratios)
    met = middle <= target.limit if target.at_most else middle >= target.limit
    spread = f"{min(ratios):.2f}-{max(ratios):.2f}{unit}"
    floor_cells = " | ".join(f"{statistics.median(f):.2f}{unit}" for f in floors)
    return (
        f"| {target.measure} | {target.before} | {middle:.2f}{unit} ({spread}) | {floor_cells} |"
        f" {target.goal} | {'yes' if met else 'NO'} |"
    )


def closed_rows(rounds: Mapping[str, Sequence[ClosedRound]]) -> list[str]:
    """Each closed-loop target: ours against null, and each floor server against null."""
    null = rounds["null"]

    def row(target: Target, figure: Callable[[ClosedRound, ClosedRound], float]) -> str:
        def ratios(name: str) -> list[float]:
            return [figure(n, o) for n, o in zip(null, rounds[name], strict=True)]

        return _row(target, ratios("ours"), [ratios(name) for name in FLOORS])

    return [
        row(THROUGHPUT, lambda n, o: o.rate / n.rate),
        row(DAEMON_CPU, lambda n, o: o.per_1k / n.per_1k),
        row(REDIS_CPU, lambda n, o: o.redis_per_1k / n.per_1k),
        row(BOTH_CPU, lambda n, o: (o.per_1k + o.redis_per_1k) / n.per_1k),
    ]


# One open-loop round at one rate: each server's result, by name.
OpenRounds = dict[float, list[dict[str, OpenRound]]]


def open_rows(rounds: OpenRounds) -> list[str]:
    """``rounds``: per offered rate, each round's results by server name."""

    def row(target: Target, figure: Callable[[OpenRound, OpenRound], float], rate: float) -> str:
        def ratios(name: str) -> list[float]:
            return [figure(r["null"], r[name]) for r in rounds[rate]]

        return _row(target, ratios("ours"), [ratios(name) for name in FLOORS])

    lines: list[str] = []
    if not rounds:
        return lines
    for rate in rounds:
        target = Target(f"p99 at {rate:,.0f}/s", P99_BEFORE.get(rate, "-"), "<= 2x", 2.0, True)
        lines.append(row(target, lambda n, o: o.p99 / n.p99, rate))
    for rate in rounds:
        before = "37x" if rate == 1000 else "-"
        target = Target(f"p99.9 at {rate:,.0f}/s", before, P999, 3.0, True)
        lines.append(row(target, lambda n, o: o.p999 / n.p999, rate))
    per_round = list(zip(*rounds.values(), strict=True))  # each: that round at every rate

    def longest(name: str) -> list[float]:
        return [max(r[name].longest for r in at_rates) for at_rates in per_round]

    lines.append(
        _row(
            Target("longest answer, any rate (ms)", "30 ms", "<= 10 ms", LONGEST_MS, True),
            longest("ours"),
            [longest(name) for name in FLOORS],
            " ms",
        )
    )
    if 1000.0 in rounds:
        lines.append(row(BOTH_AT_1000, lambda n, o: (o.cpu + o.redis_cpu) / n.cpu, 1000.0))
    return lines


HEADER = [
    "| measure (ratio to the null server; median of rounds (range)) | before (issue 13)"
    " | this run | floor: bare PING per batch | floor: empty script per batch"
    " | floor: decide.lua per batch, no decision in Python | target | met |",
    "|---|---|---|---|---|---|---|---|",
]
