"""What Postfix is told: the reply templates, ON_STORE_ERROR, and monitor mode's WARN."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from ratelimit.addresses import IPNetwork

DUNNO = "DUNNO"
# Postfix sends protocol_state=DATA from smtpd_data_restrictions; with CHUNKING the same
# restrictions run for the first BDAT command, so BDAT is counted as a message too.
COUNTED_STATES = frozenset({"DATA", "BDAT"})


class DecisionSettings(Protocol):
    """What the decision reads of the settings (the app's Settings satisfies it)."""

    @property
    def limit_reply(self) -> str: ...
    @property
    def too_big_reply(self) -> str: ...
    @property
    def on_store_error(self) -> str: ...
    @property
    def page_url(self) -> str: ...
    @property
    def mode(self) -> str: ...
    @property
    def limited_networks(self) -> tuple[IPNetwork, ...]: ...


@dataclass(frozen=True, slots=True)
class Replies:
    """LIMIT_REPLY, TOO_BIG_REPLY, ON_STORE_ERROR and MODE; replaced whole on SIGHUP."""

    limit_reply: str
    on_store_error: str
    too_big_reply: str = ""
    monitor: bool = False

    @classmethod
    def from_settings(cls, settings: DecisionSettings) -> Replies:
        # {page} is known at start-up (PAGE_URL, validated free of braces); filling it in here
        # leaves only {ip}, {limit} and {window} for each decision.
        return cls(
            settings.limit_reply.replace("{page}", settings.page_url),
            settings.on_store_error,
            settings.too_big_reply.replace("{page}", settings.page_url),
            settings.mode == "monitor",
        )

    def sent(self, action: str) -> str:
        """What Postfix is told: in monitor mode a refusal becomes WARN with its text."""
        if self.monitor and action.upper() not in PASSING_ACTIONS:
            # access(5): "WARN optional text..." logs a warning and lets the mail through.
            return f"WARN {action}"
        return action


# Actions that let mail through; everything else is a refusal that monitor mode turns into WARN.
PASSING_ACTIONS = frozenset({"DUNNO", "OK"})
