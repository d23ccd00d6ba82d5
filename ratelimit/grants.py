"""Grants: an address that is not limited until its key expires (``WHITELIST_TTL``).

The webhook and ``smtp-whitelist add`` write the same key through :class:`Grants`; the policy
server only tests that the key exists (inside its decision script). Every grant, refresh and
removal is recorded in the audit stream by the same atomic script that makes it.

A grant is keyed under the client's counted network (:class:`~ratelimit.store.KeyLayout`), so
the policy server's decision script finds it in the slot of the client's log; the per-user cap
lives in the user's own slot. Granting is therefore two scripts: ``claim`` (cap, in the user's
slot) then ``grant`` (the grant and its audit record, in the network's slot). A failure between
them leaves the address listed in the user's index until the grant would have expired: the cap
errs towards refusing, never towards more grants than allowed.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from ratelimit.addresses import IPAddress, client_network
from ratelimit.audit import AUDIT_MAX_ENTRIES
from ratelimit.grant_rules import MAX_WHITELIST_TTL, check_grantable
from ratelimit.store import Script, Store, StoreUnavailable

log = logging.getLogger(__name__)

_CLAIM = Script("claim")
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


class GrantSettings(Protocol):
    """What grants read of the settings (the app's Settings satisfies it; never imported)."""

    @property
    def whitelist_ttl(self) -> int: ...
    @property
    def ipv4_prefix(self) -> int: ...
    @property
    def ipv6_prefix(self) -> int: ...


class Grants:
    """Grant, read, list and end grants. Every call is one bounded Redis round trip (list: SCAN)."""

    def __init__(self, store: Store, settings: GrantSettings) -> None:
        self.store = store
        self.default_ttl = settings.whitelist_ttl
        self.ipv4_prefix = settings.ipv4_prefix
        self.ipv6_prefix = settings.ipv6_prefix

    def _keys_of(self, ip: IPAddress) -> tuple[str, str]:
        """The grant key and the audit stream of ``ip`` (both in its network's slot)."""
        network = str(client_network(ip, self.ipv4_prefix, self.ipv6_prefix))
        return self.store.keys.grant(str(ip), network), self.store.keys.audit(network)

    async def _unlink(self, ip: str, user: str) -> None:
        """Drop ``ip`` from ``user``'s index; on failure the entry only lingers until it would
        have expired (it counts against that user's cap meanwhile), so a warning is enough."""
        key = self.store.keys.user_grants(user)
        try:
            await self.store.zrem(key, ip)
        except StoreUnavailable as error:
            log.warning("could not unlink %s from %s's grants (%s)", ip, user, error)

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
        Raises NotReplicated (a StoreUnavailable) when ``GRANT_MIN_REPLICAS`` replicas did not
        confirm the grant in time.
        """
        check_grantable(ip, user)
        ttl = self.default_ttl if ttl is None else ttl
        if not 1 <= ttl <= MAX_WHITELIST_TTL:
            raise ValueError(f"a grant lasts 1 to {MAX_WHITELIST_TTL} seconds, not {ttl}")
        address = str(ip)
        override = max_per_user is None
        if not override:
            # Refreshing one's own grant is always allowed, an override included.
            current = await self.get(ip)
            holds = "1" if current is not None and current.user == user else "0"
            claim = await self.store.run_script(
                _CLAIM,
                [self.store.keys.user_grants(user)],
                [address, ttl, max_per_user or 0, holds],
            )
            if claim[0] == -1:
                raise TooManyGrants(int(claim[1]))
        grant_key, audit_key = self._keys_of(ip)
        reply = await self.store.run_script_confirmed(
            _GRANT,
            [grant_key, audit_key],
            [address, user, role, status, source, ttl, AUDIT_MAX_ENTRIES, actor],
        )
        created, expires_ms, now_ms = (int(x) for x in reply[:3])
        holder = reply[3].decode() if isinstance(reply[3], bytes) else str(reply[3])
        if holder and (holder != user or override):
            # The address leaves the previous holder's count (an override never counts).
            await self._unlink(address, holder)
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
        key, _ = self._keys_of(ip)

        async def read() -> list[Any]:
            # One round trip, not a transaction: a grant that ends between the two reads has a
            # negative PTTL and counts as gone. (redis-py 8.1's cluster client breaks its
            # connections after a transaction pipeline, so none is used.)
            pipe = self.store.pipeline(transaction=False)
            pipe.get(key)
            pipe.pttl(key)
            return list(await pipe.execute())

        raw, pttl = await self.store.call(read)
        if raw is None or pttl < 0:
            return None
        return _decode(str(ip), raw, pttl)

    async def revoke(self, ip: IPAddress, *, source: str, actor: str | None = None) -> Grant | None:
        """End the grant of ``ip`` now; the ended grant, or None when there was none."""
        raw = await self.store.run_script(
            _REVOKE, list(self._keys_of(ip)), [str(ip), source, actor or "", AUDIT_MAX_ENTRIES]
        )
        if not raw:
            return None
        grant = _decode(str(ip), raw, 0)
        await self._unlink(grant.ip, grant.user)
        return grant

    async def list(self) -> list[Grant]:
        """Every live grant, soonest expiry first (SCAN on every master of a cluster)."""
        keys = self.store.keys

        async def read() -> list[Grant]:
            names = await self.store.scan_keys(keys.grant_pattern, SCAN_COUNT)
            if not names:
                return []
            pipe = self.store.pipeline(transaction=False)
            for name in names:
                pipe.get(name)
                pipe.pttl(name)
            values = await pipe.execute()
            found = []
            for i, name in enumerate(names):
                raw, pttl = values[2 * i], values[2 * i + 1]
                if raw is not None and pttl >= 0:
                    found.append(_decode(keys.address_of(name.decode()), raw, pttl))
            return found

        grants = await self.store.call(read)
        return sorted(grants, key=lambda g: (g.expires_at, g.ip))
