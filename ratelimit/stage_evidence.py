"""A note in Redis that the policy server has seen no DATA-stage requests, for ``check``.

The policy server knows when Postfix asks at RCPT but never at DATA (then nothing is counted,
see :mod:`policyd.stage_watch`); ``smtp-whitelist check`` runs in another process and can only
know it from here. The note is written once when the evidence is clear and removed by the first
DATA-stage request a policy server sees afterwards, so it never costs a decision a round trip.
"""

from __future__ import annotations

import json
import socket
import time
from dataclasses import dataclass

from ratelimit.store import Store

# A note nobody confirmed for a week is stale (every policy server that runs writes it again at
# the first evidence, and removes it at its first DATA request).
NOTE_TTL = 7 * 86400


@dataclass(frozen=True, slots=True)
class StageNote:
    """What a policy server reported: when, from which host, and why."""

    at: float
    host: str
    text: str


class StageEvidence:
    """Reads and writes the "no DATA-stage requests" note under the store's key prefix."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.key = f"{store.keys.prefix}stage:no-data"

    async def report(self, text: str) -> None:
        value = json.dumps({"at": time.time(), "host": socket.gethostname(), "text": text})
        await self.store.set(self.key, value, ex=NOTE_TTL)

    async def clear(self) -> None:
        await self.store.delete(self.key)

    async def read(self) -> StageNote | None:
        raw = await self.store.get(self.key)
        if raw is None:
            return None
        try:
            data = json.loads(raw)
            return StageNote(float(data["at"]), str(data["host"]), str(data["text"]))
        except (ValueError, KeyError, TypeError):
            return None  # not ours to interpret; the next report replaces it
