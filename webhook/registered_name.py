"""Forward-confirmed reverse DNS: does an IP have a registered name under the campus domain?

The campus rule (``REQUIRED_PTR_SUFFIX``) is that a grant goes only to a computer whose
address has a name registered with the university. The check, looked up asynchronously with
dnspython so the event loop never blocks:

1. the PTR records of the address (``in-addr.arpa`` / ``ip6.arpa``);
2. each PTR name must lie under the suffix, on a label boundary and case-insensitively
   (``pc1.CS.nthu.edu.tw`` is under ``nthu.edu.tw``; ``evilnthu.edu.tw`` is not);
3. the A (IPv4) or AAAA (IPv6) records of such a name must contain the address again, so that
   whoever controls a reverse zone cannot claim a campus name on their own.

The address passes when at least one PTR name passes both steps. A lookup that could not be
made (no answer in time, a failing resolver) is an error the caller reports as such, never a
refusal: the person did nothing wrong, and the portal can ask them to retry later.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Sequence
from typing import TYPE_CHECKING

import dns.asyncresolver
import dns.exception
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver
import dns.reversename

from ratelimit.addresses import IPAddress

if TYPE_CHECKING:
    from webhook.config import WebhookSettings

# The portal waits for our answer while a person waits for the portal: the whole check (PTR
# plus forward lookups) gets this many seconds, after which the answer is 504 dns_timeout.
DNS_LIFETIME = 4.0
# One try at one server. Shorter than the lifetime so that with several DNS_SERVERS a silent
# first server still leaves time to ask the next (dnspython moves on after this timeout).
DNS_TRY_TIMEOUT = 1.5
# A host normally has one PTR name. Bounding the forward lookups per request keeps a hostile
# reverse zone with hundreds of names from turning one request into hundreds of queries.
MAX_PTR_NAMES = 5


class NoRegisteredName(Exception):
    """The DNS answered, and the address has no confirmed name under the suffix (422)."""


class DnsTimeout(Exception):
    """No DNS answer within the lifetime: the check could not be made (504 ``dns_timeout``)."""


class DnsError(Exception):
    """The resolver failed (SERVFAIL, REFUSED, a malformed answer): no decision (502)."""


class _Unconfirmed(Exception):
    """A PTR name whose forward records do not contain the address (internal)."""


class RegisteredNameChecker:
    """Checks the DNS rule for one configuration; built once at start-up and shared.

    ``suffix`` is lower-case without a trailing dot, ``""`` to skip the check altogether.
    ``servers`` are ``(host, port)`` pairs; empty means the system resolver (``resolv.conf``).
    """

    def __init__(
        self,
        suffix: str,
        servers: Sequence[tuple[str, int]] = (),
        *,
        lifetime: float = DNS_LIFETIME,
        try_timeout: float = DNS_TRY_TIMEOUT,
    ) -> None:
        self.suffix = suffix.strip(".").lower()
        self.lifetime = lifetime
        self._suffix_name = dns.name.from_text(self.suffix) if self.suffix else None
        self._resolver: dns.asyncresolver.Resolver | None = None
        if self._suffix_name is not None:
            # Only read resolv.conf when the check is on: a host without one can still run
            # the webhook with the check off. Reading it is a one-off at start-up.
            resolver = dns.asyncresolver.Resolver(configure=not servers)
            if servers:
                resolver.nameservers = [
                    dns.nameserver.Do53Nameserver(host, port) for host, port in servers
                ]
            resolver.timeout = min(try_timeout, lifetime)
            resolver.lifetime = lifetime
            # No cache: a name registered a minute ago must count now, and a withdrawn one must
            # stop counting now.
            resolver.cache = None
            self._resolver = resolver

    @classmethod
    def from_settings(cls, settings: WebhookSettings) -> RegisteredNameChecker:
        """The checker for ``REQUIRED_PTR_SUFFIX`` and ``DNS_SERVERS``."""
        return cls(settings.required_ptr_suffix, settings.dns_servers)

    @property
    def enabled(self) -> bool:
        """Whether a registered name is required at all."""
        return self._resolver is not None

    async def check(self, address: IPAddress) -> str | None:
        """The confirmed name of ``address`` (``None`` when the check is off).

        Raises :class:`NoRegisteredName`, :class:`DnsTimeout` or :class:`DnsError`.
        """
        resolver, suffix = self._resolver, self._suffix_name
        if resolver is None or suffix is None:
            return None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.lifetime
        reverse = dns.reversename.from_address(str(address))
        try:
            answer = await self._query(resolver, reverse, dns.rdatatype.PTR, deadline)
        except _Unconfirmed:
            raise NoRegisteredName(f"{address} has no PTR record") from None
        names = sorted({rdata.target.canonicalize() for rdata in answer})
        under = [name for name in names if name.is_subdomain(suffix)]
        if not under:
            raise NoRegisteredName(f"{address} is named {_show(names)}, not under {self.suffix}")
        failure: DnsTimeout | DnsError | None = None
        rdtype = dns.rdatatype.A if address.version == 4 else dns.rdatatype.AAAA
        for name in under[:MAX_PTR_NAMES]:
            try:
                forward = await self._query(resolver, name, rdtype, deadline)
            except _Unconfirmed:
                continue
            except (DnsTimeout, DnsError) as error:
                # Another name may still confirm the address; if none does, the failure
                # (not a refusal) is the answer, since this name might have confirmed it.
                failure = failure or error
                continue
            if any(ipaddress.ip_address(rdata.address) == address for rdata in forward):
                confirmed: str = name.to_text(omit_final_dot=True)
                return confirmed
        if failure is not None:
            raise failure
        raise NoRegisteredName(
            f"{address} is named {_show(under)}, which does not resolve back to {address}"
        )

    async def _query(
        self,
        resolver: dns.asyncresolver.Resolver,
        name: dns.name.Name,
        rdtype: dns.rdatatype.RdataType,
        deadline: float,
    ) -> dns.resolver.Answer:
        """One lookup within what is left of the lifetime, its failures sorted into ours."""
        remaining = deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            raise DnsTimeout(f"no DNS answer within {self.lifetime:g} s")
        try:
            return await resolver.resolve(
                name, rdtype, search=False, lifetime=remaining, raise_on_no_answer=True
            )
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            raise _Unconfirmed from None
        except dns.exception.Timeout:
            raise DnsTimeout(f"no DNS answer for {name} within {self.lifetime:g} s") from None
        except dns.resolver.NoNameservers:
            raise DnsError(f"the DNS servers failed to answer for {name}") from None
        except dns.exception.DNSException as error:
            raise DnsError(f"DNS lookup of {name} failed: {error}") from None


def _show(names: Sequence[dns.name.Name]) -> str:
    return ", ".join(name.to_text(omit_final_dot=True) for name in names[:MAX_PTR_NAMES])
