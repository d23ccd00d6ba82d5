"""contrib/: the Prometheus alert rules and the Grafana dashboard, checked by Prometheus' own tools.

``promtool check rules`` on the shipped rules; ``promtool test rules`` shows that each alert goes
off for the situation it is named after (and not otherwise); every dashboard query is valid
PromQL (checked as a recording rule) over families the program really exports.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

from ratelimit.metrics import Metrics
from tests.support import require_tool

CONTRIB = Path(__file__).resolve().parent.parent / "contrib"
RULES = CONTRIB / "prometheus" / "alerts.yml"
DASHBOARD = CONTRIB / "grafana" / "smtp-whitelist.json"


def _promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_tool("promtool"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=cwd,
    )


def test_promtool_checks_the_shipped_rules() -> None:
    checked = _promtool("check", "rules", str(RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 4 rules found" in checked.stdout


def _series(name: str, values: str, **labels: str) -> dict[str, str]:
    text = ",".join(f'{k}="{v}"' for k, v in {"instance": "relay1:9110", **labels}.items())
    return {"series": f"{name}{{{text}}}", "values": values}


def test_each_alert_goes_off_for_its_situation(tmp_path: Path) -> None:
    requests = "smtp_whitelist_policy_requests_total"
    instance = {"instance": "relay1:9110"}
    tests = {
        "rule_files": [str(RULES)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    # Redis down from minute 2 on; store errors at 0.1/s from minute 0.
                    _series("smtp_whitelist_store_up", "1 1 0x10"),
                    _series(requests, "0+6x20", result="store_error", stage="DATA"),
                    # One client reaches the threshold at minute 3.
                    _series("smtp_whitelist_likely_compromised_total", "0 0 0 1x10"),
                ],
                "alert_rule_test": [
                    {"eval_time": "2m", "alertname": "SmtpWhitelistRedisDown", "exp_alerts": []},
                    {
                        "eval_time": "4m",
                        "alertname": "SmtpWhitelistRedisDown",
                        "exp_alerts": [
                            {
                                "exp_labels": {"severity": "critical", **instance},
                                "exp_annotations": {
                                    "summary": "smtp-whitelist on relay1:9110 cannot reach Redis",
                                    "description": (
                                        "The circuit breaker is open: every policy request is"
                                        " answered ON_STORE_ERROR without a limit. Check"
                                        " redis-server and the REDIS_URL of relay1:9110."
                                    ),
                                },
                            }
                        ],
                    },
                    {
                        "eval_time": "12m",
                        "alertname": "SmtpWhitelistStoreErrorsRising",
                        "exp_alerts": [
                            {
                                "exp_labels": {"severity": "warning", **instance},
                                "exp_annotations": {
                                    "summary": "smtp-whitelist on relay1:9110: Redis errors in"
                                    " policy decisions",
                                    "description": "0.10 decisions per second fail on Redis"
                                    " (timeouts or errors) and are answered ON_STORE_ERROR. Look"
                                    ' for "store unavailable" in the policy server\'s log.',
                                },
                            }
                        ],
                    },
                    {
                        "eval_time": "2m",
                        "alertname": "SmtpWhitelistLikelyCompromisedClient",
                        "exp_alerts": [],
                    },
                    {
                        "eval_time": "5m",
                        "alertname": "SmtpWhitelistLikelyCompromisedClient",
                        "exp_alerts": [
                            {
                                "exp_labels": {"severity": "warning", **instance},
                                "exp_annotations": {
                                    "summary": "A client of relay1:9110 is likely compromised",
                                    "description": "A client reached OFFENDER_THRESHOLD refusals"
                                    " within an hour. Run `smtp-whitelist top` to see it,"
                                    " `smtp-whitelist show IP` for its state, and `smtp-whitelist"
                                    " reset IP` once the PC is cleaned.",
                                },
                            }
                        ],
                    },
                ],
            },
            {
                # A week of 1 refusal in 100 requests, then an hour of 1 in 10.
                "interval": "10m",
                "input_series": [
                    _series(requests, "0+100x1008 100900+100x12", result="accepted", stage="DATA"),
                    _series(requests, "0+1x1008 1009+11x12", result="limited", stage="RCPT"),
                ],
                "alert_rule_test": [
                    {
                        "eval_time": "167h",
                        "alertname": "SmtpWhitelistRefusingMoreThanUsual",
                        "exp_alerts": [],
                    },
                    {
                        "eval_time": "170h",
                        "alertname": "SmtpWhitelistRefusingMoreThanUsual",
                        "exp_alerts": [
                            {
                                "exp_labels": {"severity": "warning", **instance},
                                "exp_annotations": {
                                    "summary": "smtp-whitelist on relay1:9110 refuses more mail"
                                    " than usual",
                                    "description": "The share of refused policy requests in the"
                                    " last hour is over three times the week's. `smtp-whitelist"
                                    " top --since 1h` lists the clients refused most.",
                                },
                            }
                        ],
                    },
                ],
            },
        ],
    }
    path = tmp_path / "alerts_test.yml"
    path.write_text(json.dumps(tests))  # JSON is YAML
    tested = _promtool("test", "rules", str(path))
    assert tested.returncode == 0, tested.stdout + tested.stderr


def _dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    assert len(queries) >= 8
    return queries


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    # Grafana's variables, replaced as Grafana would before the query reaches Prometheus.
    queries = [
        q.replace("$__rate_interval", "1m").replace("$instance", ".*") for q in _dashboard_queries()
    ]
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [{"record": f"dashboard:q{i}", "expr": q} for i, q in enumerate(queries)],
            }
        ]
    }
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(json.dumps(rules))
    checked = _promtool("check", "rules", str(path))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_dashboard_and_rules_use_only_exported_families() -> None:
    metrics = Metrics()
    metrics.http_requests.labels("/healthz", "200").inc()  # labelled: no sample until counted
    exported = {sample.name for family in metrics.registry.collect() for sample in family.samples}
    text = " ".join(_dashboard_queries()) + RULES.read_text()
    used = set(re.findall(r"\bsmtp_whitelist_[a-z_]+", text))
    assert used, text
    assert used <= exported, used - exported
    # Every family of the contract is on the dashboard.
    for family in metrics.registry.collect():
        assert family.name in " ".join(_dashboard_queries()), family.name
