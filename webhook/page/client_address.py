"""The address a page request comes from: the socket peer, or what a trusted proxy says.

``X-Forwarded-For`` is believed only when the peer is in ``TRUSTED_PROXIES``. Each proxy appends
the address it received the request from, so the list is read from the right: trusted proxies
are skipped, and the first address that is not one is the client (anything to its left was
written by the client itself and may be forged). A peer on a UNIX socket is a local process,
the reverse proxy in front of us, and is trusted like a listed proxy.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from ratelimit.addresses import IPAddress, IPNetwork, in_networks, parse_ip

HEADER = "X-Forwarded-For"
# A real chain has a handful of hops; a longer header is noise we do not read.
MAX_HOPS = 32


def client_address(
    peer: str | None, forwarded: Sequence[str], trusted: Iterable[IPNetwork]
) -> IPAddress | None:
    """The client's address, or None when it cannot be known.

    ``peer`` is the socket peer's address (None or "" for a UNIX socket); ``forwarded`` every
    ``X-Forwarded-For`` header line, in order.
    """
    networks = tuple(trusted)
    peer_ip = parse_ip(peer) if peer else None
    if peer and peer_ip is None:
        return None
    peer_trusted = peer_ip is None or in_networks(peer_ip, networks)
    if not peer_trusted:
        return peer_ip  # an untrusted peer's X-Forwarded-For is ignored altogether
    hops = [hop.strip() for line in forwarded for hop in line.split(",")][-MAX_HOPS:]
    hops = [hop for hop in hops if hop]
    found = peer_ip
    for hop in reversed(hops):
        address = parse_ip(hop)
        if address is None:
            return None  # the hop we would believe is garbage: no address at all
        found = address
        if not in_networks(address, networks):
            return address
    return found
