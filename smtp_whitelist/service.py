"""The process: start the servers, answer signals, tell systemd, stop within SIGTERM's budget.

``smtp-whitelist policyd``, ``webhook`` and ``serve`` all run :func:`serve`; the servers
themselves are built by :mod:`smtp_whitelist.wiring`. SIGTERM/SIGINT stop (in-flight answers
get :data:`SHUTDOWN_GRACE`), SIGHUP reloads the settings (:mod:`smtp_whitelist.reload`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import resource
import signal
import sys
from pathlib import Path

from policyd.sdnotify import notify
from policyd.stage_watch import StageWatch
from ratelimit.metrics import Metrics
from ratelimit.stage_evidence import StageEvidence
from ratelimit.store import Store, StoreUnavailable
from smtp_whitelist.commands.common import EXIT_FAILED, EXIT_OK, UsageError
from smtp_whitelist.components import (
    Component,
    MetricsComponent,
    PolicyComponent,
    WebhookComponent,
)
from smtp_whitelist.reload import apply_reload
from smtp_whitelist.settings import Settings, SettingsError, load_settings
from smtp_whitelist.wiring import build_policy, build_webhook

log = logging.getLogger("policyd")

# SIGTERM must end the process within 5 s (docs/interface.md): in-flight answers get this long.
SHUTDOWN_GRACE = 4.0

# File descriptors the process needs besides its policy connections: listeners, the Redis pool,
# the webhook's connections, log files.
SPARE_DESCRIPTORS = 256


async def cmd_policyd(args: argparse.Namespace, settings: Settings, env: Path | None) -> int:
    return await serve(settings, env, policy=True, webhook=False)


async def cmd_webhook(args: argparse.Namespace, settings: Settings, env: Path | None) -> int:
    return await serve(settings, env, policy=False, webhook=True)


async def cmd_serve(args: argparse.Namespace, settings: Settings, env: Path | None) -> int:
    return await serve(settings, env, policy=True, webhook=True)


async def serve(settings: Settings, env_file: Path | None, *, policy: bool, webhook: bool) -> int:
    """Run the policy server and/or the webhook until SIGTERM; SIGHUP reloads the settings."""
    if webhook and settings.webhook_secret is None:
        raise UsageError("SMTP_WHITELIST_WEBHOOK_SECRET: required to run the webhook")
    raise_file_limit(settings.max_connections)
    loop = asyncio.get_running_loop()
    store = Store.from_settings(settings)
    evidence = StageEvidence(store)

    async def report(warning: str | None) -> None:
        await (evidence.clear() if warning is None else evidence.report(warning))

    # Built only when served: with METRICS_LISTEN empty nothing is counted at all.
    metrics = Metrics() if settings.metrics_listen else None
    parts = build_policy(settings, store, watch=StageWatch(), report=report, metrics=metrics)
    if metrics is not None:
        metrics.watch_connections(lambda: len(parts.server.connections))
        metrics.watch_store(lambda: not store.breaker.is_open)
    components: list[Component] = []
    if policy:
        components.append(PolicyComponent(parts, settings))
    if webhook:
        components.append(
            WebhookComponent(build_webhook(settings, store, metrics=metrics), settings)
        )
    if metrics is not None:
        components.append(MetricsComponent(metrics, store, settings))
    stopping = asyncio.Event()

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
        for line in problems:
            log.error("SIGHUP: invalid settings, keeping the running ones: %s", line)
        if problems:
            return
        parts.reconfigure(new)  # the decision's settings, whichever servers run
        applied = frozenset().union(*(component.reload(new) for component in components))
        settings = apply_reload(settings, new, applied=applied, policy=policy, webhook=webhook)

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    loop.add_signal_handler(signal.SIGHUP, reload)
    started: list[Component] = []
    try:
        for component in components:
            await component.start()
            started.append(component)
    except OSError as error:
        print(f"smtp-whitelist: {error.strerror or error}", file=sys.stderr)
        await asyncio.gather(*(component.stop(grace=0) for component in started))
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
    # What start-up built (modules, settings, scripts, templates) lives as long as the process:
    # move it out of the collector's sight, so that the full collections the hot path's garbage
    # triggers now and then do not walk it (issue 13: a ~30 ms stall once after start).
    gc.collect()
    gc.freeze()
    notify("READY=1")
    if policy:
        log_limits(settings)
    log.info("ready (pid %d)", os.getpid())
    await stopping.wait()
    notify("STOPPING=1")
    log.info("SIGTERM: stop accepting, answering what is in flight")
    # All drain at once: one after the other, their graces would add up past SIGTERM's 5 s.
    await asyncio.gather(*(component.stop(grace=SHUTDOWN_GRACE) for component in components))
    if not policy:
        parts.decider.flush()  # as the policy component does when it stops
    await store.aclose()
    log.info("stopped")
    return EXIT_OK


def log_limits(settings: Settings) -> None:
    """What an operator needs to read the decision lines that follow."""
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


def raise_file_limit(max_connections: int) -> None:
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
