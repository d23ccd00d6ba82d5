"""What may be granted, whoever grants it: the user name, and an address a computer sends from.

Every entry point (the webhook, ``smtp-whitelist add``, any later one) reaches Redis through
:meth:`ratelimit.grants.Grants.grant`, which applies these rules, so none can be skipped. The
webhook applies stricter campus rules first (no loopback, only ``ALLOWED_NETWORKS``, DNS); an
operator's ``add`` overrides those, not these.
"""

from __future__ import annotations

import ipaddress
import re

from ratelimit.addresses import IPAddress

# The longest grant, by WHITELIST_TTL or `add --ttl`: a week covers any operator's override,
# and a longer one is a typo (and beyond what Redis takes as an expiry in ms, an error).
MAX_WHITELIST_TTL = 7 * 86400

# Campus account names are short; 64 characters of this alphabet also cover an e-mail address
# used as a login. The name becomes part of a Redis key (``u:<user>``) and of log lines, and the
# OpenAPI ``Grant.user`` pattern promises it: nothing else (no ``:``, no space) may get in.
USER_PATTERN = r"^[A-Za-z0-9._@-]{1,64}$"
_USER = re.compile(r"[A-Za-z0-9._@-]{1,64}")

# RFC 1122 §3.2.1.3: 0.0.0.0/8 means "this host on this network" and is never a source address.
# Python's ipaddress only flags 0.0.0.0 itself as unspecified.
_THIS_NETWORK = ipaddress.IPv4Network("0.0.0.0/8")


class InvalidGrant(ValueError):
    """The user name or the address can never be granted (whoever asks)."""


def check_user(user: str) -> str:
    """``user`` if it is a valid user name; else raise :class:`InvalidGrant` saying why."""
    if not _USER.fullmatch(user):
        raise InvalidGrant(f"user {user[:70]!r} is not 1 to 64 characters of A-Z a-z 0-9 . _ @ -")
    return user


def unicast_problem(address: IPAddress, *, allow_loopback: bool = False) -> str | None:
    """Why ``address`` cannot be one computer's source address, or ``None`` when it can.

    ``allow_loopback``: an operator may grant a process on the relay itself; the portal may not.
    """
    if address.is_unspecified or (address.version == 4 and address in _THIS_NETWORK):
        return "an unspecified address"
    if address.is_loopback:
        # Checked before "reserved": Python counts ::1 as reserved (it lies in ::/8).
        return None if allow_loopback else "a loopback address"
    if address.is_multicast:
        return "a multicast address"
    if address.is_link_local:
        return "a link-local address"
    if isinstance(address, ipaddress.IPv6Address) and address.is_site_local:
        return "a site-local address (deprecated by RFC 3879)"
    if address.is_reserved:
        # Includes 240.0.0.0/4 and the limited broadcast 255.255.255.255.
        return "a reserved address"
    return None


def check_grantable(address: IPAddress, user: str) -> None:
    """Raise :class:`InvalidGrant` unless ``address`` and ``user`` may be granted by anyone."""
    check_user(user)
    problem = unicast_problem(address, allow_loopback=True)
    if problem is not None:
        raise InvalidGrant(f"{address} is {problem}")
