"""Where the servers listen: the address syntax, the one bind helper and the one stale-socket rule.

It lives in ``ratelimit`` only because that is the package the policy server and the webhook
both import (they may not import each other, nor the application); it touches no Redis. Each
server binds through :func:`bind_listeners` and hands the sockets to its own framework (asyncio's
``create_server(sock=...)``, aiohttp's ``SockSite``), which listens with its own backlog; so TCP,
``[v6]:port`` and UNIX addresses, the error line and the clean-up on failure are the same for
both. The servers keep calling it themselves (rather than being given sockets by the service) so
that the tests and benchmarks that start one server on its own get the same rule.

A socket file left by a killed server makes ``bind`` fail with EADDRINUSE, so it is removed —
but only when it is a socket and nobody accepts on it. Anything else at the path (an ordinary
file, a directory, a symbolic link, a FIFO, a socket a running server listens on) is refused
with one line naming it: both servers may run as root, and a mistyped ``unix:`` path must never
cost an operator a file.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import re
import socket
import stat
from collections.abc import Sequence
from dataclasses import dataclass


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


@dataclass(frozen=True, slots=True)
class ListenAddress:
    """One address to listen on: TCP ``host:port``/``[v6]:port`` or ``unix:/path``."""

    host: str | None
    port: int | None
    path: str | None

    def __str__(self) -> str:
        if self.path is not None:
            return f"unix:{self.path}"
        if self.host is not None and ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


def parse_listen(text: str) -> tuple[ListenAddress, ...]:
    """Parse ``127.0.0.1:10031,[::1]:10031,unix:/run/x.sock``. Raises ValueError."""
    found: list[ListenAddress] = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        if item.startswith("unix:"):
            path = item[len("unix:") :]
            if not path.startswith("/"):
                raise ValueError(f"{item!r}: a UNIX socket path must be absolute")
            found.append(ListenAddress(None, None, path))
            continue
        match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:([0-9]{1,5})|([^:\[\]]+):([0-9]{1,5})", item)
        if match is None:
            raise ValueError(f"{item!r} is not host:port, [v6addr]:port or unix:/path")
        host = match.group(1) or match.group(3)
        port = int(match.group(2) or match.group(4))
        if match.group(1):
            try:
                ipaddress.IPv6Address(host)
            except ValueError:
                raise ValueError(f"{item!r}: {host!r} is not an IPv6 address") from None
        if not 0 < port < 65536:
            raise ValueError(f"{item!r}: port must be 1 to 65535")
        found.append(ListenAddress(host, port, None))
    if not found:
        raise ValueError("at least one address is needed")
    return tuple(found)


def bind_listeners(
    addresses: Sequence[ListenAddress], *, unix_mode: int | None = None
) -> list[socket.socket]:
    """Bind every address (not yet listening); raise OSError naming the first that failed.

    A host name may stand for several addresses (``localhost``: v4 and v6); each gets a socket,
    as asyncio's ``create_server`` would. On failure the sockets already bound are closed and the
    UNIX socket files this call created are removed, so nothing is left half-bound. ``unix_mode``
    is applied to each socket file (who may connect), when given.
    """
    bound: list[socket.socket] = []
    try:
        for address in addresses:
            try:
                bound += _bind(address, unix_mode)
            except OSError as error:
                raise OSError(
                    error.errno, f"cannot listen on {address}: {error.strerror}"
                ) from None
    except BaseException:
        for sock in bound:
            if sock.family == socket.AF_UNIX:
                with contextlib.suppress(OSError):
                    os.unlink(sock.getsockname())  # ours: bound a moment ago by this call
            sock.close()
        raise
    return bound


def _bind(address: ListenAddress, unix_mode: int | None) -> list[socket.socket]:
    if address.path is not None:
        remove_stale_socket(address.path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(address.path)
            if unix_mode is not None:
                os.chmod(address.path, unix_mode)
        except BaseException:
            sock.close()
            raise
        return [sock]
    found: list[socket.socket] = []
    infos = socket.getaddrinfo(
        address.host, address.port or 0, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    try:
        for family, kind, proto, _, sockaddr in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            found.append(sock)
            # A restarted server rebinds at once, not after TIME_WAIT (as create_server does).
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                # [::]:port must not also take the v4 port that another address may name.
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(sockaddr)
    except BaseException:
        for sock in found:
            sock.close()
        raise
    return found
