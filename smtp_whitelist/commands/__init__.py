"""The operator commands, one module per family; COMMANDS maps each name to its coroutine."""

from __future__ import annotations

from smtp_whitelist.commands.check import cmd_check, cmd_handoff_url
from smtp_whitelist.commands.clients import cmd_limited, cmd_reset, cmd_show, cmd_top
from smtp_whitelist.commands.common import Command
from smtp_whitelist.commands.grants import cmd_add, cmd_audit, cmd_list, cmd_remove
from smtp_whitelist.commands.query import cmd_query
from smtp_whitelist.service import cmd_policyd, cmd_serve, cmd_webhook

COMMANDS: dict[str, Command] = {
    "policyd": cmd_policyd,
    "webhook": cmd_webhook,
    "serve": cmd_serve,
    "add": cmd_add,
    "remove": cmd_remove,
    "list": cmd_list,
    "show": cmd_show,
    "audit": cmd_audit,
    "query": cmd_query,
    "check": cmd_check,
    "reset": cmd_reset,
    "top": cmd_top,
    "limited": cmd_limited,
    "handoff-url": cmd_handoff_url,
}
