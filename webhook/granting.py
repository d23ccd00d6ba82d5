"""One grant under the campus rules, in their order: shared by the webhook API and the page.

eligibility (``not_eligible``) → IP validity (``invalid_ip``) → allowed networks
(``ip_not_allowed``) → registered name in DNS (``no_registered_name``, ``dns_timeout``,
``dns_error``) → the grant script (``too_many_grants``, or the grant). Each caller turns a
:class:`Refused` into its own answer (JSON for the API, a page for people); :data:`STATUS` is
the HTTP status docs/interface.md gives each code. Redis failing raises ``StoreUnavailable`` as is.
"""

from __future__ import annotations

import logging

from ratelimit.grants import Grant, Grants, TooManyGrants
from webhook import rules
from webhook.config import WebhookSettings
from webhook.registered_name import DnsError, DnsTimeout, NoRegisteredName, RegisteredNameChecker

STATUS = {
    "not_eligible": 403,
    "invalid_ip": 422,
    "ip_not_allowed": 422,
    "no_registered_name": 422,
    "too_many_grants": 429,
    "dns_error": 502,
    "dns_timeout": 504,
}

# The codes where a rule said no (counted as refused grants); a DNS failure is not one: the
# check could not be made, and the person did nothing wrong.
RULE_REFUSALS = frozenset(
    {"not_eligible", "invalid_ip", "ip_not_allowed", "no_registered_name", "too_many_grants"}
)


class Refused(Exception):
    """A campus rule refused the grant: ``code`` (a key of :data:`STATUS`) and why."""

    def __init__(self, code: str, detail: str, *, held: int = 0) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail
        self.held = held


async def grant_by_rules(
    settings: WebhookSettings,
    resolver: RegisteredNameChecker,
    grants: Grants,
    *,
    ip: str,
    user: str,
    role: str,
    status: str,
    source: str,
    log: logging.Logger,
) -> tuple[Grant, bool]:
    """Check every rule, then grant or refresh ``ip`` for ``user``; True when it is new.

    ``source`` names the caller in the audit trail and at the start of each log line. A
    refusal is not logged here: each caller logs it once, with what it knows of the request
    (the webhook's error middleware, the page's view).
    """
    try:
        rules.check_eligible(role, status, settings.eligible)
    except rules.NotEligible as error:
        raise Refused("not_eligible", str(error)) from None
    try:
        address = rules.check_ip(ip, settings.allowed_networks)
    except rules.InvalidIp as error:
        raise Refused("invalid_ip", str(error)) from None
    except rules.IpNotAllowed as error:
        raise Refused("ip_not_allowed", str(error)) from None
    try:
        name = await resolver.check(address)
    except NoRegisteredName as error:
        raise Refused("no_registered_name", str(error)) from None
    except DnsTimeout as error:
        log.warning("%s ip=%s user=%s: DNS timeout (%s)", source, address, user, error)
        raise Refused("dns_timeout", str(error)) from None
    except DnsError as error:
        log.warning("%s ip=%s user=%s: DNS failure (%s)", source, address, user, error)
        raise Refused("dns_error", str(error)) from None
    try:
        grant, created = await grants.grant(
            address,
            user=user,
            role=role,
            status=status,
            source=source,
            max_per_user=settings.max_grants_per_user,
        )
    except TooManyGrants as error:
        raise Refused(
            "too_many_grants",
            f"{user} already holds {error.held} live grants"
            f" (at most {settings.max_grants_per_user})",
            held=error.held,
        ) from None
    log.info(
        "%s %s ip=%s user=%s role=%s status=%s name=%s expires=%s",
        source,
        "grant" if created else "refresh",
        grant.ip,
        grant.user,
        grant.role,
        grant.status,
        name or "-",
        grant.expires_at.isoformat(timespec="seconds"),
    )
    return grant, created
