"""The offender view: refusals counted per client inside the decision script, ``top``,
``limited``, ``reset``, ``show``'s "may send again", and the likely-compromised line — once,
under two policy daemons sharing one Redis.
"""

from __future__ import annotations

import json
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis

from ratelimit.limits import Limit
from ratelimit.offenders import offender_from_hash, parse_span
from ratelimit.release import release_time
from ratelimit.store import KeyLayout
from tests.support import (
    BlockingPolicyClient,
    PolicydProcess,
    RedisServer,
    clean_env,
    free_port,
    policy_request,
    run_cli,
)

US = 1_000_000
HOUR = 3600 * US


# -- pure logic --------------------------------------------------------------------------------


def test_release_is_when_the_oldest_counted_message_leaves_the_window() -> None:
    now = 10 * HOUR
    entries = [(now - 50 * 60 * US, 1), (now - 20 * 60 * US, 1), (now - 5 * 60 * US, 1)]
    # 3/1h reached: one more fits once the oldest (50 minutes old) leaves, 10 minutes from now.
    assert release_time(entries, now, [Limit(3, 3600)], []) == entries[0][0] + HOUR + 1
    # 2/1h with 3 counted: two must leave, the second one 40 minutes from now.
    assert release_time(entries, now, [Limit(2, 3600)], []) == entries[1][0] + HOUR + 1
    # Below the limit, or the old entry already outside a shorter window: now.
    assert release_time(entries, now, [Limit(4, 3600)], []) is None
    assert release_time(entries, now, [Limit(3, 1800)], []) is None
    # Several limits reached: the latest moment.
    both = [Limit(3, 3600), Limit(1, 600)]
    assert release_time(entries, now, both, []) == entries[0][0] + HOUR + 1


def test_release_for_a_recipient_limit() -> None:
    now = 10 * HOUR
    entries = [(now - 30 * 60 * US, 6), (now - 10 * 60 * US, 4)]
    # 10/1h, 10 counted: a one-recipient message fits once the 6 leave.
    assert release_time(entries, now, [], [Limit(10, 3600)]) == entries[0][0] + HOUR + 1
    assert release_time(entries, now, [], [Limit(11, 3600)]) is None
    # 4/1h with 10 counted: both must leave.
    assert release_time(entries, now, [], [Limit(4, 3600)]) == entries[1][0] + HOUR + 1


def test_top_counts_whole_clock_hours_from_the_first_one_asked() -> None:
    fields = {b"h100": b"7", b"h101": b"5", b"limit": b"messages 100 3600", b"last": b"1"}
    offender = offender_from_hash("192.0.2.1", fields, first_hour=101)
    assert offender is not None
    assert (offender.refusals, offender.limit) == (5, "100/1h messages")
    assert offender_from_hash("192.0.2.1", fields, first_hour=100).refusals == 12  # type: ignore[union-attr]
    assert offender_from_hash("192.0.2.1", fields, first_hour=102) is None


@pytest.mark.parametrize("text", ["", "1", "1w", "0h", "25h", "-1h", "h"])
def test_bad_spans_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="span"):
        parse_span(text)


def test_spans() -> None:
    assert [parse_span(t) for t in ("30m", "1h", "1d", " 90s ")] == [1800, 3600, 86400, 90]


# -- two daemons, one Redis --------------------------------------------------------------------


def _refuse(client: BlockingPolicyClient, ip: str) -> None:
    action = client.ask(policy_request(ip, "RCPT"))
    assert action is not None
    assert action.startswith("450"), action


def _compromised_total(port: int) -> float:
    url = f"http://127.0.0.1:{port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as answer:
        text = answer.read().decode()
    (line,) = [
        x for x in text.splitlines() if x.startswith("smtp_whitelist_likely_compromised_total")
    ]
    return float(line.split()[-1])


