"""The decision's lines that are not about one reply: refusal summaries, likely compromised."""

from __future__ import annotations

import logging
import time

from policyd.logs import fields, rfc3339
from policyd.protocol import PolicyRequest
from policyd.refusal_log import RefusalLog
from ratelimit.limiter import Limited
from ratelimit.metrics import Metrics

log = logging.getLogger("policyd.decision")


def log_summaries(refusals: RefusalLog, *, everything: bool = False) -> None:
    """Summary lines of refusals that were counted, not logged (see refusal_log)."""
    for summary in refusals.due(time.time(), everything=everything):
        log.info(
            "refused network=%s %d more time(s) by limit %s since %s (first refusal logged then)",
            summary.client,
            summary.suppressed,
            summary.limit,
            rfc3339(summary.since),
            extra=fields(client=summary.client, limit=summary.limit),
        )


def log_compromised(
    ip: str, request: PolicyRequest, verdict: Limited, metrics: Metrics | None
) -> None:
    """Once per client per hour across every daemon sharing the Redis (decide.lua says when)."""
    limit = f"{verdict.limit} {verdict.counted.value}"
    log.warning(
        "likely compromised client=%s refusals=%d within the hour (OFFENDER_THRESHOLD) limit=%s"
        " sender=%s network=%s queue_id=%s",
        ip,
        verdict.compromised,
        limit,
        request.get("sender")[:256],
        verdict.network,
        request.get("queue_id"),
        extra=fields(
            client=ip,
            limit=limit,
            queue_id=request.get("queue_id"),
            instance=request.get("instance"),
            sender=request.get("sender")[:256],
        ),
    )
    if metrics is not None:
        metrics.likely_compromised.inc()
