"""``make bench``: the null server and ``smtp-whitelist policyd`` under the same load, one run.

Starts its own redis-server (free port, no persistence), the null server
(:mod:`benchmarks.nullserver`) and the real daemon as subprocesses, and drives both with
:mod:`benchmarks.loadgen`: 20 connections, 10,000 client IPs, DATA requests, limits so high that
nobody is limited. Rounds alternate null/ours so that a slow spell of the machine hits both; the
median round of each is reported with its ratio to the null server, and issue 13's table with
three floor servers (:mod:`benchmarks.floorserver`) measured in the same rounds and the open
loop (:mod:`benchmarks.openloop`). Then Redis memory per tracked client, the daemon's memory
with 1,000 idle connections, and two daemons on one Redis.

Every figure comes from /proc (CPU: utime+stime of the process; memory: VmRSS) or Redis
``INFO memory``; all traffic is on loopback, every load bounded in requests and seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import redis

from benchmarks.loadgen import LoadResult, client_ips, run_load, run_load_processes
from benchmarks.openloop import run_open_loop
from benchmarks.targets import FLOORS, HEADER, OpenRound, OpenRounds, closed_rows, open_rows
from ratelimit.limiter import LimitConfig, Limiter
from ratelimit.limits import Limit
from ratelimit.store import KeyLayout, Store

HOST = "127.0.0.1"
REPO = Path(__file__).resolve().parent.parent  # so `-m benchmarks.nullserver` imports
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# Limits so high nobody is limited during the throughput runs (the cost measured is the full
# check-and-count path: every request is a DATA request that gets counted).
NO_LIMIT_SETTINGS = {
    "SMTP_WHITELIST_MESSAGE_LIMITS": "1000000/1h",
    "SMTP_WHITELIST_RECIPIENT_LIMITS": "1000000/1h",
}
# How each floor server of the table (benchmarks.targets.FLOORS) is started: a bare PING, the
# empty script or decide.lua per batch.
FLOOR_CALLS = {"floor": "", "script floor": "--script", "decide floor": "--decide"}


# -- processes ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with {process.returncode} (see its log)")
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {HOST}:{port} after {timeout}s")


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process, in seconds (/proc/PID/stat fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Processes:
    """The subprocesses of one run; all stopped (SIGTERM, then SIGKILL) on exit."""

    def __init__(self, workdir: Path, policyd_tree: Path | None = None) -> None:
        self.workdir = workdir
        self.policyd_tree = policyd_tree  # run the daemon from this source tree instead
        self.started: list[subprocess.Popen[bytes]] = []
        self.env_file = workdir / "empty.env"
        self.env_file.write_text("")

    def start(self, args: Sequence[str], port: int, env: dict[str, str] | None = None) -> int:
        log = (self.workdir / f"{Path(args[0]).name}-{port}.log").open("wb")
        process = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        self.started.append(process)
        try:
            wait_for_port(port, process)
        except RuntimeError:
            log.close()
            sys.stderr.write(Path(log.name).read_text()[-2000:])
            raise
        return process.pid

    def redis(self, port: int) -> int:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        return self.start(
            [binary, "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no"],
            port,
        )

    def null_server(self, port: int) -> int:
        return self.start([sys.executable, "-m", "benchmarks.nullserver", f"{HOST}:{port}"], port)

    def floor_server(self, port: int, redis_port: int, *, call: str = "") -> int:
        """``call``: "" (PING per batch), "--script" (the empty script) or "--decide"."""
        command = [sys.executable, "-m", "benchmarks.floorserver", f"{HOST}:{port}"]
        command += ["--redis", f"{HOST}:{redis_port}"] + ([call] if call else [])
        return self.start(command, port)

    def policyd(self, port: int, redis_port: int, **settings: str) -> int:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SMTP_WHITELIST_")}
        env.update(
            {
                "SMTP_WHITELIST_ENV_FILE": str(self.env_file),
                "SMTP_WHITELIST_REDIS_URL": f"redis://{HOST}:{redis_port}/0",
                "SMTP_WHITELIST_POLICY_LISTEN": f"{HOST}:{port}",
                "SMTP_WHITELIST_LOG_LEVEL": "WARNING",
                **NO_LIMIT_SETTINGS,
                **settings,
            }
        )
        if self.policyd_tree is not None:
            # Its packages first on the path: an earlier commit's daemon, the same harness.
            env["PYTHONPATH"] = str(self.policyd_tree)
        script = Path(sys.executable).with_name("smtp-whitelist")
        return self.start([str(script), "policyd"], port, env)

    def stop_all(self) -> None:
        for process in self.started:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.started:
            try:
                process.wait(timeout=6)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


# -- measurements ------------------------------------------------------------------------------


@dataclass
class Round:
    """One measured load against one server."""

    result: LoadResult
    server_cpu: float  # seconds of CPU of the policy server(s) over the run
    redis_cpu: float
    rss: float  # MB, after the run

    @property
    def rate(self) -> float:
        return self.result.rate

    @property
    def per_1k(self) -> float:
        return 1000 * self.server_cpu / max(self.result.requests, 1)

    @property
    def redis_per_1k(self) -> float:
        return 1000 * self.redis_cpu / max(self.result.requests, 1)


def measure(
    targets: Sequence[tuple[str, int]],
    pids: Sequence[int],
    redis_pid: int,
    *,
    requests: int,
    duration: float,
    connections: int = 20,
    ips: int = 10_000,
    processes: int = 1,
    seed: int = 1,
) -> Round:
    before = [cpu_seconds(pid) for pid in pids]
    redis_before = cpu_seconds(redis_pid)
    result = run_load_processes(
        targets,
        processes=processes,
        connections=connections,
        requests=requests,
        duration=duration,
        ips=ips,
        seed=seed,
    )
    server = sum(cpu_seconds(pid) - b for pid, b in zip(pids, before, strict=True))
    return Round(result, server, cpu_seconds(redis_pid) - redis_before, max(map(rss_mb, pids)))


def open_loop_table(
    rates: Sequence[float],
    duration: float,
    rounds: int,
    servers: Sequence[tuple[str, int, int]],
    redis_pid: int,
) -> tuple[list[str], OpenRounds]:
    """Latency at fixed offered rates (benchmarks.openloop), null then ours, ``rounds`` times per
    rate: percentiles counted from each request's due time, the longest answer, and CPU per
    decision (the server's, and the server's plus Redis'). ``servers``: (name, port, pid), the
    null server first. The lines, and the rounds."""
    lines = [
        f"open loop: 20 connections, 10,000 client IPs, DATA, {duration:.0f} s per rate and"
        f" server, {rounds} rounds; latency from the due time",
        "| rate/s | round | server | p50 ms | p99 ms | p99.9 ms | max ms | CPU us/req"
        " | +Redis us/req |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    measured: OpenRounds = {}
    for rate in rates:
        for i in range(rounds):
            this_round: dict[str, OpenRound] = {}
            for name, port, pid in servers:
                before, redis_before = cpu_seconds(pid), cpu_seconds(redis_pid)
                result = run_open_loop(HOST, port, rate=rate, duration=duration)
                answered = max(result.load.requests, 1)
                cpu = 1e6 * (cpu_seconds(pid) - before) / answered
                redis_cpu = 1e6 * (cpu_seconds(redis_pid) - redis_before) / answered
                this_round[name] = OpenRound(
                    result.percentile(99),
                    result.percentile(99.9),
                    result.longest_ms,
                    cpu,
                    redis_cpu,
                )
                lines.append(
                    f"| {rate:,.0f} | {i + 1} | {name} | {result.percentile(50):.3f} |"
                    f" {result.percentile(99):.3f} | {result.percentile(99.9):.3f} |"
                    f" {result.longest_ms:.3f} | {cpu:.1f} | {cpu + redis_cpu:.1f} |"
                )
            measured.setdefault(rate, []).append(this_round)
    return lines, measured


def median_round(rounds: list[Round]) -> Round:
    rates = sorted(rounds, key=lambda r: r.result.rate)
    return rates[len(rates) // 2]


def used_memory(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


def memory_per_ip(
    client: redis.Redis, port: int, ips: int, messages: int, duration: float
) -> tuple[float, int, float]:
    """Bytes of Redis memory per client IP that sent ``messages`` messages (through policyd)."""
    client.flushall()
    time.sleep(0.2)
    base = used_memory(client)
    addresses = client_ips(ips, base="10.128.0.0")
    result = run_load(
        HOST,
        port,
        connections=20,
        requests=ips * messages,
        duration=duration,
        ips=addresses,
        cycle=True,
        seed=7,
    )
    keys = int(client.dbsize())
    delta = used_memory(client) - base
    return delta / max(keys, 1), keys, result.elapsed


def memory_at_limit(redis_port: int) -> tuple[int, int, int]:
    """One client sent 150 messages against the default 100/1h (and 1000/1h recipients): the
    used_memory delta and MEMORY USAGE of its key, and how many were accepted."""

    async def go() -> tuple[int, int, int]:
        client = redis.asyncio.Redis(host=HOST, port=redis_port)
        store = Store(client, KeyLayout("benchlimit:"), 2.0)
        limiter = Limiter(store, LimitConfig((Limit(100, 3600),), (Limit(1000, 3600),), 32, 64, ()))
        import ipaddress

        address = ipaddress.IPv4Address("198.51.100.7")
        await limiter.check(address)  # the script is loaded before the baseline
        base = int((await client.info("memory"))["used_memory"])
        accepted = 0
        for _ in range(150):
            verdict = await limiter.count_message(address, 1)
            accepted += verdict.outcome.value == "accepted"
        delta = int((await client.info("memory"))["used_memory"]) - base
        usage = await client.memory_usage(store.keys.client_log("198.51.100.7/32"))
        await client.aclose()
        return delta, int(usage or 0), accepted

    return asyncio.run(go())


def idle_connections_rss(pid: int, port: int, count: int) -> tuple[float, float, int]:
    """RSS of the server before and with ``count`` open idle connections (each asked once)."""

    async def go() -> tuple[float, float, int]:
        before = rss_mb(pid)
        request = (
            b"request=smtpd_access_policy\nprotocol_state=RCPT\nclient_address=192.0.2.1\n"
            b"recipient_count=0\n\n"
        )
        streams = []
        answered = 0
        try:
            for _ in range(count):
                streams.append(await asyncio.open_connection(HOST, port))
            for _, writer in streams:
                writer.write(request)
            for reader, _ in streams:
                reply = await asyncio.wait_for(reader.readuntil(b"\n\n"), 10)
                answered += reply.startswith(b"action=")
            await asyncio.sleep(1.0)
            return before, rss_mb(pid), answered
        finally:
            for _, writer in streams:
                writer.close()

    return asyncio.run(go())


# -- report ------------------------------------------------------------------------------------


def machine() -> list[str]:
    model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    redis_version = subprocess.run(
        [shutil.which("redis-server") or "redis-server", "--version"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    try:
        import uvloop

        loop = f"uvloop {getattr(uvloop, '__version__', '?')}"
    except ImportError:
        loop = "asyncio"
    try:
        import hiredis

        parser = f"hiredis {hiredis.__version__}"
    except ImportError:
        parser = "no hiredis"
    return [
        f"nproc {os.cpu_count()}, CPU {model}, {platform.system()} {platform.release()}",
        f"Python {platform.python_version()}, {loop}, redis-py {redis.__version__}, {parser}",
        redis_version,
    ]


def table(null: Round, ours: Round) -> list[str]:
    n, o = null.result, ours.result

    def ratio(a: float, b: float) -> str:
        return f"{a / b:.2f}x" if b else "-"

    rows = [
        ("requests/s", f"{n.rate:,.0f}", f"{o.rate:,.0f}", ratio(o.rate, n.rate), ">= 0.80x"),
        (
            "p50 latency ms",
            f"{n.percentile(50):.3f}",
            f"{o.percentile(50):.3f}",
            ratio(o.percentile(50), n.percentile(50)),
            "",
        ),
        (
            "p99 latency ms",
            f"{n.percentile(99):.3f}",
            f"{o.percentile(99):.3f}",
            ratio(o.percentile(99), n.percentile(99)),
            "<= 1.50x",
        ),
        (
            "server CPU s / 1k req",
            f"{null.per_1k:.4f}",
            f"{ours.per_1k:.4f}",
            ratio(ours.per_1k, null.per_1k),
            "<= 2.00x",
        ),
        ("redis CPU s / 1k req", "-", f"{ours.redis_per_1k:.4f}", "", "reported"),
        ("server RSS MB", f"{null.rss:.1f}", f"{ours.rss:.1f}", ratio(ours.rss, null.rss), ""),
        (
            "loadgen CPU s / 1k req",
            f"{1000 * n.cpu_seconds / max(n.requests, 1):.4f}",
            f"{1000 * o.cpu_seconds / max(o.requests, 1):.4f}",
            "",
            "",
        ),
        ("requests (errors)", f"{n.requests} ({n.errors})", f"{o.requests} ({o.errors})", "", ""),
    ]
    lines = [
        "| metric | null server | smtp-whitelist policyd | ratio | target |",
        "|---|---:|---:|---:|---|",
    ]
    lines += [f"| {a} | {b} | {c} | {d} | {e} |" for a, b, c, d, e in rows]
    return lines


@contextlib.contextmanager
def more_files() -> Iterator[None]:
    """1,000 idle connections need more descriptors than a 1024 soft limit leaves."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 8192)), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def open_rates(text: str) -> list[float]:
    """--open-rates: positive requests/s, comma-separated (a bad one: a usage error)."""
    try:
        found = [float(r) for r in text.split(",") if r.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: numbers of requests/s, e.g. 1000,3000"
        ) from None
    if any(r <= 0 for r in found):
        raise argparse.ArgumentTypeError(f"{text!r}: every rate must be above 0")
    return found


def source_tree(text: str) -> Path:
    """--policyd-tree: a directory holding the packages (else the installed daemon would run)."""
    tree = Path(text).resolve()
    if not (tree / "smtp_whitelist" / "__init__.py").is_file():
        raise argparse.ArgumentTypeError(f"{text}: no smtp_whitelist/ package in it")
    return tree


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    parser.add_argument("--rounds", type=int, default=3, help="null/ours rounds (median shown)")
    parser.add_argument("--requests", type=int, default=100_000, help="per round, at most")
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per round, at most")
    parser.add_argument("--memory-ips", type=int, default=100_000)
    parser.add_argument("--memory-messages", type=int, default=3)
    parser.add_argument("--idle-connections", type=int, default=1000)
    parser.add_argument("--no-scaling", action="store_true")
    parser.add_argument(
        "--open-rates",
        type=open_rates,
        default="1000,3000,6000",
        help="requests/s offered in the open-loop runs (comma-separated; empty: none)",
    )
    parser.add_argument("--open-duration", type=float, default=10.0, help="seconds per rate")
    parser.add_argument(
        "--metrics", action="store_true", help="policyd counts metrics (METRICS_LISTEN set)"
    )
    parser.add_argument(
        "--policyd-tree",
        type=source_tree,
        help="run smtp-whitelist policyd from this source tree (a checkout of another commit)",
    )
    args = parser.parse_args(argv)

    def served() -> dict[str, str]:
        return {"SMTP_WHITELIST_METRICS_LISTEN": f"{HOST}:{free_port()}"} if args.metrics else {}

    started = time.monotonic()
    out: list[str] = []

    def say(line: str = "") -> None:
        print(line, flush=True)
        out.append(line)

    with tempfile.TemporaryDirectory(prefix="swl-bench-") as tmp, more_files():
        procs = Processes(Path(tmp), args.policyd_tree)
        try:
            redis_port, null_port, ours_port, ours2_port = (free_port() for _ in range(4))
            redis_pid = procs.redis(redis_port)
            null_pid = procs.null_server(null_port)
            ours_pid = procs.policyd(ours_port, redis_port, **served())
            servers = [("null", null_port, null_pid), ("ours", ours_port, ours_pid)]
            for name in FLOORS:
                port = free_port()
                call = FLOOR_CALLS[name]
                servers.append((name, port, procs.floor_server(port, redis_port, call=call)))
            client = redis.Redis(host=HOST, port=redis_port)
            for line in machine():
                say(f"# {line}")
            say(
                f"# load: 20 connections, 10,000 client IPs, DATA, up to {args.requests:,}"
                f" requests or {args.duration:.0f} s per round, {args.rounds} rounds (median)"
            )
            # Warm-up: connections, script cache, allocator, CPU frequency.
            for _, port, _ in servers:
                run_load(HOST, port, requests=5_000, duration=10)
            closed: dict[str, list[Round]] = {name: [] for name, _, _ in servers}
            for i in range(args.rounds):
                for name, port, pid in servers:
                    r = measure(
                        [(HOST, port)],
                        [pid],
                        redis_pid,
                        requests=args.requests,
                        duration=args.duration,
                        seed=i + 1,
                    )
                    closed[name].append(r)
                    say(
                        f"# round {i + 1} {name}: {r.result.rate:,.0f} req/s,"
                        f" p99 {r.result.percentile(99):.3f} ms, {r.per_1k:.4f} CPU s/1k,"
                        f" Redis {r.redis_per_1k:.4f} CPU s/1k"
                    )
            say()
            for line in table(median_round(closed["null"]), median_round(closed["ours"])):
                say(line)

            rates = args.open_rates
            open_rounds: OpenRounds = {}
            if rates:
                say()
                lines, open_rounds = open_loop_table(
                    rates, args.open_duration, args.rounds, servers, redis_pid
                )
                for line in lines:
                    say(line)
            say()
            say("issue 13's targets, from this run:")
            rows = closed_rows(closed) + open_rows(open_rounds)
            for line in HEADER + rows:
                say(line)

            say()
            per_ip, keys, took = memory_per_ip(
                client, ours_port, args.memory_ips, args.memory_messages, 120
            )
            say(
                f"Redis memory per tracked client IP ({keys:,} IPs x {args.memory_messages}"
                f" messages, via policyd in {took:.0f} s): {per_ip:.0f} bytes (target <= 512)"
            )
            delta, usage, accepted = memory_at_limit(redis_port)
            say(
                f"one client at its limit (100/1h, 150 tried, {accepted} accepted):"
                f" used_memory +{delta:,} bytes, MEMORY USAGE of its key {usage:,} bytes"
            )
            for name, pid, port in (("null", null_pid, null_port), ("ours", ours_pid, ours_port)):
                before, with_idle, answered = idle_connections_rss(pid, port, args.idle_connections)
                say(
                    f"{name} server RSS: {before:.1f} MB, with {answered:,} open idle"
                    f" connections {with_idle:.1f} MB (target <= 64 MB)"
                )

            if not args.no_scaling:
                say()
                ours2_pid = procs.policyd(ours2_port, redis_port, **served())
                run_load(HOST, ours2_port, requests=5_000, duration=10)
                client.flushall()
                say("scaling: one Redis, policyd processes on separate ports, 20 connections")
                for label, targets, pids, processes in (
                    ("1 policyd, 1 loadgen process", [(HOST, ours_port)], [ours_pid], 1),
                    (
                        "2 policyd, 2 loadgen processes",
                        [(HOST, ours_port), (HOST, ours2_port)],
                        [ours_pid, ours2_pid],
                        2,
                    ),
                ):
                    gen_before = os.times()
                    r = measure(
                        targets,
                        pids,
                        redis_pid,
                        requests=args.requests,
                        duration=args.duration,
                        processes=processes,
                        seed=11,
                    )
                    gen = os.times()
                    gen_cpu = (gen.children_user - gen_before.children_user) + (
                        gen.children_system - gen_before.children_system
                    )
                    gen_cpu = gen_cpu if processes > 1 else r.result.cpu_seconds
                    busy = (r.server_cpu + r.redis_cpu + gen_cpu) / r.result.elapsed
                    say(
                        f"- {label}: {r.result.rate:,.0f} req/s, p99"
                        f" {r.result.percentile(99):.3f} ms; CPU per 1k: policyd {r.per_1k:.4f}"
                        f" s, redis {r.redis_per_1k:.4f} s, loadgen"
                        f" {1000 * gen_cpu / max(r.result.requests, 1):.4f} s;"
                        f" cores busy {busy:.2f} of {os.cpu_count()}"
                    )
            say()
            say(f"# bench took {time.monotonic() - started:.0f} s")
        finally:
            procs.stop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
