"""The errors every caller of the store handles: Redis gone, Redis said no, a write not kept.

Every failure of a Redis call becomes one of these, so the policy server can answer
``ON_STORE_ERROR`` and the webhook 503 without knowing Redis' exception zoo.
"""

from __future__ import annotations


class StoreUnavailable(Exception):
    """Redis failed, timed out, or is known to be down (circuit open)."""


class StoreError(StoreUnavailable):
    """Redis answered, with an error (out of memory, a read-only replica, a refused argument).

    Redis is reachable, so this is no outage: the circuit stays closed and the CLI says "Redis
    answered an error", not "unreachable". It is a StoreUnavailable all the same, because for a
    decision or a grant the outcome is the same: the call did not happen.
    """


class NotReplicated(StoreUnavailable):
    """The write was made on the master, but fewer replicas than required confirmed it in time:
    a failover now could lose it, so it must not be reported as kept."""


def describe(error: BaseException) -> str:
    """One short line for a log or an error reply: the first line of the error, bounded."""
    if isinstance(error, TimeoutError):
        return "timed out"
    text = str(error) or type(error).__name__
    return text.splitlines()[0][:200]
