"""The hand-off from the login system: a signed, short-lived, single-use link.

docs/interface.md, "Self-service page": the login system sends a logged-in person to
``/apply/handoff?user=U&role=R&status=S&ip=IP&ts=UNIX&sig=HEX``, where HEX is HMAC-SHA256 with
``HANDOFF_SECRET`` over ``user + "\\n" + role + "\\n" + status + "\\n" + ip + "\\n" + ts``.
:func:`sign` and :func:`handoff_url` are the reference signer (``smtp-whitelist handoff-url``);
:func:`verify` is the page's check. Pure functions: the single-use rule (Redis) is in
:mod:`webhook.page.session`.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlencode

FIELDS = ("user", "role", "status", "ip", "ts")

# Clocks of the login system and of this host, both kept by NTP, differ by well under a second;
# a link "from the future" by more than this was not made by a login system with a sane clock.
CLOCK_SKEW = 5
# A user name, role or status longer than this is no campus account; it would only make the
# session and the audit entry larger.
MAX_VALUE_LENGTH = 128


class HandoffInvalid(Exception):
    """Signature missing or wrong, or the link expired: 403 ``handoff_expired``."""


@dataclass(frozen=True, slots=True)
class Handoff:
    """A verified hand-off: who the login system says this is, and from which address."""

    user: str
    role: str
    status: str
    ip: str
    ts: int
    sig: str


def signed_text(user: str, role: str, status: str, ip: str, ts: str) -> bytes:
    """The exact bytes the signature covers."""
    return "\n".join((user, role, status, ip, ts)).encode()


def sign(secret: str, user: str, role: str, status: str, ip: str, ts: int | str) -> str:
    """HMAC-SHA256 of the hand-off fields, lower-case hex."""
    text = signed_text(user, role, status, ip, str(ts))
    return hmac.new(secret.encode(), text, hashlib.sha256).hexdigest()


def handoff_url(
    base: str, secret: str, *, user: str, role: str, status: str, ip: str, ts: int
) -> str:
    """The link the login system hands a person: ``base`` is the page's URL (``.../apply``)."""
    sig = sign(secret, user, role, status, ip, ts)
    query = urlencode(
        {"user": user, "role": role, "status": status, "ip": ip, "ts": ts, "sig": sig}
    )
    return f"{base.rstrip('/')}/handoff?{query}"


def verify(secret: str, query: Mapping[str, str], *, now: float, max_age: int) -> Handoff:
    """The hand-off in ``query`` (URL-decoded), or :class:`HandoffInvalid` saying why.

    The signature is compared in constant time, and checked before the time stamp is trusted.
    """
    values = {name: query.get(name) for name in (*FIELDS, "sig")}
    missing = [name for name, value in values.items() if value is None]
    if missing:
        raise HandoffInvalid(f"missing {', '.join(missing)}")
    user, role, status, ip, ts, sig = (str(values[name]) for name in (*FIELDS, "sig"))
    if any(len(v) > MAX_VALUE_LENGTH for v in (user, role, status, ip)):
        raise HandoffInvalid("a value is too long")
    if any(not v.isprintable() for v in (user, role, status, ip)):
        # Control characters would forge log lines; no login system sends them.
        raise HandoffInvalid("a value has control characters")
    expected = sign(secret, user, role, status, ip, ts)
    # compare_digest on ASCII text: a non-ASCII sig is simply wrong, never an exception.
    if not hmac.compare_digest(expected.encode(), sig.lower().encode("utf-8", "replace")):
        raise HandoffInvalid("wrong signature")
    if not ts.isascii() or not ts.isdigit():
        raise HandoffInvalid("ts is not a whole number")
    stamp = int(ts)
    if stamp > now + CLOCK_SKEW:
        raise HandoffInvalid("ts is in the future")
    if now - stamp > max_age:
        raise HandoffInvalid(f"older than {max_age} s")
    return Handoff(user, role, status, ip, stamp, expected)
