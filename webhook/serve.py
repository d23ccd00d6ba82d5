"""Serve the webhook application on ``WEBHOOK_LISTEN``: TCP, ``[v6]:port`` and UNIX sockets.

The CLI builds the application (:func:`webhook.app.build_app`), calls :func:`start_webhook`,
and on shutdown ``await runner.cleanup()``: the sites stop accepting, requests in flight get
:data:`SHUTDOWN_GRACE` seconds to finish, then the rest are cancelled (at most 2 x the grace).
"""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Sequence

from aiohttp import web

from ratelimit.listen import ListenAddress, bind_listeners, remove_stale_socket

log = logging.getLogger(__name__)

# docs/interface.md: on SIGTERM the process exits within 5 s. aiohttp waits this long for requests
# in flight to finish, then as long again for the cancelled ones to unwind before closing them:
# at most 2 x 1.5 s, which leaves the rest of the 5 s for the policy server and Redis.
SHUTDOWN_GRACE = 1.5
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
        # A request whose client went away (the portal gave up) stops at once instead of
        # holding one of the MAX_IN_FLIGHT places until DNS or Redis answer.
        handler_cancellation=True,
        shutdown_timeout=SHUTDOWN_GRACE,
        keepalive_timeout=KEEPALIVE_TIMEOUT,
        max_line_size=MAX_LINE_SIZE,
        max_field_size=MAX_FIELD_SIZE,
        max_headers=MAX_HEADERS,
    )
    sockets: list[str] = []  # only the ones this call bound: never someone else's file

    async def remove_sockets(_: web.Application) -> None:
        # A socket file left behind looks like a running webhook to whoever checks the path.
        for path in sockets:
            with contextlib.suppress(OSError):
                remove_stale_socket(path)

    # Registered before setup(), which freezes the application's signals.
    app.on_cleanup.append(remove_sockets)
    await runner.setup()
    try:
        bound = bind_listeners(addresses)
    except BaseException:
        await runner.cleanup()
        raise
    sockets += [sock.getsockname() for sock in bound if sock.family == socket.AF_UNIX]
    try:
        for sock in bound:
            await web.SockSite(runner, sock).start()
    except BaseException:
        for sock in bound:
            sock.close()  # those not yet handed to a site; closing twice is harmless
        await runner.cleanup()
        raise
    for address in addresses:
        log.info("webhook listening on %s", address)
    return runner


def bound_ports(runner: web.AppRunner) -> list[tuple[str, int]]:
    """The TCP ``(host, port)`` pairs actually bound (useful when a port was 0)."""
    found: list[tuple[str, int]] = []
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            found.append((str(address[0]), int(address[1])))
    return found
