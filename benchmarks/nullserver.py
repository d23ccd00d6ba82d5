"""The floor: the same :class:`policyd.server.PolicyServer`, with a decision that does nothing.

Everything the real daemon does per request except deciding (accepting, reading, parsing,
queueing, answering, timers) happens here exactly as in ``smtp-whitelist policyd``, on the same
event loop implementation; only ``answer`` returns ``DUNNO`` at once, with no store.
The ratio of the real daemon to this one is therefore the cost of our decision and its Redis
round trip, and nothing else.

    python -m benchmarks.nullserver 127.0.0.1:10041
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from policyd.protocol import PolicyRequest
from policyd.server import Answer, ConnectionLimits, Later, PolicyServer
from ratelimit.listen import parse_listen
from smtp_whitelist.loop import run_event_loop


def null_answer(request: PolicyRequest, later: Later) -> str:
    """Every request: DUNNO at once, touching nothing."""
    return "DUNNO"


async def serve(listen: str, max_connections: int) -> int:
    return await serve_answers(listen, null_answer, max_connections)


async def serve_answers(listen: str, answer: Answer, max_connections: int = 1000) -> int:
    """A PolicyServer answering with ``answer`` on ``listen`` until SIGTERM or SIGINT (the floor
    servers of benchmarks/floorserver.py run the same way)."""
    loop = asyncio.get_running_loop()
    # The daemon's defaults (docs/interface.md): MAX_CONNECTIONS, IDLE_TIMEOUT, REQUEST_TIMEOUT.
    server = PolicyServer(answer, ConnectionLimits(max_connections, 600.0, 10.0))
    stopping = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    await server.start(parse_listen(listen))
    print("ready", flush=True)
    await stopping.wait()
    await server.stop(grace=4.0)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.nullserver", description=__doc__)
    parser.add_argument("listen", help="host:port, as POLICY_LISTEN")
    parser.add_argument("--max-connections", type=int, default=1000)
    args = parser.parse_args(argv)
    # The same event loop as smtp-whitelist's (uvloop when installed), so only the work differs.
    return run_event_loop(serve(args.listen, args.max_connections))


if __name__ == "__main__":
    sys.exit(main())
