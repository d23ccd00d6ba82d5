"""Postfix access(5) actions: whether a reply setting is something Postfix can act on.

A policy server may answer with any action an access(5) table may hold (SMTPD_POLICY_README,
"Policy server response"). Anything else — ``Too much mail from {ip}`` without a code,
``TEMPFAIL`` — makes Postfix log "unknown smtpd restriction" and answer every affected message
``451 4.3.5 Server configuration error``, so a reply setting is checked at start, in ``check``
and on SIGHUP, not discovered in the mail log.

Action names are matched without regard to case, as Postfix does. Named restrictions and
restriction classes, which access(5) also allows, are not accepted: they depend on main.cf,
which this program cannot see, and none of them is a sensible reply to a limit.
"""

from __future__ import annotations

import re

# "4NN text" / "5NN text": a reply code, optionally followed by text (an enhanced status code
# such as 4.7.1 first, usually). 2xx or 3xx codes are not actions.
_CODE = re.compile(r"[45][0-9][0-9](?: .*)?", re.DOTALL)
# Actions that may stand alone or be followed by text (the text is logged or sent).
_OPTIONAL_TEXT = frozenset(
    {"REJECT", "DEFER", "DEFER_IF_REJECT", "DEFER_IF_PERMIT", "HOLD", "DISCARD", "WARN", "INFO"}
)
# Actions that stand alone.
_ALONE = frozenset({"OK", "DUNNO"})
# Actions that need an argument: FILTER transport:destination, REDIRECT user@domain,
# BCC user@domain, PREPEND headername: headervalue.
_ARGUMENT = frozenset({"FILTER", "REDIRECT", "BCC", "PREPEND"})

_EXAMPLES = "a code and text (450 4.7.1 ...), DUNNO, OK, REJECT, DEFER, DEFER_IF_PERMIT, HOLD, WARN"


def check_action(action: str) -> None:
    """Raise ValueError, saying why, unless ``action`` is a Postfix access(5) action."""
    if not action.strip():
        raise ValueError("an action must not be empty")
    if any(ch in action for ch in "\r\n\0"):
        raise ValueError("an action must be one line")
    if action != action.strip():
        raise ValueError("an action must not start or end with white space")
    if action.isascii() and action.isdigit():
        # access(5): "An all-numerical result is treated as OK" — never what was meant here.
        raise ValueError(
            f"{action!r} alone means OK to Postfix; add text: {action} {action[0]}.7.1 ..."
        )
    if action[0].isdigit():
        if not _CODE.fullmatch(action):
            raise ValueError(
                f"{action[:40]!r} does not start with a 4xx or 5xx reply code and a space"
            )
        return
    word, _, rest = action.partition(" ")
    name = word.upper()
    if name in _ALONE:
        if rest:
            raise ValueError(f"{word} takes no text")
        return
    if name in _OPTIONAL_TEXT:
        return
    if name in _ARGUMENT:
        if not rest.strip():
            raise ValueError(f"{word} needs an argument (see access(5))")
        return
    raise ValueError(f"{word[:40]!r} is not a Postfix access(5) action; use {_EXAMPLES}")
