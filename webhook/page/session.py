"""Page sessions, used hand-offs and verification codes, kept in Redis.

A session is a Redis hash under a key derived from a random id; the id itself travels only in
the person's HttpOnly cookie. The key holds a SHA-256 of the id, so someone who can read Redis
(a replica, a backup) still cannot take over a session.

Keys (``KEY_PREFIX`` first): ``page:h:<sig>`` a used hand-off, ``page:s:{<hash>}`` a session,
``page:c:{<hash>}`` its current verification code (a string with a 5-minute TTL, read with GETDEL
so that it is used at most once even by two requests at the same moment). The hash is the two
keys' hash tag, so on a Redis Cluster a session and its code share a slot.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Any

from ratelimit.store import Store
from webhook.page.handoff import Handoff

# A verification code is single-use and valid 5 minutes (docs/interface.md).
CODE_TTL = 300
# docs/interface.md: five wrong codes end the session, so guessing a 5-digit code by trying
# (1 in 100,000 per try) needs a fresh hand-off from the login system every five tries.
MAX_WRONG_CODES = 5
# A session's key outlives SESSION_MAX_AGE by this much, so a person who comes back late is
# told "logged in too long" (-3) rather than the vaguer "unknown session" (-1).
KEEP_AFTER_MAX_AGE = 3600
# 32 random bytes: a session id nobody can guess (OWASP asks for at least 64 bits of entropy).
SESSION_ID_BYTES = 32

# Portal-check codes (docs/interface.md; the campus' own numbers).
UNKNOWN, IDLE, TOO_OLD, NO_SESSION, NOT_ELIGIBLE = "-1", "-2", "-3", "-4", "-5"
IP_MISMATCH = "ip_mismatch"


@dataclass(frozen=True, slots=True)
class Session:
    """One page session as stored."""

    id: str
    user: str
    role: str
    status: str
    ip: str
    created: float
    seen: float
    csrf: str
    wrong: int


def check(
    session: Session | None,
    *,
    now: float,
    idle: int,
    max_age: int,
    client_ip: str,
    eligible: frozenset[tuple[str, str]],
) -> str | None:
    """The portal-check failure of this request, or None when the session may be used.

    Age before idleness: someone both idle and logged in too long needs to log in again either
    way, and "too long" is the lasting reason.
    """
    if session is None:
        return UNKNOWN
    if now - session.created > max_age:
        return TOO_OLD
    if now - session.seen > idle:
        return IDLE
    if session.ip != client_ip:
        return IP_MISMATCH
    if (session.role, session.status) not in eligible:
        return NOT_ELIGIBLE
    return None


def new_code(digits: int = 5) -> str:
    """A verification code of ``digits`` digits (the audio captcha speaks digits only)."""
    return "".join(secrets.choice("0123456789") for _ in range(digits))


def same(a: str, b: str) -> bool:
    """Constant-time comparison of two texts (codes, CSRF tokens)."""
    return hmac.compare_digest(a.encode(), b.encode())


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


class PageSessions:
    """The page's Redis state for one store; every method is one bounded round trip."""

    def __init__(self, store: Store, *, max_age: int) -> None:
        self.store = store
        self.max_age = max_age
        self._prefix = f"{store.keys.prefix}page:"

    def _key(self, kind: str, session_id: str) -> str:
        digest = hashlib.sha256(session_id.encode()).hexdigest()
        return f"{self._prefix}{kind}:{{{digest}}}"

    async def claim_handoff(self, handoff: Handoff, ttl: int) -> bool:
        """True the first time this signed link is used; False for a replay.

        Kept as long as the link could still be valid, so a replay is refused for its whole life.
        """
        key = f"{self._prefix}h:{handoff.sig}"
        return await self.store.set(key, b"1", nx=True, ex=ttl)

    async def create(self, handoff: Handoff, now: float) -> Session:
        """A new session for the person the hand-off names, at the hand-off's address."""
        session = Session(
            id=secrets.token_urlsafe(SESSION_ID_BYTES),
            user=handoff.user,
            role=handoff.role,
            status=handoff.status,
            ip=handoff.ip,
            created=now,
            seen=now,
            csrf=secrets.token_urlsafe(32),
            wrong=0,
        )
        key = self._key("s", session.id)
        fields = {
            "user": session.user,
            "role": session.role,
            "status": session.status,
            "ip": session.ip,
            "created": repr(now),
            "seen": repr(now),
            "csrf": session.csrf,
            "wrong": "0",
        }

        async def write() -> None:
            pipe = self.store.pipeline()
            pipe.hset(key, items=[part for pair in fields.items() for part in pair])
            pipe.expireat(key, self._expiry(now))
            await pipe.execute()

        await self.store.call(write)
        return session

    def _expiry(self, created: float) -> int:
        return int(created) + self.max_age + KEEP_AFTER_MAX_AGE

    async def load(self, session_id: str) -> Session | None:
        """The session of this id, or None when the store does not know it."""
        key = self._key("s", session_id)
        raw = await self.store.hgetall(key)
        data = {_text(k): _text(v) for k, v in raw.items()}
        try:
            return Session(
                id=session_id,
                user=data["user"],
                role=data["role"],
                status=data["status"],
                ip=data["ip"],
                created=float(data["created"]),
                seen=float(data["seen"]),
                csrf=data["csrf"],
                wrong=int(data["wrong"]),
            )
        except (KeyError, ValueError):
            return None  # absent, or a remnant without its fields: unknown either way

    async def show(self, session: Session, now: float) -> str:
        """Mark the session used now and give it a fresh verification code; the code."""
        code = new_code()
        key, code_key = self._key("s", session.id), self._key("c", session.id)

        async def write() -> None:
            pipe = self.store.pipeline()
            pipe.hset(key, "seen", repr(now))
            # Re-stating the expiry keeps a hash re-created by this HSET (the session ended
            # between our read and this write) from living forever.
            pipe.expireat(key, self._expiry(session.created))
            pipe.set(code_key, code.encode(), ex=CODE_TTL)
            await pipe.execute()

        await self.store.call(write)
        return code

    async def take_code(self, session: Session, now: float) -> str | None:
        """The current code, removed so it can never be used again; marks the session used."""
        key, code_key = self._key("s", session.id), self._key("c", session.id)

        async def take() -> Any:
            pipe = self.store.pipeline()
            pipe.getdel(code_key)
            pipe.hset(key, "seen", repr(now))
            pipe.expireat(key, self._expiry(session.created))
            return (await pipe.execute())[0]

        raw = await self.store.call(take)
        return None if raw is None else _text(raw)

    async def peek_code(self, session_id: str) -> str | None:
        """The current code without using it (to draw its image or speak it)."""
        code_key = self._key("c", session_id)
        raw = await self.store.get(code_key)
        return None if raw is None else _text(raw)

    async def count_wrong(self, session: Session) -> int:
        """One more wrong code; how many so far. The session ends at MAX_WRONG_CODES."""
        key = self._key("s", session.id)

        async def count() -> int:
            pipe = self.store.pipeline()
            pipe.hincrby(key, "wrong", 1)
            pipe.expireat(key, self._expiry(session.created))
            return int((await pipe.execute())[0])

        wrong = await self.store.call(count)
        if wrong >= MAX_WRONG_CODES:
            await self.end(session.id)
        return wrong

    async def end(self, session_id: str) -> None:
        """Forget the session and its code."""
        keys = [self._key("s", session_id), self._key("c", session_id)]
        await self.store.delete(*keys)
