"""A verdict that is not a plain pass, as Postfix's action and the operator's log line."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from policyd.decision_log import log_compromised
from policyd.protocol import PolicyRequest
from policyd.refusal_log import RefusalLog
from policyd.replies import COUNTED_STATES, DUNNO, Replies
from policyd.store_outage import decision_fields
from ratelimit.limiter import Counted, Limited, Verdict
from ratelimit.limits import Limit, format_window
from ratelimit.metrics import Metrics

# The decision's own logger: operators filter on it.
log = logging.getLogger("policyd.decision")


def verdict_action(
    ip: str,
    state: str,
    request: PolicyRequest,
    verdict: Verdict,
    *,
    replies: Replies,
    refusals: RefusalLog,
    metrics: Metrics | None,
    recipient_limits: Sequence[Limit],
) -> str:
    """The action for a verdict, with its log line: DUNNO (logged at DEBUG) for a pass, else a
    refusal's reply (LIMIT_REPLY, or TOO_BIG_REPLY for a message too big to ever pass),
    logged once per limit and window, then summarised."""
    if not isinstance(verdict, Limited):
        if log.isEnabledFor(logging.DEBUG):
            recipients = f" recipients={request.recipient_count}" if state in COUNTED_STATES else ""
            log.debug(
                "DUNNO client=%s network=%s stage=%s outcome=%s%s queue_id=%s instance=%s",
                ip,
                verdict.network,
                state,
                verdict.outcome.value,
                recipients,
                request.get("queue_id"),
                request.get("instance"),
                extra=decision_fields(ip, state, request, action=DUNNO),
            )
        return DUNNO
    limit, counted = verdict.limit, verdict.counted
    too_big = _too_big(state, request, recipient_limits) if replies.too_big_reply else None
    if too_big is not None:
        # However long the client waits, this message cannot pass: answer permanently.
        limit, counted, template = too_big, Counted.RECIPIENTS, replies.too_big_reply
    else:
        template = replies.limit_reply
    reply = template.format(
        ip=ip, limit=f"{limit.count} {counted.value}", window=format_window(limit.window)
    )
    action = replies.sent(reply)
    limit_text = f"{limit} {counted.value}"
    verb = "would limit (MODE=monitor)" if replies.monitor else "limited"
    if verdict.compromised:
        # Independent of which refusals get a line of their own: decide.lua says when.
        log_compromised(ip, request, verdict, metrics)
    if too_big is not None:
        # What this limit had counted is unknown (the script stopped at the first limit it
        # found reached) and beside the point: the message alone is too big.
        extra = decision_fields(ip, state, request, action=action, limit=limit_text, used=None)
        log.info(
            "%s client=%s network=%s stage=%s limit=%s: one message with %d recipients"
            " exceeds the limit by itself and can never pass; answered %s sender=%s"
            " queue_id=%s instance=%s",
            verb,
            ip,
            verdict.network,
            state,
            limit_text,
            request.recipient_count,
            action.split(" ", 3)[0] if not replies.monitor else "WARN",
            request.get("sender")[:256],
            request.get("queue_id"),
            request.get("instance"),
            extra=extra,
        )
        return action
    if not refusals.refused(verdict.network, limit_text, limit.window, time.time()):
        return action  # counted, and summarised when the limit's window has passed
    extra = decision_fields(ip, state, request, action=action, limit=limit_text, used=verdict.used)
    recipients = f" recipients={request.recipient_count}" if state in COUNTED_STATES else ""
    log.info(
        "%s client=%s network=%s stage=%s limit=%s used=%d%s sender=%s queue_id=%s"
        " instance=%s (further refusals within %s are counted, then summarised)",
        verb,
        ip,
        verdict.network,
        state,
        limit_text,
        verdict.used,
        recipients,
        request.get("sender")[:256],
        request.get("queue_id"),
        request.get("instance"),
        format_window(limit.window),
        extra=extra,
    )
    return action


def _too_big(state: str, request: PolicyRequest, recipient_limits: Sequence[Limit]) -> Limit | None:
    """The smallest recipient limit this message exceeds on its own (DATA only), if any."""
    if state not in COUNTED_STATES:
        return None
    recipients = request.recipient_count
    over = [lim for lim in recipient_limits if recipients > lim.count]
    return min(over, key=lambda lim: lim.count) if over else None
