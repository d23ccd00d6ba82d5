"""The ``smtp-whitelist`` command: the servers, and the operator's tools (INTERFACE.md).

Exit status: 0 done; 1 the operation failed; 2 bad usage or invalid settings (one line per
problem, never a traceback); 3 Redis unreachable. Dependencies (store, limiter, servers) are
built here, once, and passed in.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import json
import logging
import os
import resource
import secrets
import signal
import socket
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, NoReturn

from policyd import logs
from policyd.protocol import encode_request, parse_reply
from ratelimit.addresses import IPAddress, in_networks, parse_ip
from ratelimit.grant_rules import InvalidGrant
from ratelimit.settings import (
    MAX_WHITELIST_TTL,
    ListenAddress,
    Settings,
    SettingsError,
    forget_inherited_copies,
    load_settings,
    parse_listen,
)
from ratelimit.store import NotReplicated, Store, StoreError, StoreUnavailable

log = logging.getLogger("policyd")

DEFAULT_ENV_FILE = Path("/etc/smtp-whitelist/smtp-whitelist.env")
ENV_FILE_VARIABLE = "SMTP_WHITELIST_ENV_FILE"

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_STORE = 0, 1, 2, 3

# How long `query` waits for the policy server's answer: longer than STORE_TIMEOUT plus the
# server's own work, shorter than an operator's patience.
QUERY_TIMEOUT = 5.0


class UsageError(Exception):
    """Bad command-line input: exit 2 with this line."""


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


def _ip(text: str) -> IPAddress:
    address = parse_ip(text)
    if address is None:
        raise UsageError(f"{text!r} is not an IP address")
    return address


def main(argv: list[str] | None = None) -> NoReturn:
    """The console script."""
    sys.exit(run(argv))


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
    command: Callable[[argparse.Namespace, Settings, Path | None], Awaitable[int]]
    command = COMMANDS[args.command]
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


def run_event_loop(coroutine: Awaitable[int]) -> int:
    """Run on uvloop when it is installed (the ``fast`` extra), else on asyncio's own loop."""
    try:
        import uvloop
    except ImportError:
        factory = None
    else:
        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coroutine)  # type: ignore[arg-type]


# -- servers ----------------------------------------------------------------------------------

# SIGTERM must end the process within 5 s (INTERFACE.md): in-flight answers get this long.
SHUTDOWN_GRACE = 4.0


async def _cmd_policyd(args: argparse.Namespace, settings: Settings, env: Path | None) -> int:
    return await serve(settings, env, policy=True, webhook=False)


async def _cmd_webhook(args: argparse.Namespace, settings: Settings, env: Path | None) -> int:
    return await serve(settings, env, policy=False, webhook=True)


async def _cmd_serve(args: argparse.Namespace, settings: Settings, env: Path | None) -> int:
    return await serve(settings, env, policy=True, webhook=True)


