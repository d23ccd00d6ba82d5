"""The syntax of single setting values: who is eligible, a reply, a template, DNS servers.

Each function takes the text of one setting and returns its value or raises ValueError with a
message that ``load_settings`` prefixes with the setting's name.
"""

from __future__ import annotations

import ipaddress
import re

from ratelimit.actions import check_action as check_postfix_action

DEFAULT_LIMIT_REPLY = (
    "450 4.7.1 Too much mail from {ip}: the limit is {limit} per {window}."
    " To send more for the next 60 minutes, register this computer at the campus portal"
    " (SMTP White IP List)."
)

# One message with more recipients than a recipient limit allows can never pass, however long the
# client waits: the answer is permanent, so the client bounces it instead of retrying for days.
DEFAULT_TOO_BIG_REPLY = (
    "550 5.7.1 Too many recipients in one message from {ip}: the limit is {limit} per {window},"
    " so this message can never be sent as it is. Send it to fewer recipients at a time."
)

# syslog facilities SYSLOG_FACILITY may name (RFC 5424 6.2.1; "mail" puts the lines beside
# Postfix's own).
SYSLOG_FACILITIES = frozenset(
    {"mail", "daemon", "user", "local0", "local1", "local2", "local3", "local4", "local5",
     "local6", "local7"}
)  # fmt: skip


def parse_eligible(text: str) -> frozenset[tuple[str, str]]:
    pairs: set[tuple[str, str]] = set()
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        role, sep, status = item.partition(":")
        if not sep or not role.strip() or not status.strip():
            raise ValueError(f"{item!r} is not role:status")
        pairs.add((role.strip(), status.strip()))
    return frozenset(pairs)


def check_action(value: str, name: str) -> str:
    # A Postfix policy reply is one line: a newline would end the reply and start another.
    if not value.strip():
        raise ValueError(f"{name} must not be empty")
    if any(ch in value for ch in "\r\n\0"):
        raise ValueError(f"{name} must be one line")
    value = value.strip()
    check_postfix_action(value)
    return value


def check_template(value: str) -> str:
    """A reply template may fill in {ip}, {limit}, {window} and {page} (PAGE_URL), no more."""
    try:
        value.format(ip="192.0.2.1", limit="100 messages", window="1h", page="https://x/apply")
    except (KeyError, IndexError, ValueError) as error:
        raise ValueError(
            f"only {{ip}}, {{limit}}, {{window}} and {{page}} may be filled in ({error!s})"
        ) from None
    return value


def parse_dns_servers(value: str) -> tuple[tuple[str, int], ...]:
    """``10.0.0.53,[2001:db8::53]:5353``: DNS servers, port 53 unless given. Raises ValueError."""
    servers: list[tuple[str, int]] = []
    for item in value.split(","):
        item = item.strip()
        if not item:
            continue
        host, port = item, 53
        match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:([0-9]{1,5})|([0-9.]+):([0-9]{1,5})", item)
        if match:
            host = match.group(1) or match.group(3)
            port = int(match.group(2) or match.group(4))
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(f"{item!r} is not an IP address (with an optional port)") from None
        if not 0 < port < 65536:
            raise ValueError(f"{item!r}: port must be 1 to 65535")
        servers.append((host, port))
    return tuple(servers)
