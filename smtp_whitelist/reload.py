"""SIGHUP: apply every setting that can change in a running process, name each that cannot.

The policy decision's own settings (limits, prefixes, exemptions, replies, mode, scope) are
applied by the service, the connection limits and the webhook's rules and secret by the running
components (smtp_whitelist.components). This module applies the log settings and logs, by its
environment name, every changed setting that needs a restart.
"""

from __future__ import annotations

import logging

from policyd import logs
from smtp_whitelist.settings import ENV_PREFIX, Settings

log = logging.getLogger("policyd")

# Applied to the policy decision by the caller (smtp_whitelist.service).
DECISION_SETTINGS = frozenset(
    {
        "message_limits", "recipient_limits", "ipv4_prefix", "ipv6_prefix", "exempt_networks",
        "limit_reply", "too_big_reply", "on_store_error", "mode", "limited_networks",
        "offender_threshold",
    }
)  # fmt: skip
CONNECTION_SETTINGS = frozenset({"max_connections", "idle_timeout", "request_timeout"})
LOG_SETTINGS = frozenset({"log_level", "log_format", "syslog_facility"})
# Read by the webhook's handlers on every request (webhook.app.Webhook.reconfigure).
WEBHOOK_SETTINGS = frozenset(
    {
        "webhook_secret", "whitelist_ttl", "allowed_networks", "required_ptr_suffix",
        "dns_servers", "eligible", "max_grants_per_user",
    }
)  # fmt: skip


# The self-service page's own settings, served by the webhook's listener (restart to change).
PAGE_SETTINGS = frozenset(
    {"handoff_secret", "handoff_max_age", "session_idle", "session_max_age", "trusted_proxies"}
)


def apply_reload(
    running: Settings, new: Settings, *, applied: frozenset[str], policy: bool, webhook: bool
) -> Settings:
    """Apply the log settings of ``new``, name the rest; the settings now in force.

    ``applied`` names what the running components took (smtp_whitelist.components); ``policy``
    and ``webhook`` say which servers run: the settings of one that does not matter to nobody.
    Restart-only settings keep their running values in what is returned.
    """
    changed = {
        name for name in type(new).model_fields if getattr(new, name) != getattr(running, name)
    }
    applied = applied | DECISION_SETTINGS
    unused: set[str] = set()
    if not policy:
        unused |= CONNECTION_SETTINGS | {"policy_listen"}
    if not webhook:
        unused |= WEBHOOK_SETTINGS | PAGE_SETTINGS | {"webhook_listen"}
    if changed & LOG_SETTINGS:
        problem = None
        try:
            logs.configure(new.log_level, new.log_format, new.syslog_facility)
        except OSError as error:
            problem = error
        if problem is None:
            applied = applied | LOG_SETTINGS
        else:
            log.error("SIGHUP: SYSLOG_FACILITY: cannot reach %s (%s)", logs.SYSLOG_SOCKET, problem)
    log.info(
        "SIGHUP: settings reloaded: message limits %s, recipient limits %s, exempt %s,"
        " limited %s, MODE=%s; changed: %s",
        ",".join(map(str, new.message_limits)) or "none",
        ",".join(map(str, new.recipient_limits)) or "none",
        ",".join(map(str, new.exempt_networks)) or "none",
        ",".join(map(str, new.limited_networks)) or "all",
        new.mode,
        ", ".join(ENV_PREFIX + name.upper() for name in sorted(changed & applied)) or "nothing",
    )
    restart = sorted(changed - applied - unused)
    for name in restart:
        log.warning(
            "SIGHUP: %s%s changed; it takes effect on restart (still %s)",
            ENV_PREFIX,
            name.upper(),
            running.masked()[ENV_PREFIX + name.upper()],
        )
    return new.model_copy(update={name: getattr(running, name) for name in restart})
