"""`make bench`'s table of issue 13's targets, and its command-line arguments: pure logic, tested
directly (the figures themselves are the machine's, measured by benchmarks/run.py)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import pytest

from benchmarks.openloop import tcp_address
from benchmarks.redis_instructions import callgrind_total
from benchmarks.run import FLOOR_CALLS, open_rates, source_tree
from benchmarks.targets import FLOORS, OpenRound, OpenRounds, closed_rows, open_rows


@dataclass(frozen=True)
class Closed:
    per_1k: float
    redis_per_1k: float
    rate: float


def cells(row: str) -> list[str]:
    return [cell.strip() for cell in row.strip("|").split("|")]


def test_closed_loop_rows_are_medians_of_each_rounds_ratio_with_the_floors_beside() -> None:
    null = [Closed(0.020, 0.0, 40_000), Closed(0.030, 0.0, 30_000), Closed(0.020, 0.0, 50_000)]
    ours = [Closed(0.028, 0.010, 22_000), Closed(0.060, 0.030, 9_000), Closed(0.030, 0.012, 24_000)]
    floor = [Closed(0.022, 0.004, 36_000)] * 3
    decide = [Closed(0.025, 0.010, 30_000)] * 3
    rows = closed_rows(
        {"null": null, "ours": ours, "floor": floor, "script floor": floor, "decide floor": decide}
    )
    throughput, daemon, redis_cpu, both = (cells(r) for r in rows)
    # Ratios per round: 0.55, 0.30, 0.48 -> median 0.48, below 0.5: not met.
    assert throughput[:3] == ["throughput, closed loop", "0.31-0.35x", "0.48x (0.30-0.55x)"]
    assert throughput[-2:] == [">= 0.5x", "NO"]
    # 1.4, 2.0, 1.5 -> 1.5: met (at most 1.5); the floor's 1.1, 0.73, 1.1 -> 1.10x.
    assert daemon[2] == "1.50x (1.40-2.00x)"
    # The decide floor: 1.25, 0.83, 1.25 -> 1.25x.
    assert daemon[3:] == ["1.10x", "1.10x", "1.25x", "<= 1.5x", "yes"]
    # Redis' CPU against the null server's own CPU: 0.5, 1.0, 0.6 -> 0.60x, met.
    assert (redis_cpu[2], redis_cpu[-1]) == ("0.60x (0.50-1.00x)", "yes")
    assert (both[2], both[-1]) == ("2.10x (1.90-3.00x)", "yes")


def test_open_loop_rows_per_rate_and_the_longest_answer_over_every_rate() -> None:
    def server(p99: float, p999: float, longest: float, cpu: float, redis: float) -> OpenRound:
        return OpenRound(p99, p999, longest, cpu, redis)

    null = server(1.0, 2.0, 4.0, 60.0, 0.0)
    rounds: OpenRounds = {
        1000.0: [
            {
                "null": null,
                "ours": server(1.5, 5.0, 6.0, 100.0, 50.0),
                "floor": null,
                "script floor": null,
                "decide floor": null,
            }
        ],
        3000.0: [
            {
                "null": null,
                "ours": server(3.0, 4.0, 12.0, 90.0, 40.0),
                "floor": null,
                "script floor": null,
                "decide floor": null,
            }
        ],
    }
    rows = [cells(r) for r in open_rows(rounds)]
    by_measure = {row[0]: row for row in rows}
    assert by_measure["p99 at 1,000/s"][2:] == [
        "1.50x (1.50-1.50x)",
        "1.00x",
        "1.00x",
        "1.00x",
        "<= 2x",
        "yes",
    ]
    assert by_measure["p99 at 3,000/s"][-1] == "NO"
    assert by_measure["p99.9 at 1,000/s"][1:3] == ["37x", "2.50x (2.50-2.50x)"]
    # The longest answer of a round is its longest at any rate: 12 ms, over the 10 ms allowed.
    longest = by_measure["longest answer, any rate (ms)"]
    assert longest[2:4] == ["12.00 ms (12.00-12.00 ms)", "4.00 ms"]
    assert longest[-1] == "NO"
    # Daemon + Redis at 1,000/s: (100 + 50) / 60.
    assert by_measure["daemon + Redis CPU per decision at 1,000/s"][2] == "2.50x (2.50-2.50x)"
    assert open_rows({}) == []


def test_rates_and_addresses_are_checked_as_the_command_line_is_read() -> None:
    assert open_rates("1000, 3000,") == [1000.0, 3000.0]
    assert open_rates("") == []
    assert tcp_address("127.0.0.1:6379") == ("127.0.0.1", 6379)
    assert tcp_address("[::1]:10031") == ("::1", 10031)
    for bad in ("fast", "1000,0", "-5"):
        with pytest.raises(argparse.ArgumentTypeError):
            open_rates(bad)
    for bad_address in ("localhost", "unix:/run/x.sock", "127.0.0.1:70000"):
        with pytest.raises(argparse.ArgumentTypeError, match=r"."):
            tcp_address(bad_address)
    with pytest.raises(argparse.ArgumentTypeError, match="at least one address is needed"):
        tcp_address("")
    with pytest.raises(argparse.ArgumentTypeError, match="one host:port is needed"):
        tcp_address("a:1,b:2")  # a clear word, not Python's unpacking error


def test_a_tree_without_the_packages_is_refused(tmp_path: Path) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="no smtp_whitelist/ package"):
        source_tree(str(tmp_path))


def test_the_decision_python_benchmark_answers_every_decision(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """benchmarks/decision_python.py runs the daemon's own decision path without Redis: every
    decision it measures is answered DUNNO through the batch's reply (it raises otherwise),
    and it reports both paths and the difference; a count that makes no sense is refused."""
    from benchmarks.decision_python import main

    assert main(["--decisions", "300", "--rounds", "1", "--batch", "7"]) == 0
    out = capsys.readouterr().out
    assert "daemon's decision: min" in out
    assert "script floor's path: min" in out
    assert "the decision's own Python:" in out
    for bad in (["--batch", "0"], ["--rounds", "x"]):  # a usage error, not a ZeroDivisionError
        with pytest.raises(SystemExit) as stopped:
            main(bad)
        assert stopped.value.code == 2


def test_every_floor_of_the_table_is_started_with_its_own_call() -> None:
    """A floor column of the table has a server started for it, each a different call."""
    assert set(FLOOR_CALLS) == set(FLOORS)
    assert len(set(FLOOR_CALLS.values())) == len(FLOORS)


def test_an_instruction_count_is_read_from_the_end_of_callgrinds_output(tmp_path: Path) -> None:
    out = tmp_path / "callgrind.out"
    out.write_text(
        "# callgrind format\nversion: 1\nevents: Ir\nfn=main\n16 3\nsummary: 554579251\n"
    )
    assert callgrind_total(out) == 554_579_251
    out.write_text("events: Ir\nfn=main\n16 3\ntotals: 1200\n")  # the same count, named anew
    assert callgrind_total(out) == 1200
    out.write_text("events: Ir\nfn=main\n")  # redis-server killed before callgrind wrote it
    with pytest.raises(ValueError, match="no summary"):
        callgrind_total(out)
