"""Grants: an address that is not limited until its key expires (``WHITELIST_TTL``).

The webhook and ``smtp-whitelist add`` write the same key through :class:`Grants`; the policy
server only tests that the key exists (inside its decision script). Every grant, refresh and
removal is recorded in the audit stream by the same atomic script that makes it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ratelimit.addresses import IPAddress
from ratelimit.audit import AUDIT_MAX_ENTRIES
from ratelimit.grant_rules import check_grantable
from ratelimit.settings import MAX_WHITELIST_TTL, Settings
from ratelimit.store import Script, Store

_GRANT = Script("grant")
_REVOKE = Script("revoke")

# SCAN batch size for listing grants: large enough to list a campus' grants in a few round
# trips, small enough that Redis never blocks noticeably on one call (SCAN, never KEYS).
SCAN_COUNT = 1000


class TooManyGrants(Exception):
    """The user already holds the most live grants allowed."""

    def __init__(self, held: int) -> None:
        super().__init__(f"already holds {held} live grants")
        self.held = held


@dataclass(frozen=True, slots=True)
class Grant:
    """One live grant."""

    ip: str
    user: str
    role: str
    status: str
    source: str
    granted_at: datetime
    expires_at: datetime
    ttl: int  # seconds remaining when it was read

    def as_json(self) -> dict[str, Any]:
        """The webhook's and ``list --json``'s shape."""
        return {
            "ip": self.ip,
            "user": self.user,
            "expires_at": rfc3339(self.expires_at),
            "ttl": self.ttl,
        }


def rfc3339(moment: datetime) -> str:
    """``2026-11-29T05:00:00Z``: UTC, whole seconds."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _from_ms(ms: int | float) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def _decode(ip: str, raw: bytes | str, pttl_ms: int) -> Grant:
    data = json.loads(raw)
    return Grant(
        ip=ip,
        user=str(data.get("user", "")),
        role=str(data.get("role", "")),
        status=str(data.get("status", "")),
        source=str(data.get("source", "")),
        granted_at=_from_ms(data.get("granted_at", 0)),
        expires_at=_from_ms(data.get("expires_at", 0)),
        ttl=max(0, -(-pttl_ms // 1000)),
    )


class Grants:
    """Grant, read, list and end grants. Every call is one bounded Redis round trip (list: SCAN)."""

    def __init__(self, store: Store, settings: Settings) -> None:
        self.store = store
        self.default_ttl = settings.whitelist_ttl

    async def grant(
        self,
        ip: IPAddress,
        *,
        user: str,
        role: str,
        status: str,
        source: str,
        ttl: int | None = None,
        max_per_user: int | None,
        actor: str = "",
    ) -> tuple[Grant, bool]:
        """Grant ``ip`` (or refresh it to the full TTL). True when it is a new grant.

        Raises InvalidGrant for a user name or address nobody may grant (whoever asks), and
        TooManyGrants when ``user`` holds ``max_per_user`` other live grants. None: the
        operator's override, which has no cap and does not count against the user's.
        ``actor``: who made the change, when not the user (the operator), for the audit trail.
        """
        check_grantable(ip, user)
        ttl = self.default_ttl if ttl is None else ttl
        if not 1 <= ttl <= MAX_WHITELIST_TTL:
            raise ValueError(f"a grant lasts 1 to {MAX_WHITELIST_TTL} seconds, not {ttl}")
        keys = self.store.keys
        address = str(ip)
        reply = await self.store.run_script(
            _GRANT,
            [keys.grant(address), keys.user_grants(user), keys.audit],
            [
                address,
                user,
                role,
                status,
                source,
                ttl,
                max_per_user or 0,
                AUDIT_MAX_ENTRIES,
                keys.user_grants_prefix,
                actor,
            ],
        )
        if reply[0] == -1:
            raise TooManyGrants(int(reply[1]))
        created, expires_ms, now_ms = (int(x) for x in reply)
        grant = Grant(
            ip=address,
            user=user,
            role=role,
            status=status,
            source=source,
            granted_at=_from_ms(now_ms),
            expires_at=_from_ms(expires_ms),
            ttl=ttl,
        )
        return grant, created == 1

    async def get(self, ip: IPAddress) -> Grant | None:
        """The live grant of ``ip``, if any."""
        key = self.store.keys.grant(str(ip))

        async def read() -> list[Any]:
            pipe = self.store.client.pipeline(transaction=True)
            pipe.get(key)
            pipe.pttl(key)
            return list(await pipe.execute())

        raw, pttl = await self.store.call(read)
        if raw is None or pttl < 0:
            return None
        return _decode(str(ip), raw, pttl)

    async def revoke(self, ip: IPAddress, *, source: str, actor: str | None = None) -> Grant | None:
        """End the grant of ``ip`` now; the ended grant, or None when there was none."""
        keys = self.store.keys
        raw = await self.store.run_script(
            _REVOKE,
            [keys.grant(str(ip)), keys.audit],
            [str(ip), source, actor or "", AUDIT_MAX_ENTRIES, keys.user_grants_prefix],
        )
        if not raw:
            return None
        return _decode(str(ip), raw, 0)

    async def list(self) -> list[Grant]:
        """Every live grant, soonest expiry first."""
        keys = self.store.keys
        cut = len(keys.grant(""))

        async def read() -> list[Grant]:
            names: list[bytes] = []
            async for name in self.store.client.scan_iter(keys.grant_pattern, count=SCAN_COUNT):
                names.append(name)
            if not names:
                return []
            pipe = self.store.client.pipeline(transaction=False)
            for name in names:
                pipe.get(name)
                pipe.pttl(name)
            values = await pipe.execute()
            found = []
            for i, name in enumerate(names):
                raw, pttl = values[2 * i], values[2 * i + 1]
                if raw is not None and pttl >= 0:
                    found.append(_decode(name.decode()[cut:], raw, pttl))
            return found

        grants = await self.store.call(read)
        return sorted(grants, key=lambda g: (g.expires_at, g.ip))
