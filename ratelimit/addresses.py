"""Client addresses: parsing, the prefix a client is counted under, exemptions.

Everything a client sends goes through :mod:`ipaddress` before it reaches a Redis key, so a
key name is always a normalised address or network, never raw input.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_ip(text: str) -> IPAddress | None:
    """An address from Postfix or a person; ``None`` when it is not one.

    Postfix writes IPv6 clients without brackets; an IPv4-mapped IPv6 address (``::ffff:a.b.c.d``,
    seen on dual-stack sockets) is the IPv4 client it stands for, so it shares that client's count.
    """
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address.scope_id is not None:
            return None
    return address


def client_network(address: IPAddress, ipv4_prefix: int, ipv6_prefix: int) -> IPNetwork:
    """The network a client is counted under (one IPv6 host usually owns a whole /64)."""
    prefix = ipv4_prefix if address.version == 4 else ipv6_prefix
    return ipaddress.ip_network((address, prefix), strict=False)


def parse_networks(text: str) -> tuple[IPNetwork, ...]:
    """Comma-separated CIDRs (host bits must be zero). Raises ValueError naming the bad one."""
    networks: list[IPNetwork] = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        try:
            networks.append(ipaddress.ip_network(item, strict=True))
        except ValueError as error:
            raise ValueError(f"{item!r} is not a network: {error}") from None
    return tuple(networks)


def in_networks(address: IPAddress, networks: Iterable[IPNetwork]) -> bool:
    """Whether the address lies in any of the networks (of its own family)."""
    return any(address.version == net.version and address in net for net in networks)
