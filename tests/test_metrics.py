"""Metrics (METRICS_LISTEN): a real Prometheus scrapes a real ``serve`` process while policy
and webhook traffic flows, and the counters read back through its HTTP API are the decisions
made. Plus the families of every command, ``promtool check metrics``, and ``/healthz``.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import aiohttp
import pytest

from ratelimit.listen import ListenAddress
from ratelimit.metrics import DECISION_BUCKETS, Metrics, PolicyMetrics
from ratelimit.store import Store
from smtp_whitelist.settings import Settings, SettingsError, load_settings
from smtp_whitelist.wiring import build_webhook
from tests.prometheus_instance import Prometheus
from tests.support import (
    BlockingPolicyClient,
    RedisServer,
    Service,
    free_port,
    policy_request,
    require_tool,
    signed_request,
    wait_for,
)
from webhook import auth
from webhook.serve import start_webhook

SECRET = "metrics-test-secret-" + "m" * 32
FAMILIES = (
    "smtp_whitelist_policy_requests_total",
    "smtp_whitelist_policy_decision_seconds",
    "smtp_whitelist_policy_connections",
    "smtp_whitelist_store_up",
    "smtp_whitelist_grants_total",
    "smtp_whitelist_http_requests_total",
    "smtp_whitelist_likely_compromised_total",
)


# -- the counting itself -----------------------------------------------------------------------


def test_decisions_land_in_their_label_and_bucket() -> None:
    policy = PolicyMetrics()
    policy.decided("DATA", "accepted", 0.00005)  # below the first bound (0.1 ms)
    policy.decided("DATA", "accepted", 0.0001)  # exactly on it: le="0.0001" includes it
    policy.decided("RCPT", "limited", 0.003)
    policy.decided("VRFY", "not_counted", 2.0)  # any other state is "other"; beyond 1 s: +Inf
    assert policy.requests["DATA", "accepted"] == 2
    assert policy.requests["RCPT", "limited"] == 1
    assert policy.requests["other", "not_counted"] == 1
    assert ("VRFY", "not_counted") not in policy.requests
    assert policy.bucket_counts[0] == 2
    assert policy.bucket_counts[DECISION_BUCKETS.index(0.005)] == 1
    assert policy.bucket_counts[-1] == 1
    assert policy.seconds_sum == pytest.approx(2.00315)


def test_buckets_resolve_a_tenth_of_a_millisecond_to_a_second() -> None:
    assert DECISION_BUCKETS[0] == 0.0001
    assert DECISION_BUCKETS[-1] == 1.0
    assert list(DECISION_BUCKETS) == sorted(DECISION_BUCKETS)
    # At least two bounds per decade, so a quantile is never off by more than a factor of ~2.5.
    for low, high in itertools.pairwise(DECISION_BUCKETS):
        assert high / low <= 2.5


def test_exposition_passes_promtool_and_registries_are_separate() -> None:
    promtool = require_tool("promtool")
    first, second = Metrics(), Metrics()  # two in one process: no "Duplicated timeseries"
    first.policy.decided("DATA", "limited", 0.001)
    first.likely_compromised.inc()
    text = first.exposition().decode()
    for family in FAMILIES:
        assert family in text, family
    assert 'smtp_whitelist_policy_requests_total{result="limited",stage="DATA"} 1.0' in text
    assert "smtp_whitelist_likely_compromised_total 0.0" in second.exposition().decode()
    checked = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


# -- real processes, a real Prometheus ---------------------------------------------------------


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:  # noqa: S310 (loopback)
            return int(answer.status), answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def _signed_grant(port: int, ip: str) -> int:
    body = {"ip": ip, "user": "alice", "role": "staff", "status": "normal"}
    return signed_request(port, "POST", "/v1/whitelist", body, SECRET)[0]


def test_prometheus_reads_back_the_decisions_made(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    prometheus_binary = require_tool("prometheus")
    metrics_port, policy_port, webhook_port = free_port(), free_port(), free_port()
    prometheus = Prometheus(prometheus_binary, tmp_path / "prometheus", metrics_port)
    prometheus.directory.mkdir()
    serve = Service(
        "serve",
        {
            "REDIS_URL": redis_server.url,
            "POLICY_LISTEN": f"127.0.0.1:{policy_port}",
            "WEBHOOK_LISTEN": f"127.0.0.1:{webhook_port}",
            "METRICS_LISTEN": f"127.0.0.1:{metrics_port}",
            "WEBHOOK_SECRET": SECRET,
            "ALLOWED_NETWORKS": "192.0.2.0/24",
            "MESSAGE_LIMITS": "4/1h",
            "OFFENDER_THRESHOLD": "3",
        },
        tmp_path / "serve",
    )
    serve.start()
    prometheus.start()
    clients: list[BlockingPolicyClient] = []
    try:
        # Counters must start from a scraped zero, or increase() in the alert rules sees no rise.
        assert prometheus.wait_value('up{job="smtp-whitelist"}', 1.0) == 1.0, prometheus.log()

        made: Counter[tuple[str, str]] = Counter()
        clients = [BlockingPolicyClient("127.0.0.1", policy_port) for _ in range(2)]
        for n in range(7):
            for i, ip in enumerate(("192.0.2.31", "192.0.2.32")):
                action = clients[i].ask(policy_request(ip, "DATA", 2))
                made["DATA", "accepted" if action == "DUNNO" else "limited"] += 1
            action = clients[0].ask(policy_request("192.0.2.33", "RCPT"))
            made["RCPT", "accepted" if action == "DUNNO" else "limited"] += 1
            if n % 3 == 0:
                assert clients[1].ask(policy_request("192.0.2.34", "CONNECT")) == "DUNNO"
                made["other", "not_counted"] += 1
        assert made["DATA", "limited"] == 6  # 4 of 7 pass for each of the two clients
        assert _signed_grant(webhook_port, "192.0.2.40") == 201
        assert clients[0].ask(policy_request("192.0.2.40", "DATA")) == "DUNNO"
        made["DATA", "whitelisted"] += 1
        assert _signed_grant(webhook_port, "198.51.100.1") == 422  # not an allowed network
        assert _get(f"http://127.0.0.1:{webhook_port}/v1/whitelist")[0] == 401

        for (stage, result), count in made.items():
            query = f'smtp_whitelist_policy_requests_total{{stage="{stage}",result="{result}"}}'
            assert prometheus.wait_value(query, count) == count, query
        total = sum(made.values())
        histogram = "smtp_whitelist_policy_decision_seconds_count"
        assert prometheus.wait_value(histogram, total) == total
        assert prometheus.value('smtp_whitelist_policy_decision_seconds_bucket{le="1.0"}') == total
        assert prometheus.value("sum(smtp_whitelist_policy_requests_total)") == total
        # Both clients reached 3 refusals within the hour: each counted once.
        assert prometheus.value("smtp_whitelist_likely_compromised_total") == 2
        grants = 'smtp_whitelist_grants_total{source="webhook",outcome="%s"}'
        assert prometheus.wait_value(grants % "created", 1) == 1
        assert prometheus.value(grants % "refused") == 1
        http = 'smtp_whitelist_http_requests_total{route="/v1/whitelist",status="%s"}'
        for code in ("201", "422", "401"):
            assert prometheus.wait_value(http % code, 1) == 1, code
        assert prometheus.wait_value("smtp_whitelist_policy_connections", 2) == 2
        assert prometheus.value("smtp_whitelist_store_up") == 1

        # The shipped rules are loaded, evaluate cleanly against these series, and the
        # likely-compromised alert goes off.
        groups = prometheus.api("rules")["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        assert len(rules) == 4
        assert all(rule["health"] == "ok" for rule in rules), rules
        alert = 'ALERTS{alertname="SmtpWhitelistLikelyCompromisedClient",alertstate="firing"}'
        assert prometheus.wait_value(alert, 1) == 1, prometheus.api("alerts")

        # Redis goes away: the decisions fail open and are counted so; the breaker opens.
        status, body = _get(f"http://127.0.0.1:{metrics_port}/healthz")
        assert (status, json.loads(body)) == (200, {"redis": "ok"})
        redis_server.stop()
        for _ in range(3):
            assert clients[0].ask(policy_request("192.0.2.35", "DATA")) == "DUNNO"
        store_errors = 'smtp_whitelist_policy_requests_total{stage="DATA",result="store_error"}'
        assert prometheus.wait_value(store_errors, 3) == 3
        assert prometheus.wait_value("smtp_whitelist_store_up", 0) == 0
        status, body = _get(f"http://127.0.0.1:{metrics_port}/healthz")
        assert status == 503
        assert json.loads(body)["redis"] == "unavailable"
    finally:
        for client in clients:
            client.close()
        prometheus.stop()
        assert serve.stop() == 0, serve.log()
    log = serve.log()
    assert "Traceback" not in log, log
    assert log.count("likely compromised") == 2, log


@pytest.mark.parametrize("command", ["policyd", "webhook"])
def test_each_server_serves_every_family(
    command: str, redis_server: RedisServer, tmp_path: Path
) -> None:
    port = free_port()
    daemon = Service(
        command,
        {
            "REDIS_URL": redis_server.url,
            "POLICY_LISTEN": f"127.0.0.1:{free_port()}",
            "WEBHOOK_LISTEN": f"127.0.0.1:{free_port()}",
            "METRICS_LISTEN": f"127.0.0.1:{port}",
            "WEBHOOK_SECRET": SECRET,
        },
        tmp_path,
    )
    daemon.start()
    try:
        status, body = _get(f"http://127.0.0.1:{port}/metrics")
        assert status == 200
        text = body.decode()
        for family in FAMILIES:
            assert f"# HELP {family} " in text, (family, text)
        wait_for(
            lambda: _get(f"http://127.0.0.1:{port}/healthz") == (200, b'{"redis": "ok"}'),
            what="/healthz 200",
        )
    finally:
        assert daemon.stop() == 0, daemon.log()


def test_no_metrics_listener_by_default(redis_server: RedisServer, tmp_path: Path) -> None:
    policy_port = free_port()
    daemon = Service(
        "policyd",
        {"REDIS_URL": redis_server.url, "POLICY_LISTEN": f"127.0.0.1:{policy_port}"},
        tmp_path,
    )
    daemon.start()
    try:
        assert "metrics listening" not in daemon.log()
    finally:
        assert daemon.stop() == 0, daemon.log()
    assert "metrics listening" not in daemon.log()


async def test_webhook_counts_grants_by_outcome_and_requests_by_route(
    redis_server: RedisServer,
) -> None:
    settings = Settings(
        redis_url=redis_server.url, webhook_secret=SECRET, allowed_networks="192.0.2.0/24"
    )
    store = Store.from_settings(settings)
    metrics = Metrics()
    app = build_webhook(settings, store, metrics=metrics)
    port = free_port()
    runner = await start_webhook(app, [ListenAddress("127.0.0.1", port, None)])

    async def call(session: aiohttp.ClientSession, method: str, path: str, body: bytes) -> int:
        headers = {
            "Content-Type": "application/json",
            **auth.signed_headers(SECRET, method, path, body),
        }
        url = f"http://127.0.0.1:{port}{path}"
        async with session.request(method, url, data=body, headers=headers) as answer:
            return answer.status

    def grant(ip: str, role: str = "staff") -> bytes:
        return json.dumps({"ip": ip, "user": "bob", "role": role, "status": "normal"}).encode()

    try:
        async with aiohttp.ClientSession() as session:
            assert await call(session, "POST", "/v1/whitelist", grant("192.0.2.50")) == 201
            assert await call(session, "POST", "/v1/whitelist", grant("192.0.2.50")) == 200
            assert await call(session, "DELETE", "/v1/whitelist/192.0.2.50", b"") == 204
            assert await call(session, "DELETE", "/v1/whitelist/192.0.2.50", b"") == 404
            refused = grant("192.0.2.51", role="guest")
            assert await call(session, "POST", "/v1/whitelist", refused) == 403
            assert await call(session, "GET", "/nowhere", b"") == 404
    finally:
        await runner.cleanup()
        await store.aclose()

    def grants(outcome: str) -> float | None:
        labels = {"source": "webhook", "outcome": outcome}
        return metrics.registry.get_sample_value("smtp_whitelist_grants_total", labels)

    assert [grants(o) for o in ("created", "refreshed", "removed", "refused")] == [1, 1, 1, 1]

    def http(route: str, status: str) -> float | None:
        labels = {"route": route, "status": status}
        return metrics.registry.get_sample_value("smtp_whitelist_http_requests_total", labels)

    assert http("/v1/whitelist", "201") == 1
    assert http("/v1/whitelist", "200") == 1
    assert http("/v1/whitelist", "403") == 1
    assert http("/v1/whitelist/{ip}", "204") == 1  # the pattern, never the address itself
    assert http("/v1/whitelist/{ip}", "404") == 1
    assert http("unmatched", "404") == 1


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("METRICS_LISTEN", "nowhere"),
        ("METRICS_LISTEN", "unix:/run/m.sock"),
        ("OFFENDER_THRESHOLD", "0"),
    ],
)
def test_bad_metrics_settings_name_the_setting(
    name: str, value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(f"SMTP_WHITELIST_{name}", value)
    with pytest.raises(SettingsError) as raised:
        load_settings(None)
    (line,) = raised.value.lines
    assert line.startswith(f"SMTP_WHITELIST_{name}: "), line


def test_metrics_settings() -> None:
    settings = Settings(metrics_listen="127.0.0.1:9110,[::1]:9110", offender_threshold=7)
    assert [str(a) for a in settings.metrics_listen] == ["127.0.0.1:9110", "[::1]:9110"]
    assert Settings(metrics_listen=" ").metrics_listen == ()
    assert Settings().offender_threshold == 50
