"""The event loop every command runs on: uvloop when installed (the ``fast`` extra).

Its own module, importing nothing else of the application, so the benchmarks' null server
runs on the same loop without loading the servers, the webhook or the settings.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable


def run_event_loop(coroutine: Awaitable[int]) -> int:
    """Run on uvloop when it is installed (the ``fast`` extra), else on asyncio's own loop."""
    try:
        import uvloop
    except ImportError:
        factory = None
    else:
        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coroutine)  # type: ignore[arg-type]
