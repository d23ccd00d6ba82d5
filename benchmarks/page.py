"""The self-service page's answer time: p50/p99 of ``GET /apply`` over 1,000 requests.

``python -m benchmarks.page``. Starts its own redis-server (free port, no persistence) and
``smtp-whitelist webhook`` with the page on, hands over one person with ``handoff-url``, then
asks ``GET /apply`` with that session one request at a time (a person's browser does not ask in
parallel), each on a kept-alive connection. Every answer must be the page (``data-error="none"``)
or the run fails. What a request costs: reading the session, writing a new verification code and
the session's last use (one MULTI), reading the live grant, rendering the template. The DNS
check is off (no REQUIRED_PTR_SUFFIX): a lookup's time is the resolver's, not ours. Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from benchmarks.run import HOST, Processes, free_port

HANDOFF_SECRET = "bench-handoff-" + "b" * 40
WEBHOOK_SECRET = "bench-webhook-" + "w" * 40
# Requests before measuring: the first ones pay for connecting to Redis and compiling templates.
WARM_UP = 50


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def measure(base: str, url: str, requests: int) -> list[float]:
    jar = aiohttp.CookieJar(unsafe=True)  # keeps the cookie of an IP-address host
    async with aiohttp.ClientSession(cookie_jar=jar) as session:
        async with session.get(url) as response:
            text = await response.text()
            if 'data-error="none"' not in text:
                raise SystemExit(f"the hand-off did not open the page: {response.status}")
        times: list[float] = []
        for i in range(WARM_UP + requests):
            started = time.perf_counter()
            async with session.get(base + "/apply") as response:
                text = await response.text()
            elapsed = time.perf_counter() - started
            if response.status != 200 or 'data-error="none"' not in text:
                raise SystemExit(f"request {i}: {response.status}, not the page")
            if i >= WARM_UP:
                times.append(elapsed)
        return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="swl-page-bench-") as workdir:
        processes = Processes(Path(workdir))
        try:
            redis_port, port = free_port(), free_port()
            processes.redis(redis_port)
            env = {k: v for k, v in os.environ.items() if not k.startswith("SMTP_WHITELIST_")}
            env.update(
                {
                    "SMTP_WHITELIST_ENV_FILE": str(processes.env_file),
                    "SMTP_WHITELIST_REDIS_URL": f"redis://{HOST}:{redis_port}/0",
                    "SMTP_WHITELIST_WEBHOOK_LISTEN": f"{HOST}:{port}",
                    "SMTP_WHITELIST_WEBHOOK_SECRET": WEBHOOK_SECRET,
                    "SMTP_WHITELIST_HANDOFF_SECRET": HANDOFF_SECRET,
                    "SMTP_WHITELIST_LOG_LEVEL": "WARNING",
                }
            )
            script = str(Path(sys.executable).with_name("smtp-whitelist"))
            processes.start([script, "webhook"], port, env)
            base = f"http://{HOST}:{port}"
            url = subprocess.run(
                [script, "handoff-url", "--user", "bench", "--role", "staff",
                 "--status", "normal", "--ip", HOST, "--base", base + "/apply"],
                env=env, capture_output=True, text=True, check=True, timeout=30,
            ).stdout.strip()  # fmt: skip
            times = asyncio.run(measure(base, url, args.requests))
        finally:
            processes.stop_all()
    ms = [t * 1000 for t in times]
    print(f"GET /apply, {len(ms)} requests one at a time, after {WARM_UP} warm-up requests:")
    print(
        f"  p50 {percentile(ms, 0.50):.2f} ms   p99 {percentile(ms, 0.99):.2f} ms"
        f"   mean {statistics.fmean(ms):.2f} ms   max {max(ms):.2f} ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
