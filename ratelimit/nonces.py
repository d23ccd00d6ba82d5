"""Used webhook nonces, shared by every webhook process through Redis."""

from __future__ import annotations

from ratelimit.store import Store


class NonceLedger:
    """Remembers each nonce for ``ttl`` seconds, so a replayed request is refused."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def claim(self, nonce: str, ttl: int) -> bool:
        """True the first time ``nonce`` is seen within ``ttl`` seconds; False for a replay."""
        key = self.store.keys.nonce(nonce)
        return await self.store.set(key, b"1", nx=True, ex=ttl)