async def serve(settings: Settings, env_file: Path | None, *, policy: bool, webhook: bool) -> int:
    """Run the policy server and/or the webhook until SIGTERM; SIGHUP reloads the settings."""
    from policyd.decision import PolicyDecider
    from policyd.reload import apply_reload
    from policyd.sdnotify import notify
    from policyd.server import ConnectionLimits, PolicyServer
    from policyd.stage_watch import StageWatch
    from ratelimit.limiter import LimitConfig, Limiter
    from ratelimit.metrics import Metrics
    from ratelimit.stage_evidence import StageEvidence
    from webhook.app import WEBHOOK

    if webhook and settings.webhook_secret is None:
        raise UsageError("SMTP_WHITELIST_WEBHOOK_SECRET: required to run the webhook")
    _raise_file_limit(settings.max_connections)
    loop = asyncio.get_running_loop()
    store = Store.from_settings(settings)
    limiter = Limiter(store, LimitConfig.from_settings(settings))
    watch = StageWatch()
    watch.set_limits(*smallest_counts(settings))
    evidence = StageEvidence(store)

    async def report(warning: str | None) -> None:
        await (evidence.clear() if warning is None else evidence.report(warning))

    # Built only when served: with METRICS_LISTEN empty nothing is counted at all.
    metrics = Metrics() if settings.metrics_listen else None
    decider = PolicyDecider.from_settings(limiter, settings, watch, report, metrics)
    server = PolicyServer(
        decider,
        ConnectionLimits(settings.max_connections, settings.idle_timeout, settings.request_timeout),
    )
    if metrics is not None:
        metrics.watch_connections(lambda: len(server.connections))
        metrics.watch_store(lambda: not store.breaker.is_open)
    stopping = asyncio.Event()
    runner: Any = None
    metrics_server: Any = None

    def reload() -> None:
        notify("RELOADING=1")
        try:
            apply_new_settings()
        except Exception:
            # A bug (bad settings are SettingsError, handled inside): the running settings stay
            # and the traceback goes to the log, for whoever fixes it.
            log.exception("SIGHUP: reload failed, keeping the running settings")
        finally:
            # Always, or systemd would show the unit "reloading" for ever.
            notify("READY=1")

    def apply_new_settings() -> None:
        nonlocal settings
        try:
            new = load_settings(env_file)
        except SettingsError as error:
            problems = error.lines
        else:
            problems = []
            limiter.reconfigure(LimitConfig.from_settings(new))
            decider.reconfigure(new)
            watch.set_limits(*smallest_counts(new))
        for line in problems:
            log.error("SIGHUP: invalid settings, keeping the running ones: %s", line)
        if not problems:
            settings = apply_reload(
                settings,
                new,
                server=server if policy else None,
                webhook=runner.app[WEBHOOK] if runner is not None else None,
            )

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    loop.add_signal_handler(signal.SIGHUP, reload)
    try:
        if policy:
            await server.start(settings.policy_listen)
        if webhook:
            runner = await _start_webhook(settings, store, metrics)
        if metrics is not None:
            from policyd.metrics_http import MetricsServer

            metrics_server = MetricsServer(metrics, store, loop)
            metrics_server.start(settings.metrics_listen)
    except OSError as error:
        print(f"smtp-whitelist: {error.strerror or error}", file=sys.stderr)
        await server.stop(grace=0)
        if runner is not None:
            await runner.cleanup()
        await store.aclose()
        return EXIT_FAILED
    try:
        await store.ping()
    except StoreUnavailable as error:
        log.warning(
            "Redis unreachable at start (%s): answering ON_STORE_ERROR=%s until it is back",
            error,
            settings.on_store_error,
        )
    notify("READY=1")
    if policy:
        # What an operator needs to read the decision lines that follow.
        log.info(
            "limits: messages %s, recipients %s, per /%d (IPv4) and /%d (IPv6); exempt %s;"
            " on a Redis failure %s; limited networks %s; MODE=%s",
            ",".join(map(str, settings.message_limits)) or "none",
            ",".join(map(str, settings.recipient_limits)) or "none",
            settings.ipv4_prefix,
            settings.ipv6_prefix,
            ",".join(map(str, settings.exempt_networks)) or "none",
            settings.on_store_error,
            ",".join(map(str, settings.limited_networks)) or "all (LIMITED_NETWORKS is empty)",
            settings.mode,
        )
    log.info("ready (pid %d)", os.getpid())
    await stopping.wait()
    notify("STOPPING=1")
    log.info("SIGTERM: stop accepting, answering what is in flight")
    # Both drain at once: one after the other, their graces would add up past SIGTERM's 5 s.
    await asyncio.gather(
        server.stop(grace=SHUTDOWN_GRACE),
        runner.cleanup() if runner is not None else asyncio.sleep(0),
        asyncio.to_thread(metrics_server.stop) if metrics_server else asyncio.sleep(0),
    )
    decider.flush()
    await store.aclose()
    log.info("stopped")
    return EXIT_OK


# File descriptors the process needs besides its policy connections: listeners, the Redis pool,
# the webhook's connections, log files.
SPARE_DESCRIPTORS = 256


