"""The campus rules that need no network: who may register, and which addresses may be granted.

Each check raises its own exception; :mod:`webhook.app` turns them into HTTP answers. The DNS
rule (a registered name) is in :mod:`webhook.registered_name` because it does I/O.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable

from ratelimit.addresses import IPAddress, IPNetwork, in_networks, parse_ip
from ratelimit.grant_rules import unicast_problem


class NotEligible(Exception):
    """The person's role and status are not in ``ELIGIBLE`` (403 ``not_eligible``)."""


class InvalidIp(Exception):
    """Not an address a computer can send mail from (422 ``invalid_ip``)."""


class IpNotAllowed(Exception):
    """A real address, but outside the networks that may be granted (422 ``ip_not_allowed``)."""


def check_eligible(role: str, status: str, eligible: Collection[tuple[str, str]]) -> None:
    """Raise :class:`NotEligible` unless ``(role, status)`` is one of the ``ELIGIBLE`` pairs.

    The comparison is exact: the portal sends the values the student information system uses,
    and guessing at case or spelling would widen who may register.
    """
    if (role, status) not in eligible:
        raise NotEligible(f"role {role!r} with status {status!r} may not register")


def parse_address(text: str) -> IPAddress | None:
    """The address written in ``text`` exactly (no surrounding space), or ``None``."""
    if text != text.strip():
        return None
    return parse_ip(text)


def check_ip(text: str, allowed_networks: Iterable[IPNetwork]) -> IPAddress:
    """The address a grant may be given to, normalised; raise the rule it breaks.

    With ``ALLOWED_NETWORKS`` set, the address must lie in one of them; left empty, any globally
    routable unicast address is allowed, so private or documentation ranges need to be listed
    on purpose. An IPv4-mapped IPv6 address is the IPv4 address it stands for.
    """
    address = parse_address(text)
    if address is None:
        raise InvalidIp("not an IPv4 or IPv6 address")
    problem = unicast_problem(address)
    if problem is not None:
        raise InvalidIp(f"{address} is {problem}")
    networks = tuple(allowed_networks)
    if networks:
        if not in_networks(address, networks):
            raise IpNotAllowed(f"{address} is not in the networks that may be granted")
    elif not address.is_global:
        raise IpNotAllowed(f"{address} is not a globally routable address")
    return address
