"""What a decision costs inside Redis, in instructions: a measure the machine's noise cannot move.

    python -m benchmarks.redis_instructions [--clients N] [--warm N] [--repeat N] [SCRIPT.lua ...]

``benchmarks.lua_cost`` reads Redis' own clock, and on this shared machine its minimum of nine
runs moves by a third from one hour to the next. This counts the instructions redis-server
executes instead (valgrind's callgrind, user space): the same decisions cost the same count to
within about 2 %, whatever else the machine is doing. Instructions are not time, as they leave
out cache misses, which a key lookup on 10,000 clients pays, so a change is judged by both.

For each script: a redis-server under callgrind, the same clients and decisions as the daemon
sends them (DATA, one recipient, batches of 10, limits 1000000/1h): ``--warm`` unmeasured
decisions per client first, then 3,000 measured ones; run once without the measured decisions
and once with them, and the difference divided by 3,000 is the count per decision, start-up,
the warm decisions and the shutdown cancelling out. With no scripts: the shipped
``ratelimit/lua/decide.lua`` and the empty script of ``make bench``'s script floor. Needs
valgrind (``apt-get install valgrind``); about a minute per script.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import redis

from benchmarks.decision_python import positive_int
from benchmarks.floorserver import EMPTY_SCRIPT
from benchmarks.lua_cost import BATCH, SHIPPED, decide
from benchmarks.run import HOST, free_port, wait_for_port

MEASURED = 3000
STARTUP = 60.0  # seconds: redis-server under callgrind starts some fifty times slower


def callgrind_total(out: Path) -> int:
    """The instruction count a callgrind output file ends with."""
    for line in out.read_text().splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise ValueError(f"{out}: no summary line")


def run_once(source: str, clients: int, warm: int, measured: int, workdir: Path) -> int:
    """Instructions redis-server executed, start to shutdown, for ``warm`` decisions per client
    and then ``measured`` more."""
    port = free_port()
    out = workdir / f"callgrind.{port}"
    server = subprocess.Popen(
        [
            shutil.which("valgrind") or "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={out}",
            shutil.which("redis-server") or "/usr/bin/redis-server",
            *("--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, server, timeout=STARTUP)
        client = redis.Redis(host=HOST, port=port)
        sha = client.script_load(source)
        decide(client, sha, clients, seed=2, batches=clients * warm // BATCH)
        decide(client, sha, clients, seed=1, batches=measured // BATCH)
        # The shutdown closes the connection before it answers.
        with contextlib.suppress(redis.ConnectionError):
            client.shutdown(nosave=True)
        server.wait(timeout=STARTUP)
        return callgrind_total(out)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


def per_decision(source: str, clients: int, warm: int, workdir: Path) -> float:
    without = run_once(source, clients, warm, 0, workdir)
    with_measured = run_once(source, clients, warm, MEASURED, workdir)
    return (with_measured - without) / MEASURED


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.redis_instructions")
    parser.add_argument("scripts", nargs="*", type=Path)
    parser.add_argument("--clients", type=positive_int, default=1000, help="addresses (1000)")
    parser.add_argument("--warm", type=int, default=3, help="decisions per client first (3)")
    parser.add_argument("--repeat", type=positive_int, default=1, help="runs per script (1)")
    args = parser.parse_args(argv)
    if args.warm < 0:
        parser.error(f"--warm {args.warm}: 0 or more")
    for missing in [p for p in args.scripts if not p.is_file()]:
        parser.error(f"{missing}: no such script")
    if shutil.which("valgrind") is None:
        print("valgrind is not installed: apt-get install valgrind", file=sys.stderr)
        return 2
    sources = {str(p): p.read_text() for p in args.scripts} or {
        "decide.lua": SHIPPED.read_text(),
        "empty script": EMPTY_SCRIPT,
    }
    counts: dict[str, list[float]] = {name: [] for name in sources}
    with tempfile.TemporaryDirectory() as workdir:
        for _ in range(args.repeat):
            for name, source in sources.items():  # in turn, so a drift would show in both
                counts[name].append(per_decision(source, args.clients, args.warm, Path(workdir)))
    for name, values in counts.items():
        spread = f" ({min(values):,.0f}-{max(values):,.0f})" if len(values) > 1 else ""
        print(
            f"{name}: {statistics.median(values):,.0f}{spread} instructions per decision "
            f"inside Redis ({args.clients:,} clients, {args.warm} decisions each first)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
