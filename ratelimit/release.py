"""When a refused client may send again (``smtp-whitelist show`` and ``limited``).

A client at a limit ``N/W`` may send again the moment enough of its oldest counted messages
have left the window that refuses it: the (used - N + 1)-th oldest entry of that window, plus W.
With several limits reached, the latest of those moments. Read, never written: the decision
script (lua/decide.lua) stays the only writer of a client's log.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ratelimit.limits import Limit
from ratelimit.store import Store

US = 1_000_000


def release_time(
    entries: Sequence[tuple[int, int]],
    now: int,
    message_limits: Sequence[Limit],
    recipient_limits: Sequence[Limit],
) -> int | None:
    """The time (µs) a one-recipient message would pass every limit; None when it passes now.

    ``entries``: the client's log as (time in µs, recipients), oldest first. An entry counts in a
    window W while its time >= now - W (the script's ZCOUNT), so it stops counting at time+W+1.
    """
    latest: int | None = None
    for limit in message_limits:
        window = limit.window * US
        inside = [at for at, _ in entries if at >= now - window]
        excess = len(inside) - limit.count + 1  # entries that must leave before one more fits
        if excess > 0:
            free = inside[excess - 1] + window + 1
            latest = free if latest is None else max(latest, free)
    for limit in recipient_limits:
        window = limit.window * US
        inside_r = [(at, n) for at, n in entries if at >= now - window]
        used = sum(n for _, n in inside_r)
        if used + 1 <= limit.count:
            continue
        for at, n in inside_r:
            used -= n
            if used + 1 <= limit.count:
                free = at + window + 1
                latest = free if latest is None else max(latest, free)
                break
    return latest


async def read_log(store: Store, network: str) -> tuple[list[tuple[int, int]], int]:
    """A client network's log, oldest first, and Redis' clock (µs), read together."""
    key = store.keys.client_log(network)

    async def read() -> list[Any]:
        if store.cluster:
            # A cluster pipeline refuses TIME: the clock is read just before the log instead.
            return [
                await store.time(),
                await store.entries_scored(key),
            ]
        pipe = store.pipeline()
        pipe.time()
        pipe.zrange(key, 0, "+inf", byscore=True, withscores=True)
        return list(await pipe.execute())

    (seconds, micros), members = await store.call(read)
    entries = [(int(score), int(member.split(b":", 1)[0])) for member, score in members]
    return entries, seconds * US + micros
