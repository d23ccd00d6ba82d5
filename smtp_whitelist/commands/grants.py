"""Grants by hand and their history: ``add``, ``remove``, ``list``, ``audit``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ratelimit.audit import AuditTrail
from ratelimit.grant_rules import InvalidGrant
from ratelimit.grants import Grants
from ratelimit.store import NotReplicated
from smtp_whitelist.commands.common import (
    EXIT_FAILED,
    EXIT_OK,
    UsageError,
    address_arg,
    open_store,
    operator,
    time_text,
)
from smtp_whitelist.settings import Settings


async def cmd_add(args: argparse.Namespace, settings: Settings, env: Path | None) -> int:
    address = address_arg(args.ip)
    actor = operator()
    user = args.user or actor
    async with open_store(settings) as store:
        try:
            grant, created = await Grants(store, settings).grant(
                address,
                user=user,
                role="operator",
                status="override",
                source="cli",
                ttl=args.ttl,
                max_per_user=None,
                actor=actor,
            )
        except InvalidGrant as error:
            raise UsageError(str(error)) from None
        except NotReplicated as error:
            print(f"smtp-whitelist: the grant may not have been kept: {error}", file=sys.stderr)
            return EXIT_FAILED
    verb = "granted" if created else "refreshed"
    print(f"{verb} {grant.ip} for {grant.user} until {time_text(grant.expires_at)} ({grant.ttl} s)")
    return EXIT_OK


async def cmd_remove(args: argparse.Namespace, settings: Settings, env: Path | None) -> int:
    address = address_arg(args.ip)
    actor = operator()
    async with open_store(settings) as store:
        grant = await Grants(store, settings).revoke(address, source="cli", actor=actor)
    if grant is None:
        print(f"smtp-whitelist: no grant for {address}", file=sys.stderr)
        return EXIT_FAILED
    print(f"removed the grant of {grant.ip} (user {grant.user})")
    return EXIT_OK


async def cmd_list(args: argparse.Namespace, settings: Settings, env: Path | None) -> int:
    async with open_store(settings) as store:
        grants = await Grants(store, settings).list()
    if args.json:
        print(json.dumps({"items": [g.as_json() for g in grants]}))
        return EXIT_OK
    if not grants:
        print("no live grants")
    for g in grants:
        print(f"{g.ip:<40} {g.user:<24} {time_text(g.expires_at)}  {g.ttl:>5} s  {g.source}")
    return EXIT_OK


async def cmd_audit(args: argparse.Namespace, settings: Settings, env: Path | None) -> int:
    ip = str(address_arg(args.ip)) if args.ip else None
    async with open_store(settings) as store:
        entries = await AuditTrail(store).read(ip=ip, user=args.user, last=args.last)
    if args.json:
        print(json.dumps({"items": [e.as_json() for e in entries]}))
        return EXIT_OK
    for e in entries:
        expires = f" expires={time_text(e.expires_at)}" if e.expires_at else ""
        actor = f" by={e.actor}" if e.actor else ""
        print(
            f"{time_text(e.at)} {e.event:<7} {e.ip} user={e.user} role={e.role} status={e.status}"
            f" source={e.source}{actor}{expires}"
        )
    return EXIT_OK