def test_one_compromised_line_under_two_daemons(redis_server: RedisServer, tmp_path: Path) -> None:
    settings = {
        "redis_url": redis_server.url,
        "key_prefix": "off:",
        "message_limits": "2/1h",
        "offender_threshold": "5",
    }
    metrics_ports = [free_port(), free_port()]
    daemons = [
        PolicydProcess(tmp_path, **settings, metrics_listen=f"127.0.0.1:{port}").start()
        for port in metrics_ports
    ]
    env = clean_env(**settings)
    try:
        clients = [BlockingPolicyClient("127.0.0.1", d.port) for d in daemons]
        ip, other = "192.0.2.77", "192.0.2.78"
        # The limit filled through both daemons, then refused at DATA by both.
        assert [c.ask(policy_request(ip, "DATA")) for c in clients] == ["DUNNO", "DUNNO"]
        for c in clients:
            assert (c.ask(policy_request(ip, "DATA")) or "").startswith("450")
        refused = 0
        for i in range(11):  # 11 refusals for ip alternate between the daemons: over 2 x 5
            _refuse(clients[i % 2], ip)
            refused += 1
        assert clients[0].ask(policy_request(other, "DATA")) == "DUNNO"
        assert clients[1].ask(policy_request(other, "DATA")) == "DUNNO"
        _refuse(clients[0], other)
        for c in clients:
            c.close()

        top = run_cli("top", "--json", env=env)
        assert top.returncode == 0, top.stderr
        items = json.loads(top.stdout)["items"]
        # ip: two DATA refusals (the 3rd and 4th message) plus the 11 RCPT ones.
        assert [(i["ip"], i["refusals"], i["limit"]) for i in items] == [
            (ip, refused + 2, "2/1h messages"),
            (other, 1, "2/1h messages"),
        ]
        text = run_cli("top", "--since", "30m", "--last", "1", env=env)
        assert text.returncode == 0, text.stderr
        assert text.stdout.split()[:3] == [ip, str(refused + 2), "2/1h"]

        limited = run_cli("limited", "--json", env=env)
        assert limited.returncode == 0, limited.stderr
        assert {i["ip"] for i in json.loads(limited.stdout)["items"]} == {ip, other}
        assert run_cli("top", "--now", env=env).stdout.count("until") == 2
        # A grant lifts the limit: that client is no longer refused right now.
        assert run_cli("add", other, "--user", "op", env=env).returncode == 0
        limited = run_cli("limited", "--json", env=env)
        assert [i["ip"] for i in json.loads(limited.stdout)["items"]] == [ip]

        # Counted once, by the daemon that logged it.
        counted = [_compromised_total(port) for port in metrics_ports]
        assert sorted(counted) == [0.0, 1.0], counted

        # The counts live in Redis with a TTL, in the key layout's offender key.
        r = redis.Redis.from_url(redis_server.url)
        assert 0 < r.ttl(KeyLayout("off:").offender(ip, f"{ip}/32")) <= 25 * 3600
    finally:
        for d in daemons:
            d.stop()
    logs = [d.log_text() for d in daemons]
    lines = [line for log in logs for line in log.splitlines() if "likely compromised" in line]
    assert len(lines) == 1, logs
    line = lines[0]
    # One RFC 3339 time token, then the level and the logger.
    assert line.split()[1:3] == ["WARNING", "policyd.decision:"]
    for part in (f"client={ip}", "refusals=5", "limit=2/1h messages", "sender=alice@"):
        assert part in line, line


def test_show_says_when_the_client_may_send_again(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    settings = {"redis_url": redis_server.url, "key_prefix": "shw:", "message_limits": "2/1h"}
    daemon = PolicydProcess(tmp_path, **settings).start()
    env = clean_env(**settings)
    ip = "192.0.2.90"
    try:
        client = BlockingPolicyClient("127.0.0.1", daemon.port)
        free = json.loads(run_cli("show", ip, "--json", env=env).stdout)
        assert (free["refused_now"], free["may_send_at"]) == (False, None)
        assert client.ask(policy_request(ip, "DATA")) == "DUNNO"
        assert client.ask(policy_request(ip, "DATA")) == "DUNNO"
        _refuse(client, ip)
        client.close()
    finally:
        daemon.stop()
    r = redis.Redis.from_url(redis_server.url)
    entries: list[tuple[bytes, float]] = r.zrange(
        KeyLayout("shw:").client_log(f"{ip}/32"), 0, "+inf", byscore=True, withscores=True
    )  # type: ignore[assignment]  # the entries: decide.lua's running sums are scored below 0
    oldest = entries[0][1]
    shown = json.loads(run_cli("show", ip, "--json", env=env).stdout)
    assert shown["refused_now"] is True
    expected = int(oldest) + HOUR + 1
    assert shown["may_send_at"] == datetime.fromtimestamp(expected / US, tz=UTC).strftime(
        "%Y-%m-%dT%H:%M:%SZ"
    )
    text = run_cli("show", ip, env=env).stdout
    assert f"may send again: {shown['may_send_at']} (in " in text, text


def test_reset_clears_the_counts_and_is_audited(redis_server: RedisServer, tmp_path: Path) -> None:
    settings = {"redis_url": redis_server.url, "key_prefix": "rst:", "message_limits": "1/1h"}
    daemon = PolicydProcess(tmp_path, **settings).start()
    env = clean_env(**settings)
    ip = "192.0.2.91"
    try:
        client = BlockingPolicyClient("127.0.0.1", daemon.port)
        assert client.ask(policy_request(ip, "DATA")) == "DUNNO"
        _refuse(client, ip)
        reset = run_cli("reset", ip, env=env)
        assert reset.returncode == 0, reset.stderr
        assert f"cleared the counts of {ip}" in reset.stdout
        # At once, on the running daemon: the client may send again.
        assert client.ask(policy_request(ip, "DATA")) == "DUNNO"
        client.close()
    finally:
        daemon.stop()
    # Refusals are gone from `top` (the message sent after the reset is still counted).
    assert json.loads(run_cli("top", "--json", env=env).stdout)["items"] == []
    audit = json.loads(run_cli("audit", "--ip", ip, "--json", env=env).stdout)["items"]
    assert [(e["event"], e["ip"], e["source"]) for e in audit] == [("reset", ip, "cli")]
    assert audit[0]["actor"]
    # A client with no counts: exit 1, nothing audited.
    none = run_cli("reset", "192.0.2.92", env=env)
    assert none.returncode == 1
    assert "no counts" in none.stderr
    assert len(json.loads(run_cli("audit", "--json", env=env).stdout)["items"]) == 1
    bad = run_cli("reset", "not-an-ip", env=env)
    assert (bad.returncode, bad.stderr.count("\n")) == (2, 1)


def test_bad_since_is_a_usage_error(redis_server: RedisServer) -> None:
    env = clean_env(redis_url=redis_server.url)
    bad = run_cli("top", "--since", "2w", env=env)
    assert bad.returncode == 2
    assert bad.stderr.startswith("smtp-whitelist: --since:"), bad.stderr
