"""Per-client limits: the decision for one policy request, in one atomic Redis round trip.

A client is counted under its network (``IPV4_PREFIX``/``IPV6_PREFIX``); a grant is for the
exact address. Exempt networks never reach Redis at all.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

from ratelimit.addresses import IPAddress, IPNetwork, client_network, in_networks, parse_ip
from ratelimit.limits import Limit
from ratelimit.store import Script, Store
from ratelimit.verdicts import (
    Counted,
    Decided,
    FutureVerdict,
    Limited,
    Mode,
    Outcome,
    Passed,
    ScriptReply,
    Verdict,
    VerdictWaiter,
)

# Importers name the verdict types as the limiter's.
__all__ = [
    "Client",
    "Counted",
    "Decided",
    "LimitConfig",
    "Limited",
    "Limiter",
    "Mode",
    "Outcome",
    "Passed",
    "Usage",
    "Verdict",
    "VerdictWaiter",
]

# Postfix's recipient_count is at most smtpd_recipient_limit (1000 by default); anything far
# beyond is a broken or hostile request, and a value that large must not reach Lua's numbers.
MAX_RECIPIENTS = 1_000_000

_DECIDE = Script("decide")

# Clients remembered by their client_address text with the parsed address, network, Redis keys
# and exemption, so that a busy client's requests skip ipaddress' parsing, network arithmetic
# and string building (a few µs each). A relay sees a working set of thousands; when this many
# are held the memo starts again from empty.
MAX_REMEMBERED_CLIENTS = 16_384


class LimitSettings(Protocol):
    """What a decision reads of the settings (the app's Settings satisfies it; never imported)."""

    @property
    def message_limits(self) -> tuple[Limit, ...]: ...
    @property
    def recipient_limits(self) -> tuple[Limit, ...]: ...
    @property
    def ipv4_prefix(self) -> int: ...
    @property
    def ipv6_prefix(self) -> int: ...
    @property
    def exempt_networks(self) -> tuple[IPNetwork, ...]: ...
    @property
    def offender_threshold(self) -> int: ...


@dataclass(frozen=True, slots=True)
class LimitConfig:
    """The settings a decision depends on; replaced as a whole on SIGHUP."""

    message_limits: tuple[Limit, ...]
    recipient_limits: tuple[Limit, ...]
    ipv4_prefix: int
    ipv6_prefix: int
    exempt_networks: tuple[IPNetwork, ...]
    offender_threshold: int = 50

    @classmethod
    def from_settings(cls, settings: LimitSettings) -> LimitConfig:
        return cls(
            settings.message_limits,
            settings.recipient_limits,
            settings.ipv4_prefix,
            settings.ipv6_prefix,
            settings.exempt_networks,
            settings.offender_threshold,
        )

    def script_args(self) -> list[int]:
        """The limits as the Lua script reads them: M, M pairs, R, R pairs (windows in µs), and
        OFFENDER_THRESHOLD last."""
        args = [len(self.message_limits)]
        for limit in self.message_limits:
            args += [limit.count, limit.window * 1_000_000]
        args.append(len(self.recipient_limits))
        for limit in self.recipient_limits:
            args += [limit.count, limit.window * 1_000_000]
        args.append(self.offender_threshold)
        return args


class Client:
    """A client address as decisions need it, made once per client: the address, its network's
    accepted (or exempt) verdict, shared by its decisions (Passed is immutable), and the
    script's keys (None when exempt; a tuple, as a relay remembers thousands of clients)."""

    __slots__ = ("address", "keys", "passed")

    def __init__(
        self, address: IPAddress, passed: Passed, keys: tuple[str, str, str] | None
    ) -> None:
        self.address = address
        self.passed = passed
        self.keys = keys


@dataclass(frozen=True, slots=True)
class Usage:
    """One limit and how much of it a client has used right now."""

    counted: Counted
    limit: Limit
    used: int


class Limiter:
    """Decides DATA and RCPT requests for client addresses against the configured limits."""

    def __init__(self, store: Store, config: LimitConfig) -> None:
        self.store = store
        self.config = config  # replaced whole on SIGHUP; a decision reads it once
        self._args = config.script_args()
        # client_address text -> its Client, or None when it is no address; depends on the
        # config only. Keyed by the text, whose hash Python keeps, not by the address, whose
        # hash ipaddress computes in Python on every lookup.
        self._clients: dict[str, Client | None] = {}

    def reconfigure(self, config: LimitConfig) -> None:
        """Apply new limits from the next decision on (SIGHUP)."""
        self.config = config
        self._args = config.script_args()
        self._clients = {}

    def network_of(self, address: IPAddress) -> str:
        """The network the address is counted under, as written in keys and logs."""
        config = self.config
        return str(client_network(address, config.ipv4_prefix, config.ipv6_prefix))

    # Plain functions returning the decision's coroutine: one frame less on every decision.

    def count_message(self, address: IPAddress, recipients: int) -> Coroutine[Any, Any, Verdict]:
        """DATA: refuse if this message would exceed any limit, else count it. One round trip."""
        return self._decide(address, Mode.COUNT, recipients)

    def check(self, address: IPAddress) -> Coroutine[Any, Any, Verdict]:
        """RCPT: refuse when the client is already at a message limit; counts nothing."""
        return self._decide(address, Mode.CHECK, 0)

    def client(self, text: str) -> Client | None:
        """The client whose ``client_address`` Postfix wrote as ``text``; None when it is no
        address (see :func:`ratelimit.addresses.parse_ip`). Remembered by the text."""
        clients = self._clients
        try:
            return clients[text]
        except KeyError:
            pass
        address = parse_ip(text)
        client = None if address is None else self._client_of(address)
        if len(clients) >= MAX_REMEMBERED_CLIENTS:
            clients.clear()
        clients[text] = client
        return client

    def submit(
        self, client: Client, mode: Mode, recipients: int, waiter: VerdictWaiter
    ) -> Verdict | None:
        """The decision without a coroutine: the verdict now when Redis need not be asked
        (exempt, no limits); else None, and the verdict goes to ``waiter`` as soon as Redis'
        reply is read. Raises StoreUnavailable at once while the circuit breaker is open."""
        passed, keys = client.passed, client.keys
        if keys is None:
            return passed  # exempt
        config = self.config
        if not config.message_limits and not config.recipient_limits:
            return passed
        recipients = min(max(recipients, 0), MAX_RECIPIENTS)
        self.store.submit_batched(
            _DECIDE,
            self._args,
            keys,
            # _value_, not .value: the enum's property costs a µs per read on the hot path.
            [mode._value_, recipients],
            ScriptReply(config, passed, waiter),
        )
        return None

    def _client_of(self, address: IPAddress) -> Client:
        """``address`` with its network's verdict and the script's keys, for the config now."""
        config = self.config
        network = str(client_network(address, config.ipv4_prefix, config.ipv6_prefix))
        if in_networks(address, config.exempt_networks):
            return Client(address, Passed(Outcome.EXEMPT, network), None)
        keys = self.store.keys
        ip = str(address)
        return Client(
            address,
            Passed(Outcome.ACCEPTED, network),
            (keys.client_log(network), keys.grant(ip, network), keys.offender(ip, network)),
        )

    async def _decide(self, address: IPAddress, mode: Mode, recipients: int) -> Verdict:
        waiter = FutureVerdict(asyncio.get_running_loop().create_future())
        verdict = self.submit(self._client_of(address), mode, recipients, waiter)
        if verdict is not None:
            return verdict
        return await waiter.future

    async def usage(self, address: IPAddress) -> list[Usage]:
        """Every limit's current use for the client's network (``smtp-whitelist show``)."""
        config = self.config
        network = self.network_of(address)
        keys = self.store.keys
        ip = str(address)
        [reply] = await self.store.run_script(
            _DECIDE,
            [keys.client_log(network), keys.grant(ip, network), keys.offender(ip, network)],
            [*self._args, Mode.USAGE.value, 0],
        )
        used = list(reply[1:])
        limits = [(Counted.MESSAGES, lim) for lim in config.message_limits]
        limits += [(Counted.RECIPIENTS, lim) for lim in config.recipient_limits]
        return [Usage(c, lim, n) for (c, lim), n in zip(limits, used, strict=True)]
