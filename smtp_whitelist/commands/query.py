"""``query``: one policy request to a running server, as Postfix sends it; print the action."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from policyd.client import ask_once, query_request
from ratelimit.listen import parse_listen
from smtp_whitelist.commands.common import EXIT_FAILED, EXIT_OK, UsageError, address_arg
from smtp_whitelist.settings import Settings

# How long `query` waits for the policy server's answer: longer than STORE_TIMEOUT plus the
# server's own work, shorter than an operator's patience.
QUERY_TIMEOUT = 5.0


async def cmd_query(args: argparse.Namespace, settings: Settings, env: Path | None) -> int:
    address = address_arg(args.ip)
    if args.server:
        try:
            target = parse_listen(args.server)[0]
        except ValueError as error:
            raise UsageError(f"--server: {error}") from None
    else:
        target = settings.policy_listen[0]
    request = query_request(str(address), state=args.state, recipients=args.recipients)
    try:
        action = await asyncio.wait_for(ask_once(target, request), QUERY_TIMEOUT)
    except (OSError, TimeoutError) as error:
        print(f"smtp-whitelist: no answer from {target}: {error or 'timed out'}", file=sys.stderr)
        return EXIT_FAILED
    if action is None:
        print(f"smtp-whitelist: {target} closed the connection without an answer", file=sys.stderr)
        return EXIT_FAILED
    print(action)
    return EXIT_OK
