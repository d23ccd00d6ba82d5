"""What a client may send now: ``show``, ``reset``, ``top``, ``limited``."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from ratelimit.addresses import in_networks, parse_ip
from ratelimit.grants import Grants
from ratelimit.limiter import LimitConfig, Limiter
from ratelimit.offenders import MAX_SINCE, Offenders, parse_span
from ratelimit.release import read_log, release_time
from ratelimit.store import Store
from smtp_whitelist.commands.common import (
    EXIT_FAILED,
    EXIT_OK,
    UsageError,
    address_arg,
    duration,
    from_us,
    open_store,
    operator,
    time_text,
)
from smtp_whitelist.settings import Settings

log = logging.getLogger("policyd")


async def cmd_show(args: argparse.Namespace, settings: Settings, env: Path | None) -> int:
    address = address_arg(args.ip)
    async with open_store(settings) as store:
        limiter = Limiter(store, LimitConfig.from_settings(settings))
        grant = await Grants(store, settings).get(address)
        usage = await limiter.usage(address)
        exempt = in_networks(address, settings.exempt_networks)
        free_at, now = await release(store, settings, limiter.network_of(address))
    network = limiter.network_of(address)
    if grant or exempt:
        free_at = None  # not limited at all
    if args.json:
        print(
            json.dumps(
                {
                    "ip": str(address),
                    "network": network,
                    "exempt": exempt,
                    "grant": grant.as_json() if grant else None,
                    "limits": [
                        {"counts": u.counted.value, "limit": str(u.limit), "used": u.used}
                        for u in usage
                    ],
                    "refused_now": free_at is not None,
                    "may_send_at": time_text(from_us(free_at)) if free_at is not None else None,
                }
            )
        )
        return EXIT_OK
    print(f"{address} (counted as {network}){'  EXEMPT' if exempt else ''}")
    if grant:
        print(f"grant: {grant.user}, until {time_text(grant.expires_at)} ({grant.ttl} s left)")
    else:
        print("grant: none")
    for u in usage:
        state = "  REACHED" if u.used >= u.limit.count else ""
        print(f"{u.counted.value:<11} {u.used:>7} of {u.limit!s:<10}{state}")
    if free_at is None:
        print("may send: now")
    else:
        wait = -(-(free_at - now) // 1_000_000)  # whole seconds, rounded up
        print(f"may send again: {time_text(from_us(free_at))} (in {duration(wait)})")
    return EXIT_OK


async def release(store: Store, settings: Settings, network: str) -> tuple[int | None, int]:
    """When the network's client may send again (µs, None: now), and Redis' clock (µs)."""

    entries, now = await read_log(store, network)
    limits = settings.message_limits, settings.recipient_limits
    return release_time(entries, now, *limits), now


async def cmd_reset(args: argparse.Namespace, settings: Settings, env: Path | None) -> int:
    address = address_arg(args.ip)
    actor = operator()
    async with open_store(settings) as store:
        network = Limiter(store, LimitConfig.from_settings(settings)).network_of(address)
        cleared = await Offenders(store).reset(str(address), network, source="cli", actor=actor)
    if not cleared:
        print(f"smtp-whitelist: no counts for {address} ({network})", file=sys.stderr)
        return EXIT_FAILED
    log.info("reset the counts of client=%s network=%s by=%s", address, network, actor)
    print(f"cleared the counts of {address} (counted as {network})")
    return EXIT_OK


# `limited` checks at most this many recently refused clients (one Redis read each).
MAX_LIMITED_CANDIDATES = 1000


async def cmd_top(args: argparse.Namespace, settings: Settings, env: Path | None) -> int:
    try:
        since = parse_span(args.since)
    except ValueError as error:
        raise UsageError(f"--since: {error}") from None
    if args.now:
        return await limited(settings, args.last, args.json)
    async with open_store(settings) as store:
        found = await Offenders(store).top(min(since, MAX_SINCE), args.last)
    if args.json:
        print(json.dumps({"since": args.since, "items": [o.as_json() for o in found]}))
        return EXIT_OK
    if not found:
        print(f"no refusals in the last {args.since}")
    for o in found:
        print(f"{o.ip:<40} {o.refusals:>7}  {o.limit:<22} {time_text(o.last_refused)}")
    return EXIT_OK


async def cmd_limited(args: argparse.Namespace, settings: Settings, env: Path | None) -> int:
    return await limited(settings, args.last, args.json)


async def limited(settings: Settings, last: int, as_json: bool) -> int:
    """Clients that a limit refuses right now: refused lately, and still at a limit."""

    windows = [lim.window for lim in (*settings.message_limits, *settings.recipient_limits)]
    since = min(max(windows, default=3600), MAX_SINCE)
    rows: list[tuple[Any, int]] = []
    async with open_store(settings) as store:
        limiter = Limiter(store, LimitConfig.from_settings(settings))
        for o in await Offenders(store).top(since, MAX_LIMITED_CANDIDATES):
            address = parse_ip(o.ip)
            if address is None or in_networks(address, settings.exempt_networks):
                continue
            if await Grants(store, settings).get(address) is not None:
                continue  # granted since its refusals: not refused now
            free_at, _ = await release(store, settings, limiter.network_of(address))
            if free_at is not None:
                rows.append((o, free_at))
    rows = rows[:last]
    if as_json:
        items = [{**o.as_json(), "may_send_at": time_text(from_us(t))} for o, t in rows]
        print(json.dumps({"items": items}))
        return EXIT_OK
    if not rows:
        print("no client is refused right now")
    for o, t in rows:
        print(f"{o.ip:<40} {o.refusals:>7}  {o.limit:<22} until {time_text(from_us(t))}")
    return EXIT_OK
