"""Serve the webhook application on ``WEBHOOK_LISTEN``: TCP, ``[v6]:port`` and UNIX sockets.

The CLI builds the application (:func:`webhook.app.build_app`), calls :func:`start_webhook`,
and on shutdown ``await runner.cleanup()``: the sites stop accepting, requests in flight get
:data:`SHUTDOWN_GRACE` seconds to finish, then the rest are cancelled.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Sequence

from aiohttp import web

from ratelimit.settings import ListenAddress

log = logging.getLogger(__name__)

# INTERFACE.md: on SIGTERM the process exits within 5 s. The webhook's requests in flight get
# this long to finish, which leaves the rest of the 5 s for the policy server and Redis.
SHUTDOWN_GRACE = 3.0
# An idle keep-alive connection from the portal is closed after this long. The portal makes a
# few requests a minute; holding idle sockets longer only costs file descriptors.
KEEPALIVE_TIMEOUT = 30.0
# Request line and header sizes (aiohttp's defaults are 8190). Our requests carry three short
# auth headers; smaller caps bound what an unauthenticated client can make us buffer.
MAX_LINE_SIZE = 2048
MAX_FIELD_SIZE = 2048
MAX_HEADERS = 32


async def start_webhook(app: web.Application, addresses: Sequence[ListenAddress]) -> web.AppRunner:
    """Start serving ``app`` on every address; the caller stops it with ``runner.cleanup()``.

    If one address cannot be bound, the ones already started are stopped again and the
    ``OSError`` is raised, so a half-started webhook never runs.
    """
    runner = web.AppRunner(
        app,
        handle_signals=False,  # the CLI owns SIGTERM/SIGHUP for the whole process
        shutdown_timeout=SHUTDOWN_GRACE,
        keepalive_timeout=KEEPALIVE_TIMEOUT,
        max_line_size=MAX_LINE_SIZE,
        max_field_size=MAX_FIELD_SIZE,
        max_headers=MAX_HEADERS,
    )
    await runner.setup()
    try:
        for address in addresses:
            site: web.BaseSite
            if address.path is not None:
                _remove_stale_socket(address.path)
                site = web.UnixSite(runner, address.path)
            else:
                site = web.TCPSite(runner, address.host, address.port, reuse_address=True)
            await site.start()
            log.info("webhook listening on %s", address)
    except BaseException:
        await runner.cleanup()
        raise
    return runner


def bound_ports(runner: web.AppRunner) -> list[tuple[str, int]]:
    """The TCP ``(host, port)`` pairs actually bound (useful when a port was 0)."""
    found: list[tuple[str, int]] = []
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            found.append((str(address[0]), int(address[1])))
    return found


def _remove_stale_socket(path: str) -> None:
    """A UNIX socket left by a crashed run would make the bind fail; anything else is kept."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise OSError(f"{path} exists and is not a socket; not replacing it")
    os.unlink(path)