def _raise_file_limit(max_connections: int) -> None:
    """Lift the soft RLIMIT_NOFILE towards the hard one, so MAX_CONNECTIONS can really be served.

    The usual soft limit of 1024 would otherwise refuse connections below the default
    MAX_CONNECTIONS of 1000 with EMFILE instead of our own clear refusal.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = max_connections + SPARE_DESCRIPTORS
    if soft != resource.RLIM_INFINITY and soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        if target < wanted:
            log.warning(
                "open-file limit %d is below MAX_CONNECTIONS=%d plus %d spare; raise LimitNOFILE",
                target,
                max_connections,
                SPARE_DESCRIPTORS,
            )


async def _start_webhook(settings: Settings, store: Store, metrics: Any = None) -> Any:
    from ratelimit.grants import Grants
    from ratelimit.nonces import NonceLedger
    from webhook.app import build_app
    from webhook.registered_name import RegisteredNameChecker
    from webhook.serve import start_webhook

    app = build_app(
        settings,
        Grants(store, settings),
        NonceLedger(store),
        store,
        RegisteredNameChecker.from_settings(settings),
        metrics=metrics,
    )
    return await start_webhook(app, settings.webhook_listen)


# -- operator tools ----------------------------------------------------------------------------


async def _cmd_add(args: argparse.Namespace, settings: Settings, env: Path | None) -> int:
    from ratelimit.grants import Grants

    address = _ip(args.ip)
    actor = _operator()
    user = args.user or actor
    async with _store(settings) as store:
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
    print(f"{verb} {grant.ip} for {grant.user} until {_time(grant.expires_at)} ({grant.ttl} s)")
    return EXIT_OK


def _operator() -> str:
    """Who is running the command: the person behind sudo (or doas), else the login name."""
    return os.environ.get("SUDO_USER") or os.environ.get("DOAS_USER") or getpass.getuser()


async def _cmd_remove(args: argparse.Namespace, settings: Settings, env: Path | None) -> int:
    from ratelimit.grants import Grants

    address = _ip(args.ip)
    actor = _operator()
    async with _store(settings) as store:
        grant = await Grants(store, settings).revoke(address, source="cli", actor=actor)
    if grant is None:
        print(f"smtp-whitelist: no grant for {address}", file=sys.stderr)
        return EXIT_FAILED
    print(f"removed the grant of {grant.ip} (user {grant.user})")
    return EXIT_OK


async def _cmd_list(args: argparse.Namespace, settings: Settings, env: Path | None) -> int:
    from ratelimit.grants import Grants

    async with _store(settings) as store:
        grants = await Grants(store, settings).list()
    if args.json:
        print(json.dumps({"items": [g.as_json() for g in grants]}))
        return EXIT_OK
    if not grants:
        print("no live grants")
    for g in grants:
        print(f"{g.ip:<40} {g.user:<24} {_time(g.expires_at)}  {g.ttl:>5} s  {g.source}")
    return EXIT_OK


async def _cmd_show(args: argparse.Namespace, settings: Settings, env: Path | None) -> int:
    from ratelimit.grants import Grants
    from ratelimit.limiter import LimitConfig, Limiter

    address = _ip(args.ip)
    async with _store(settings) as store:
        limiter = Limiter(store, LimitConfig.from_settings(settings))
        grant = await Grants(store, settings).get(address)
        usage = await limiter.usage(address)
        exempt = in_networks(address, settings.exempt_networks)
        free_at, now = await _release(store, settings, limiter.network_of(address))
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
                    "may_send_at": _time(_from_us(free_at)) if free_at is not None else None,
                }
            )
        )
        return EXIT_OK
    print(f"{address} (counted as {network}){'  EXEMPT' if exempt else ''}")
    if grant:
        print(f"grant: {grant.user}, until {_time(grant.expires_at)} ({grant.ttl} s left)")
    else:
        print("grant: none")
    for u in usage:
        state = "  REACHED" if u.used >= u.limit.count else ""
        print(f"{u.counted.value:<11} {u.used:>7} of {u.limit!s:<10}{state}")
    if free_at is None:
        print("may send: now")
    else:
        wait = -(-(free_at - now) // 1_000_000)  # whole seconds, rounded up
        print(f"may send again: {_time(_from_us(free_at))} (in {_duration(wait)})")
    return EXIT_OK


async def _release(store: Store, settings: Settings, network: str) -> tuple[int | None, int]:
    """When the network's client may send again (µs, None: now), and Redis' clock (µs)."""
    from ratelimit.release import read_log, release_time

    entries, now = await read_log(store, network)
    limits = settings.message_limits, settings.recipient_limits
    return release_time(entries, now, *limits), now


def _from_us(micros: int) -> Any:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(micros / 1_000_000, tz=UTC)


def _duration(seconds: int) -> str:
    """``3725`` -> ``1h 2m 5s``: what an operator reads at a glance."""
    hours, rest = divmod(max(seconds, 0), 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{hours}h"] if hours else []
    parts += [f"{minutes}m"] if minutes or hours else []
    return " ".join([*parts, f"{secs}s"])


async def _cmd_reset(args: argparse.Namespace, settings: Settings, env: Path | None) -> int:
    from ratelimit.limiter import LimitConfig, Limiter
    from ratelimit.offenders import Offenders

    address = _ip(args.ip)
    actor = _operator()
    async with _store(settings) as store:
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


async def _cmd_top(args: argparse.Namespace, settings: Settings, env: Path | None) -> int:
    from ratelimit.offenders import MAX_SINCE, Offenders, parse_span

    try:
        since = parse_span(args.since)
    except ValueError as error:
        raise UsageError(f"--since: {error}") from None
    if args.now:
        return await _limited(settings, args.last, args.json)
    async with _store(settings) as store:
        found = await Offenders(store).top(min(since, MAX_SINCE), args.last)
    if args.json:
        print(json.dumps({"since": args.since, "items": [o.as_json() for o in found]}))
        return EXIT_OK
    if not found:
        print(f"no refusals in the last {args.since}")
    for o in found:
        print(f"{o.ip:<40} {o.refusals:>7}  {o.limit:<22} {_time(o.last_refused)}")
    return EXIT_OK


async def _cmd_limited(args: argparse.Namespace, settings: Settings, env: Path | None) -> int:
    return await _limited(settings, args.last, args.json)


async def _limited(settings: Settings, last: int, as_json: bool) -> int:
    """Clients that a limit refuses right now: refused lately, and still at a limit."""
    from ratelimit.grants import Grants
    from ratelimit.limiter import LimitConfig, Limiter
    from ratelimit.offenders import MAX_SINCE, Offenders

    windows = [lim.window for lim in (*settings.message_limits, *settings.recipient_limits)]
    since = min(max(windows, default=3600), MAX_SINCE)
    rows: list[tuple[Any, int]] = []
    async with _store(settings) as store:
        limiter = Limiter(store, LimitConfig.from_settings(settings))
        for o in await Offenders(store).top(since, MAX_LIMITED_CANDIDATES):
            address = parse_ip(o.ip)
            if address is None or in_networks(address, settings.exempt_networks):
                continue
            if await Grants(store, settings).get(address) is not None:
                continue  # granted since its refusals: not refused now
            free_at, _ = await _release(store, settings, limiter.network_of(address))
            if free_at is not None:
                rows.append((o, free_at))
    rows = rows[:last]
    if as_json:
        items = [{**o.as_json(), "may_send_at": _time(_from_us(t))} for o, t in rows]
        print(json.dumps({"items": items}))
        return EXIT_OK
    if not rows:
        print("no client is refused right now")
    for o, t in rows:
        print(f"{o.ip:<40} {o.refusals:>7}  {o.limit:<22} until {_time(_from_us(t))}")
    return EXIT_OK


async def _cmd_audit(args: argparse.Namespace, settings: Settings, env: Path | None) -> int:
    from ratelimit.audit import AuditTrail

    ip = str(_ip(args.ip)) if args.ip else None
    async with _store(settings) as store:
        entries = await AuditTrail(store).read(ip=ip, user=args.user, last=args.last)
    if args.json:
        print(json.dumps({"items": [e.as_json() for e in entries]}))
        return EXIT_OK
    for e in entries:
        expires = f" expires={_time(e.expires_at)}" if e.expires_at else ""
        actor = f" by={e.actor}" if e.actor else ""
        print(
            f"{_time(e.at)} {e.event:<7} {e.ip} user={e.user} role={e.role} status={e.status}"
            f" source={e.source}{actor}{expires}"
        )
    return EXIT_OK


async def _cmd_query(args: argparse.Namespace, settings: Settings, env: Path | None) -> int:
    address = _ip(args.ip)
    if args.server:
        try:
            target = parse_listen(args.server)[0]
        except ValueError as error:
            raise UsageError(f"--server: {error}") from None
    else:
        target = settings.policy_listen[0]
    request = {
        "request": "smtpd_access_policy",
        "protocol_state": args.state,
        "protocol_name": "ESMTP",
        "client_address": str(address),
        "client_name": "unknown",
        "reverse_client_name": "unknown",
        "helo_name": "query.invalid",
        "sender": "query@smtp-whitelist.invalid",
        "recipient": "postmaster@smtp-whitelist.invalid",
        "recipient_count": str(args.recipients),
        "queue_id": "",
        "instance": f"query.{secrets.token_hex(4)}",
        "size": "0",
    }
    try:
        action = await asyncio.wait_for(_ask(target, encode_request(request)), QUERY_TIMEOUT)
    except (OSError, TimeoutError) as error:
        print(f"smtp-whitelist: no answer from {target}: {error or 'timed out'}", file=sys.stderr)
        return EXIT_FAILED
    if action is None:
        print(f"smtp-whitelist: {target} closed the connection without an answer", file=sys.stderr)
        return EXIT_FAILED
    print(action)
    return EXIT_OK


async def _ask(target: ListenAddress, request: bytes) -> str | None:
    if target.path is not None:
        reader, writer = await asyncio.open_unix_connection(target.path)
    else:
        reader, writer = await asyncio.open_connection(target.host, target.port)
    try:
        writer.write(request)
        await writer.drain()
        reply = b""
        while not reply.endswith(b"\n\n"):
            chunk = await reader.read(4096)
            if not chunk:
                return None
            reply += chunk
        return parse_reply(reply)
    finally:
        writer.close()


async def _cmd_check(args: argparse.Namespace, settings: Settings, env: Path | None) -> int:
    from policyd.postfix_config import data_check_present
    from ratelimit.stage_evidence import StageEvidence

    print(f"env file: {env if env else '(none; environment only)'}")
    for name, value in settings.masked().items():
        print(f"{name}={value}")
    async with _store(settings) as store:
        await store.ping()
        info = await store.call(lambda: store.client.info("server"))
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


def smallest_counts(settings: Settings) -> tuple[int | None, int | None]:
    """The smallest message and recipient counts among the limits (None: no such limit)."""
    messages = min((lim.count for lim in settings.message_limits), default=None)
    recipients = min((lim.count for lim in settings.recipient_limits), default=None)
    return messages, recipients


async def _cmd_handoff_url(args: argparse.Namespace, settings: Settings, env: Path | None) -> int:
    import time

    from webhook.page.handoff import handoff_url

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


class _store:
    """``async with _store(settings) as store``: a store for one CLI command, closed after."""

    def __init__(self, settings: Settings) -> None:
        self.store = Store.from_settings(settings)

    async def __aenter__(self) -> Store:
        return self.store

    async def __aexit__(self, *exc: object) -> None:
        await self.store.aclose()


def _time(moment: Any) -> str:
    from ratelimit.grants import rfc3339

    return rfc3339(moment)


COMMANDS: dict[str, Callable[[argparse.Namespace, Settings, Path | None], Awaitable[int]]] = {
    "policyd": _cmd_policyd,
    "webhook": _cmd_webhook,
    "serve": _cmd_serve,
    "add": _cmd_add,
    "remove": _cmd_remove,
    "list": _cmd_list,
    "show": _cmd_show,
    "audit": _cmd_audit,
    "query": _cmd_query,
    "check": _cmd_check,
    "reset": _cmd_reset,
    "top": _cmd_top,
    "limited": _cmd_limited,
    "handoff-url": _cmd_handoff_url,
}
