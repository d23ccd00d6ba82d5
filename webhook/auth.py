"""The HMAC-SHA256 request signature of docs/interface.md, checked without I/O.

A request carries ``X-Timestamp`` (unix seconds), ``X-Nonce`` (16 to 64 characters of
``A-Z a-z 0-9 _ -``) and ``X-Signature: sha256=<hex>``, the HMAC-SHA256 with ``WEBHOOK_SECRET``
over ``timestamp + "\\n" + nonce + "\\n" + METHOD + "\\n" + path + "\\n" + raw body``.

This module only decides whether a signature is well-formed, correct and fresh. Whether the
nonce was seen before needs Redis and is asked by the application *after* this check passes,
so that unsigned traffic can never fill the nonce ledger.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass

# docs/interface.md: a timestamp more than 300 s from now is refused. Five minutes absorbs ordinary
# clock drift between the portal and this host without keeping a captured request useful for long.
TIMESTAMP_WINDOW = 300

# A request is acceptable from (timestamp - 300 s) to (timestamp + 300 s): 600 s in all. A nonce
# claimed at any moment of that span must be remembered until its end, hence twice the window.
NONCE_TTL = 2 * TIMESTAMP_WINDOW

# Unix seconds as decimal digits. Twelve digits reach far beyond any real clock and keep the
# header short; a sign, a fraction or spaces are malformed rather than guessed at.
_TIMESTAMP = re.compile(r"[0-9]{1,12}")
# docs/interface.md: 16 to 64 characters of A-Z a-z 0-9 _ -. 16 random characters from this alphabet
# are 96 bits, enough that two honest requests never collide; the alphabet is safe in a Redis key.
_NONCE = re.compile(r"[A-Za-z0-9_-]{16,64}")
# SHA-256 is 32 bytes, 64 hex digits. Either case is accepted, as hex digests come in both.
_SIGNATURE = re.compile(r"sha256=([0-9A-Fa-f]{64})")

TIMESTAMP_HEADER = "X-Timestamp"
NONCE_HEADER = "X-Nonce"
SIGNATURE_HEADER = "X-Signature"


class AuthError(Exception):
    """The request is not signed by the portal: the answer is 401 with this detail."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Signed:
    """What a correctly signed, fresh request carried: the nonce still has to be claimed."""

    timestamp: int
    nonce: str


def signing_input(timestamp: str, nonce: str, method: str, path: str, body: bytes) -> bytes:
    """The exact bytes the HMAC covers (docs/interface.md's Webhook section)."""
    head = f"{timestamp}\n{nonce}\n{method.upper()}\n{path}\n".encode()
    return head + body


def sign(secret: str, timestamp: str, nonce: str, method: str, path: str, body: bytes) -> str:
    """The ``X-Signature`` value for a request: what the portal computes (and the tests do)."""
    mac = hmac.new(
        secret.encode(), signing_input(timestamp, nonce, method, path, body), hashlib.sha256
    )
    return "sha256=" + mac.hexdigest()


def signed_headers(
    secret: str,
    method: str,
    path: str,
    body: bytes = b"",
    *,
    timestamp: str | None = None,
    nonce: str | None = None,
) -> dict[str, str]:
    """The three headers of a signed request, as the portal sends them: now, a fresh nonce.

    ``path`` is the raw path without its query, as :func:`verify` is given it.
    """
    timestamp = timestamp or str(int(time.time()))
    nonce = nonce or secrets.token_urlsafe(24)  # 32 characters of the nonce alphabet
    return {
        TIMESTAMP_HEADER: timestamp,
        NONCE_HEADER: nonce,
        SIGNATURE_HEADER: sign(secret, timestamp, nonce, method, path, body),
    }


def verify(
    secret: str,
    *,
    timestamp: str | None,
    nonce: str | None,
    signature: str | None,
    method: str,
    path: str,
    body: bytes,
    now: float,
) -> Signed:
    """Check the three headers against the request; raise :class:`AuthError` with the reason.

    ``path`` is the path as the client sent it (without the query string), so the portal signs
    exactly what it puts on the request line. The signature is checked before the timestamp's
    age so that the reason given to an unsigned caller never depends on anything but the key.
    """
    if timestamp is None:
        raise AuthError(f"missing {TIMESTAMP_HEADER} header")
    if nonce is None:
        raise AuthError(f"missing {NONCE_HEADER} header")
    if signature is None:
        raise AuthError(f"missing {SIGNATURE_HEADER} header")
    if not _TIMESTAMP.fullmatch(timestamp):
        raise AuthError(f"malformed {TIMESTAMP_HEADER}: unix seconds expected")
    if not _NONCE.fullmatch(nonce):
        raise AuthError(f"malformed {NONCE_HEADER}: 16 to 64 characters of A-Z a-z 0-9 _ -")
    match = _SIGNATURE.fullmatch(signature)
    if match is None:
        raise AuthError(f"malformed {SIGNATURE_HEADER}: sha256=<64 hex digits> expected")
    expected = sign(secret, timestamp, nonce, method, path, body).removeprefix("sha256=")
    # Constant-time: the comparison must not tell an attacker how many leading digits were right.
    if not hmac.compare_digest(expected.encode(), match.group(1).lower().encode()):
        raise AuthError("signature does not match")
    stamp = int(timestamp)
    if abs(now - stamp) > TIMESTAMP_WINDOW:
        raise AuthError(
            f"{TIMESTAMP_HEADER} is more than {TIMESTAMP_WINDOW} s from this server's clock"
        )
    return Signed(timestamp=stamp, nonce=nonce)
