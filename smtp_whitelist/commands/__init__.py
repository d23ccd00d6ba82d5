"""The operator commands, one module per family, each imported only when it is run.

``smtp-whitelist add`` need not load the webhook, the page's templates or Pillow; the servers'
commands are :mod:`smtp_whitelist.service`'s.
"""

from __future__ import annotations

import importlib

from smtp_whitelist.commands.common import Command

# Each command's module and coroutine.
COMMANDS: dict[str, tuple[str, str]] = {
    "policyd": ("smtp_whitelist.service", "cmd_policyd"),
    "webhook": ("smtp_whitelist.service", "cmd_webhook"),
    "serve": ("smtp_whitelist.service", "cmd_serve"),
    "add": ("smtp_whitelist.commands.grants", "cmd_add"),
    "remove": ("smtp_whitelist.commands.grants", "cmd_remove"),
    "list": ("smtp_whitelist.commands.grants", "cmd_list"),
    "show": ("smtp_whitelist.commands.clients", "cmd_show"),
    "audit": ("smtp_whitelist.commands.grants", "cmd_audit"),
    "query": ("smtp_whitelist.commands.query", "cmd_query"),
    "check": ("smtp_whitelist.commands.check", "cmd_check"),
    "reset": ("smtp_whitelist.commands.clients", "cmd_reset"),
    "top": ("smtp_whitelist.commands.clients", "cmd_top"),
    "limited": ("smtp_whitelist.commands.clients", "cmd_limited"),
    "handoff-url": ("smtp_whitelist.commands.check", "cmd_handoff_url"),
}


def command_named(name: str) -> Command:
    """The coroutine of command ``name`` (one of :data:`COMMANDS`)."""
    module, function = COMMANDS[name]
    found: Command = getattr(importlib.import_module(module), function)
    return found
