"""Prometheus metrics of one process (``METRICS_LISTEN``; the families of docs/interface.md).

A :class:`Metrics` holds its own ``CollectorRegistry``, built once in ``main`` and passed in,
so several servers in one process (the tests) never share or collide in prometheus-client's
global default registry.

The policy server's per-decision counts are plain integers in :class:`PolicyMetrics`, turned
into metric families only when ``/metrics`` is scraped. prometheus-client's own ``Counter`` and
``Histogram`` take a lock and walk their buckets on every call, about 2 µs of CPU per decision
together; the budget for counting is 2 µs in all, so the hot path adds to a dict and a list
instead (measured: ``python -m benchmarks.metrics_cost``).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

# Upper bounds (seconds) of the decision histogram: 0.1 ms (a decision riding a shared round
# trip to a local Redis) to 1 s (beyond STORE_TIMEOUT's default 0.5 s: only a stalled loop).
DECISION_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
)

RESULTS = ("accepted", "limited", "whitelisted", "exempt", "store_error", "not_counted")
# protocol_state is whatever a client sends; anything else is "other", so a broken or hostile
# client cannot create label values without end.
STAGES = ("DATA", "BDAT", "RCPT")
OTHER_STAGE = "other"

GRANT_SOURCES = ("webhook", "page", "cli")
GRANT_OUTCOMES = ("created", "refreshed", "removed", "refused")


class PolicyMetrics(Collector):
    """Requests by stage and result, and the decision-time histogram, counted without locks.

    Everything runs on the event loop's thread (decisions and the ``/metrics`` handler alike),
    so plain integers are safe.
    """

    def __init__(self) -> None:
        stages = (*STAGES, OTHER_STAGE)
        self.requests: dict[tuple[str, str], int] = {(s, r): 0 for s in stages for r in RESULTS}
        self._stage = {s: s for s in STAGES}
        self.bucket_counts = [0] * (len(DECISION_BUCKETS) + 1)  # the last one is +Inf
        self.seconds_sum = 0.0

    def decided(self, stage: str, result: str, seconds: float) -> None:
        """One decision: the hot path's whole cost of being counted."""
        self.requests[self._stage.get(stage, OTHER_STAGE), result] += 1
        self.bucket_counts[bisect.bisect_left(DECISION_BUCKETS, seconds)] += 1
        self.seconds_sum += seconds

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "smtp_whitelist_policy_requests",
            "Policy requests answered, by protocol_state and what was decided.",
            labels=["stage", "result"],
        )
        for (stage, result), count in self.requests.items():
            requests.add_metric([stage, result], count)
        yield requests
        cumulative, buckets = 0, []
        for bound, count in zip((*DECISION_BUCKETS, float("inf")), self.bucket_counts, strict=True):
            cumulative += count
            buckets.append((_le(bound), cumulative))
        yield HistogramMetricFamily(
            "smtp_whitelist_policy_decision_seconds",
            "Time from a complete policy request to its answer.",
            buckets=buckets,
            sum_value=self.seconds_sum,
        )


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


class Metrics:
    """Every family of one process, in its own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.policy = PolicyMetrics()
        self.registry.register(self.policy)
        self.connections = Gauge(
            "smtp_whitelist_policy_connections",
            "Open policy connections (Postfix smtpd processes talking to us).",
            registry=self.registry,
        )
        self.store_up = Gauge(
            "smtp_whitelist_store_up",
            "1 when Redis answers (circuit breaker closed), else 0.",
            registry=self.registry,
        )
        self.grants = Counter(
            "smtp_whitelist_grants",
            "Grant requests by where they came from and how they ended.",
            ["source", "outcome"],
            registry=self.registry,
        )
        for source in GRANT_SOURCES:
            for outcome in GRANT_OUTCOMES:
                self.grants.labels(source, outcome)  # present at 0, so rate() works at once
        self.http_requests = Counter(
            "smtp_whitelist_http_requests",
            "Webhook HTTP requests by route and status code.",
            ["route", "status"],
            registry=self.registry,
        )
        self.likely_compromised = Counter(
            "smtp_whitelist_likely_compromised",
            "Clients refused OFFENDER_THRESHOLD times within an hour (logged once per hour).",
            registry=self.registry,
        )

    def watch_connections(self, count: Callable[[], int]) -> None:
        """Read the open connections when scraped (no bookkeeping per connection)."""
        self.connections.set_function(lambda: float(count()))

    def watch_store(self, is_up: Callable[[], bool]) -> None:
        """Read the store's circuit breaker when scraped."""
        self.store_up.set_function(lambda: 1.0 if is_up() else 0.0)

    def exposition(self) -> bytes:
        """The text format for ``/metrics``."""
        from prometheus_client import generate_latest

        return generate_latest(self.registry)
