"""systemd readiness notification (``Type=notify``), standard library only.

systemd passes the path of an ``AF_UNIX`` datagram socket in ``$NOTIFY_SOCKET``; a service
reports its state by sending one datagram of newline-separated ``NAME=value`` lines to it
(``READY=1``, ``RELOADING=1``, ``STOPPING=1``, ``STATUS=...``). See sd_notify(3), whose
protocol this module follows: a path beginning with ``@`` names a socket in the Linux abstract
namespace (the ``@`` stands for a leading NUL byte), and without the variable there is nobody
to tell, so :func:`notify` does nothing.

Notification is best effort: a service must not fail because its supervisor could not be told,
so errors are logged and :func:`notify` returns False.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)

ENV_NAME = "NOTIFY_SOCKET"

# systemd's own limit on a notification message is far larger; states sent here are a few
# dozen bytes, and a bound keeps a runaway STATUS= text from being silently truncated.
MAX_MESSAGE_BYTES = 4096

# sendto on a datagram socket whose peer queue is full blocks; systemd drains its queue at
# once, so a short timeout only matters when the receiver is stuck, and then we give up.
SEND_TIMEOUT = 1.0


def _address(value: str) -> str | bytes | None:
    """The socket address for ``$NOTIFY_SOCKET``, or None when it is unusable."""
    if value.startswith("@"):
        # Abstract namespace: the kernel address is a NUL byte followed by the name.
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    # systemd 254+ may also pass vsock:CID:PORT, which a service on the same host never needs.
    return None


def notify(state: str) -> bool:
    """Send ``state`` (e.g. ``"READY=1"``) to systemd; True if a datagram was sent.

    Returns False, doing nothing, when ``$NOTIFY_SOCKET`` is unset (not started by systemd
    with ``Type=notify``); returns False and logs a warning when the send fails.
    """
    value = os.environ.get(ENV_NAME, "")
    if not value:
        return False
    address = _address(value)
    if address is None:
        log.warning("%s=%r is not a UNIX socket path; systemd not notified", ENV_NAME, value)
        return False
    message = state.encode()
    if len(message) > MAX_MESSAGE_BYTES:
        log.warning("sd_notify message of %d bytes not sent", len(message))
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.settimeout(SEND_TIMEOUT)
            sock.connect(address)
            sock.sendall(message)
    except OSError as error:
        log.warning("could not notify systemd (%s) of %r: %s", value, state, error)
        return False
    return True
