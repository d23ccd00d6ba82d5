"""``check`` (settings, Redis, Postfix's wiring) and ``handoff-url`` (a signed link to the page)."""

from __future__ import annotations

import argparse
import socket
import time
from pathlib import Path

from policyd import logs
from policyd.postfix_config import data_check_present
from ratelimit.stage_evidence import StageEvidence
from smtp_whitelist.commands.common import EXIT_OK, UsageError, open_store
from smtp_whitelist.settings import Settings
from webhook.page.handoff import handoff_url


async def cmd_check(args: argparse.Namespace, settings: Settings, env: Path | None) -> int:
    print(f"env file: {env if env else '(none; environment only)'}")
    for name, value in settings.masked().items():
        print(f"{name}={value}")
    async with open_store(settings) as store:
        await store.ping()
        info = await store.server_info()
        note = await StageEvidence(store).read()
    if note is not None:
        # Known only once a policy server has seen the evidence (see policyd/stage_watch.py).
        print(
            f"WARNING: the policy server on {note.host} reported at {logs.rfc3339(note.at)}:"
            f" {note.text}"
        )
    if await data_check_present() is False:
        print(
            "WARNING: Postfix's smtpd_data_restrictions does not ask the policy server:"
            " nothing will be counted (see postfix-snippet.cf)"
        )
    if not settings.limited_networks:
        print(
            "note: SMTP_WHITELIST_LIMITED_NETWORKS is empty, so every client Postfix asks about"
            " is limited; set it to the campus networks (your mynetworks)"
        )
    print(f"redis: ok (version {info.get('redis_version', '?')}, {socket.gethostname()})")
    return EXIT_OK


async def cmd_handoff_url(args: argparse.Namespace, settings: Settings, env: Path | None) -> int:
    if settings.handoff_secret is None:
        raise UsageError("SMTP_WHITELIST_HANDOFF_SECRET: required to sign a hand-off URL")
    base = args.base or settings.page_url
    if not base:
        raise UsageError("--base: give the page's URL, or set SMTP_WHITELIST_PAGE_URL")
    url = handoff_url(
        base,
        settings.handoff_secret.get_secret_value(),
        user=args.user,
        role=args.role,
        status=args.status,
        ip=args.ip,
        ts=int(time.time()),
    )
    print(url)
    return EXIT_OK
