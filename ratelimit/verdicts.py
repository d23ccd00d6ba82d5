"""What a decision can come to, and how a decision made in Redis reaches whoever waits for it.

The verdict types are the limiter's vocabulary (importers name them as ``ratelimit.limiter``'s);
the waiters let a decision complete by callback, straight from the batch's reply, instead of
waking a task per decision.
"""

from __future__ import annotations

import asyncio
import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from ratelimit.errors import StoreError, StoreUnavailable
from ratelimit.limits import Limit

if TYPE_CHECKING:
    from ratelimit.limiter import LimitConfig


class Outcome(enum.Enum):
    """What the limiter decided."""

    ACCEPTED = "accepted"  # within every limit (and counted, at DATA)
    WHITELISTED = "whitelisted"  # a live grant for the exact address: not limited, not counted
    EXEMPT = "exempt"  # in EXEMPT_NETWORKS: not limited, not counted, Redis not asked
    LIMITED = "limited"  # a limit is reached: refuse, nothing counted


class Decided(enum.IntEnum):
    """decide.lua's first reply element: what the script decided (see its header)."""

    ACCEPTED = 0
    WHITELISTED = 1
    MESSAGE_LIMIT = 2  # the reply's index is a MESSAGE_LIMITS entry (1-based)
    RECIPIENT_LIMIT = 3  # ... a RECIPIENT_LIMITS entry
    USAGE = 4  # "usage" mode: the counts follow


class Mode(enum.Enum):
    """Each decision's first argument to decide.lua (after the limits the batch shares)."""

    COUNT = "count"  # DATA: check and record
    CHECK = "check"  # RCPT: message limits only, nothing recorded
    USAGE = "usage"  # `show`: every limit's count, nothing decided


class Counted(enum.Enum):
    """What a limit counts."""

    MESSAGES = "messages"
    RECIPIENTS = "recipients"


@dataclass(frozen=True, slots=True)
class Passed:
    """Not limited: accepted (and counted, at DATA), whitelisted or exempt."""

    outcome: Outcome  # never LIMITED: a refusal is a Limited, with what its log line needs
    network: str


@dataclass(frozen=True, slots=True)
class Limited:
    """A limit is reached: refuse, nothing counted; everything the refusal's log line needs."""

    network: str
    limit: Limit
    counted: Counted
    used: int  # what the reached limit had counted before this message
    # The client's refusals this hour, set only on the one refusal (across every daemon sharing
    # the Redis) that brought them to OFFENDER_THRESHOLD: log it as likely compromised.
    compromised: int = 0

    @property
    def outcome(self) -> Outcome:
        return Outcome.LIMITED


# A decision: each outcome carries exactly its fields, so no reader asserts one is present.
Verdict = Passed | Limited


class VerdictWaiter(Protocol):
    """Who receives a decision made in Redis (:meth:`Limiter.submit`)."""

    def decided(self, verdict: Verdict) -> None: ...
    def failed(self, error: StoreUnavailable) -> None: ...
    def cancelled(self) -> bool: ...  # went away: the decision need not be made


def verdict_of(config: LimitConfig, accepted: Passed, reply: int | list[int]) -> Verdict:
    """decide.lua's reply for one decision, as the verdict: a bare code when accepted or
    whitelisted, else ``[code, index, used, compromised]``. ``accepted``: the client network's
    accepted verdict, made once per client by the limiter and shared by its decisions (Passed
    is immutable), so the common reply makes no object."""
    if reply == _ACCEPTED:
        return accepted
    network = accepted.network
    if reply == _WHITELISTED:
        return Passed(Outcome.WHITELISTED, network)
    if isinstance(reply, int):  # a code that is none of the bare ones
        raise ValueError(f"no decision has the code {reply}")  # noqa: TRY004
    code, index, used, compromised = reply
    if code == Decided.MESSAGE_LIMIT:
        limit, counted = config.message_limits[index - 1], Counted.MESSAGES
    elif code == Decided.RECIPIENT_LIMIT:
        limit, counted = config.recipient_limits[index - 1], Counted.RECIPIENTS
    else:
        raise ValueError(f"no refusal has the code {code}")
    return Limited(network, limit, counted, used, compromised)


# The two codes nearly every reply is, as plain ints: compared once per decision.
_ACCEPTED = int(Decided.ACCEPTED)
_WHITELISTED = int(Decided.WHITELISTED)


class ScriptReply:
    """The batcher's reply slot for one decision: turns the script's reply into the verdict, for
    the limits the decision was made with (a SIGHUP may come before the reply)."""

    __slots__ = ("accepted", "config", "waiter")

    def __init__(self, config: LimitConfig, accepted: Passed, waiter: VerdictWaiter) -> None:
        self.config = config
        self.accepted = accepted
        self.waiter = waiter

    def cancelled(self) -> bool:
        return self.waiter.cancelled()

    def set_result(self, result: Any, /) -> None:
        if result == _ACCEPTED:  # nearly every reply: verdict_of's first case, without the call
            self.waiter.decided(self.accepted)
            return
        try:
            verdict = verdict_of(self.config, self.accepted, result)
        except (TypeError, ValueError, IndexError) as error:
            # Not a reply decide.lua gives (another script under its name, a proxy's garbage):
            # this decision fails as a store error, answered, rather than never.
            self.waiter.failed(
                StoreError(f"unreadable reply from decide.lua {result!r:.80}: {error}")
            )
            return
        self.waiter.decided(verdict)

    def set_exception(self, exception: type | BaseException, /) -> None:
        if not isinstance(exception, StoreUnavailable):
            exception = StoreUnavailable(str(exception))
        self.waiter.failed(exception)

    def cancel(self, msg: Any | None = None) -> bool:
        # Only when the batch itself was cancelled (the loop is stopping): no reply is coming.
        self.waiter.failed(StoreUnavailable("the decision was cancelled"))
        return True


class FutureVerdict:
    """A VerdictWaiter for ``await``: the verdict in a future."""

    __slots__ = ("future",)

    def __init__(self, future: asyncio.Future[Verdict]) -> None:
        self.future = future

    def decided(self, verdict: Verdict) -> None:
        if not self.future.done():
            self.future.set_result(verdict)

    def failed(self, error: StoreUnavailable) -> None:
        if not self.future.done():
            self.future.set_exception(error)

    def cancelled(self) -> bool:
        return self.future.cancelled()
