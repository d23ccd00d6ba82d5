"""What a decision costs inside Redis: ``INFO commandstats`` for batches of decide.lua.

    python -m benchmarks.lua_cost [--warm N] [--clients N ...] [SCRIPT.lua ...]

Starts its own redis-server (free port, no persistence) and runs 30,000 DATA decisions in
batches of 10 through each script, with the daemon's own arguments (limits 1000000/1h for
messages and for recipients), over 10,000 clients (about 3 messages each) and over 1,000 (about
30 each, so the recipient limit's window holds more members). Redis' own per-command time
(``usec`` of ``cmdstat_evalsha``) divided by the decisions, minimum and median of 9 runs per
script, scripts in turn: the machine's noise is large, the minimum is the cost. With no
arguments: the shipped ``ratelimit/lua/decide.lua`` and an empty script that only answers each
decision (the script floor of ``make bench``). Other files are variants to compare.
``--warm N`` runs the same decisions N times unmeasured first, so each client's log already
holds entries, as it does in ``make bench`` after its first round. ``--clients N`` (repeatable)
replaces the two client counts: 30 clients with ``--warm 1`` hold about 2,000 messages each.
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import redis

from benchmarks.decision_python import positive_int
from benchmarks.floorserver import EMPTY_SCRIPT, SHARED, data_decisions
from benchmarks.run import HOST, free_port, wait_for_port
from ratelimit.keys import KeyLayout

SHIPPED = Path(__file__).resolve().parent.parent / "ratelimit" / "lua" / "decide.lua"
BATCHES, BATCH = 3000, 10
RUNS = 9
KEYS = KeyLayout("b:")


def decisions_cost(client: redis.Redis, sha: str, clients: int, warm: int = 0) -> float:
    """µs of Redis time per decision for one run over ``clients`` client addresses, after
    ``warm`` unmeasured runs (so every client already has entries, as in a long bench)."""
    client.flushall()
    for seed in range(2, 2 + warm):
        decide(client, sha, clients, seed)
    client.config_resetstat()
    decide(client, sha, clients, 1)
    stats = client.info("commandstats")["cmdstat_evalsha"]
    return float(stats["usec"]) / (BATCHES * BATCH)


def decide(client: redis.Redis, sha: str, clients: int, seed: int, batches: int = BATCHES) -> None:
    """``batches`` script calls of BATCH DATA decisions each, for clients drawn with ``seed``."""
    rnd = random.Random(seed)
    pipe = client.pipeline(transaction=False)
    for n in range(batches):
        drawn = (rnd.randrange(clients) for _ in range(BATCH))
        keys, args = data_decisions(KEYS, [f"10.0.{i // 256}.{i % 256}" for i in drawn])
        pipe.evalsha(sha, len(keys), *keys, *SHARED, *args)
        if n % 100 == 99:
            pipe.execute()
    pipe.execute()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.lua_cost", description=__doc__)
    parser.add_argument("scripts", nargs="*", type=Path)
    parser.add_argument(
        "--warm",
        type=int,
        default=0,
        help="unmeasured runs first, so the clients' logs already hold entries (default 0)",
    )
    parser.add_argument(
        "--clients",
        type=positive_int,
        action="append",
        help="client addresses the decisions are spread over (default 10000, then 1000)",
    )
    args = parser.parse_args(argv)
    sources = {str(p): p.read_text() for p in args.scripts} or {
        "decide.lua": SHIPPED.read_text(),
        "empty script": EMPTY_SCRIPT,
    }
    port = free_port()
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    server = subprocess.Popen(
        [binary, "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, server)
        client = redis.Redis(host=HOST, port=port)
        shas = {name: client.script_load(source) for name, source in sources.items()}
        for clients in args.clients or (10_000, 1_000):
            costs: dict[str, list[float]] = {name: [] for name in sources}
            for _ in range(RUNS):
                for name, sha in shas.items():
                    costs[name].append(decisions_cost(client, sha, clients, args.warm))
            per_client = BATCHES * BATCH // clients
            before = per_client * args.warm
            for name, values in costs.items():
                print(
                    f"{name}: {clients:,} clients (~{per_client} messages each"
                    f"{f', after ~{before} each' if before else ''}): "
                    f"min {min(values):.2f} µs, median {statistics.median(values):.2f} µs"
                    " per decision inside Redis"
                )
        client.close()
    finally:
        server.terminate()
        server.wait(timeout=10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
