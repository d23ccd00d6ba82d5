"""Making room for a UNIX listening socket: the one rule both servers follow.

It lives in ``ratelimit`` only because that is the package the policy server and the webhook
both import (they may not import each other); it touches the file system, not Redis.

A socket file left by a killed server makes ``bind`` fail with EADDRINUSE, so it is removed —
but only when it is a socket and nobody accepts on it. Anything else at the path (an ordinary
file, a directory, a symbolic link, a FIFO, a socket a running server listens on) is refused
with one line naming it: both servers may run as root, and a mistyped ``unix:`` path must never
cost an operator a file.
"""

from __future__ import annotations

import errno
import os
import socket
import stat


def remove_stale_socket(path: str) -> None:
    """Remove ``path`` if it is a socket nobody listens on; raise OSError if anything else is there.

    The OSError's ``strerror`` is one line naming the path, fit to show an operator.
    """
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise OSError(errno.EEXIST, f"{path} exists and is not a socket; not replacing it")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(path)
        except ConnectionRefusedError:
            os.unlink(path)  # nobody listens: left over from a run that did not clean up
            return
        except OSError as error:
            # EACCES and the like: whether someone listens cannot be told, so it is kept.
            raise OSError(
                errno.EEXIST,
                f"{path} is a socket that cannot be probed ({error.strerror}); not replacing it",
            ) from None
    raise OSError(errno.EADDRINUSE, f"{path} is in use by a running server")
