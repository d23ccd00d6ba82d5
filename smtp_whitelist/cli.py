"""The ``smtp-whitelist`` command: argparse, then dispatch (docs/interface.md, "Commands").

Exit status: 0 done; 1 the operation failed; 2 bad usage or invalid settings (one line per
problem, never a traceback); 3 Redis unreachable. The commands live in
:mod:`smtp_whitelist.commands`, the servers' process in :mod:`smtp_whitelist.service`.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import NoReturn

from policyd import logs
from ratelimit.grant_rules import MAX_WHITELIST_TTL
from ratelimit.store import StoreError, StoreUnavailable
from smtp_whitelist.commands import command_named
from smtp_whitelist.commands.common import (
    EXIT_FAILED,
    EXIT_STORE,
    EXIT_USAGE,
    UsageError,
)
from smtp_whitelist.loop import run_event_loop
from smtp_whitelist.settings import SettingsError, forget_inherited_copies, load_settings

DEFAULT_ENV_FILE = Path("/etc/smtp-whitelist/smtp-whitelist.env")
ENV_FILE_VARIABLE = "SMTP_WHITELIST_ENV_FILE"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="smtp-whitelist",
        description="Per-IP sending limits for Postfix, lifted for 60 minutes by a signed webhook.",
    )
    parser.add_argument(
        "--env-file",
        type=Path,
        help=f"settings file (default: ${ENV_FILE_VARIABLE}, else {DEFAULT_ENV_FILE} if present)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("policyd", help="run the policy server (Postfix talks to it)")
    sub.add_parser("webhook", help="run the webhook HTTP API (the portal talks to it)")
    sub.add_parser("serve", help="run both in one process")

    add = sub.add_parser("add", help="grant: IP is not limited for TTL seconds (no campus rule)")
    add.add_argument("ip")
    add.add_argument("--user", help="who the grant is for (default: your login name)")
    add.add_argument(
        "--ttl",
        type=_grant_ttl,
        help=f"seconds, 1 to {MAX_WHITELIST_TTL} (default: WHITELIST_TTL)",
    )

    remove = sub.add_parser("remove", help="end a grant now")
    remove.add_argument("ip")

    listing = sub.add_parser("list", help="live grants: IP, user, expiry")
    listing.add_argument("--json", action="store_true")

    show = sub.add_parser("show", help="one IP: grant (if any) and its use of every limit")
    show.add_argument("ip")
    show.add_argument("--json", action="store_true")

    audit = sub.add_parser("audit", help="history of grants and removals")
    audit.add_argument("--ip")
    audit.add_argument("--user")
    audit.add_argument("--last", type=_positive_int, default=20, help="entries (default 20)")
    audit.add_argument("--json", action="store_true")

    query = sub.add_parser("query", help="send one policy request to a running server")
    query.add_argument("ip")
    query.add_argument(
        "--state",
        default="RCPT",
        type=str.upper,
        help="protocol_state (default RCPT: checks without counting; DATA counts a message)",
    )
    query.add_argument("--recipients", type=_non_negative_int, default=1)
    query.add_argument(
        "--server",
        help="host:port, [v6addr]:port or unix:/path (default: the first POLICY_LISTEN address)",
    )

    sub.add_parser("check", help="validate settings, reach Redis, print the effective settings")

    reset = sub.add_parser("reset", help="clear a client's counts (false positive, cleaned PC)")
    reset.add_argument("ip")

    top = sub.add_parser("top", help="the clients refused most often")
    top.add_argument("--since", default="1h", help="span, e.g. 30m, 1h, 1d (default 1h)")
    top.add_argument("--last", type=_positive_int, default=20, help="clients (default 20)")
    top.add_argument("--now", action="store_true", help="only clients refused right now")
    top.add_argument("--json", action="store_true")

    limited = sub.add_parser("limited", help="clients refused right now (= top --now)")
    limited.add_argument("--last", type=_positive_int, default=20, help="clients (default 20)")
    limited.add_argument("--json", action="store_true")

    handoff = sub.add_parser(
        "handoff-url", help="print a signed hand-off URL to the self-service page"
    )
    for name in ("user", "role", "status", "ip"):
        handoff.add_argument(f"--{name}", required=True)
    handoff.add_argument("--base", help="the page's URL, ending in /apply (default: PAGE_URL)")
    return parser


def _positive_int(text: str) -> int:
    # ASCII only: str.isdigit() also takes "²", which int() then refuses.
    if not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return int(text)


def _grant_ttl(text: str) -> int:
    # Bounded as WHITELIST_TTL is: beyond it Redis refuses the expiry (and a 3,000-year grant
    # is a typo, not an override).
    seconds = _positive_int(text)
    if seconds > MAX_WHITELIST_TTL:
        raise argparse.ArgumentTypeError(f"{text!r} is more than {MAX_WHITELIST_TTL} seconds")
    return seconds


def _non_negative_int(text: str) -> int:
    if not (text.isascii() and text.isdigit()):
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number")
    return int(text)


def _env_file(option: Path | None) -> Path | None:
    if option is not None:
        return option
    if os.environ.get(ENV_FILE_VARIABLE):
        return Path(os.environ[ENV_FILE_VARIABLE])
    return DEFAULT_ENV_FILE if DEFAULT_ENV_FILE.is_file() else None


def main(argv: list[str] | None = None) -> NoReturn:
    """The console script."""
    try:
        status = run(argv)
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (`smtp-whitelist list | head`): not an error worth a traceback.
        # Point stdout at /dev/null so the interpreter's own flush at exit cannot fail again
        # (the recipe of Python's signal module documentation, "Note on SIGPIPE").
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        status = EXIT_FAILED
    sys.exit(status)


def run(argv: list[str] | None = None) -> int:
    """Parse the command line, load settings, run the command; return the exit status."""
    args = build_parser().parse_args(argv)  # exits 2 itself on bad usage
    env_file = _env_file(args.env_file)
    try:
        settings = load_settings(env_file)
    except SettingsError as error:
        for line in error.lines:
            print(f"smtp-whitelist: {line}", file=sys.stderr)
        return EXIT_USAGE
    try:
        logs.configure(settings.log_level, settings.log_format, settings.syslog_facility)
    except OSError as error:
        print(
            f"smtp-whitelist: SMTP_WHITELIST_SYSLOG_FACILITY: cannot reach {logs.SYSLOG_SOCKET}"
            f" ({error.strerror or error})",
            file=sys.stderr,
        )
        return EXIT_USAGE
    if env_file is not None:
        forget_inherited_copies(env_file)
    command = command_named(args.command)
    try:
        return run_event_loop(command(args, settings, env_file))
    except UsageError as error:
        print(f"smtp-whitelist: {error}", file=sys.stderr)
        return EXIT_USAGE
    except StoreError as error:
        # Redis is there and said no (out of memory, read-only): the operation failed.
        print(f"smtp-whitelist: {error}", file=sys.stderr)
        return EXIT_FAILED
    except StoreUnavailable as error:
        print(f"smtp-whitelist: Redis unreachable ({error})", file=sys.stderr)
        return EXIT_STORE
    except KeyboardInterrupt:
        return EXIT_FAILED
