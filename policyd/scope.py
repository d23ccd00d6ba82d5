"""LIMITED_NETWORKS: which clients the policy server limits at all.

The snippet asks the policy server only about the clients the relay serves (``mynetworks`` and
SASL-authenticated clients). This is the second line of defence: a snippet pasted in the wrong
place, which also asks about inbound mail from the whole Internet, must not defer the world.
A client outside ``LIMITED_NETWORKS`` gets ``DUNNO`` and is not counted, unless it
authenticated (``sasl_username`` is set): an authenticated client is one the relay serves
wherever it connects from, and inbound mail from other servers never authenticates.
"""

from __future__ import annotations

from ratelimit.addresses import IPAddress, IPNetwork, in_networks

# Addresses remembered with their answer (network arithmetic costs a few µs per request); when
# this many are held the memo starts again from empty.
MAX_REMEMBERED = 16_384


class LimitedScope:
    """Whether a client is limited at all; empty networks mean every client Postfix asks about."""

    def __init__(self, networks: tuple[IPNetwork, ...]) -> None:
        self.networks = networks
        self._inside: dict[IPAddress, bool] = {}

    def covers(self, address: IPAddress, *, authenticated: bool) -> bool:
        if not self.networks or authenticated:
            return True
        inside = self._inside.get(address)
        if inside is None:
            inside = in_networks(address, self.networks)
            if len(self._inside) >= MAX_REMEMBERED:
                self._inside.clear()
            self._inside[address] = inside
        return inside
