"""Issue 3's end-to-end acceptance, without Postfix: limit, grant, refresh, remove, audit.

One ``smtp-whitelist serve`` process (policy server and webhook, one Redis pool) against a real
redis-server; policy requests go over a real socket on one persistent connection, as one smtpd
holds it, and the webhook is called over real HTTP with the portal's signature. The operator's
CLI runs as the real program against the same Redis.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support import (
    BlockingPolicyClient,
    RedisServer,
    Service,
    free_port,
    policy_request,
    port_open,
    signed_request,
    wait_for,
)

SECRET = "grant-flow-secret-" + "g" * 32
TTL = 3600
LIMIT_REPLY = "450 4.7.1 {ip} sent {limit} in {window}; log in to the campus portal to lift it"
IP = "198.18.0.10"
OTHER = "198.18.0.11"


@dataclass
class Served:
    daemon: Service
    policy_port: int
    webhook_port: int

    def reply_for(self, ip: str) -> str:
        return LIMIT_REPLY.format(ip=ip, limit="2 messages", window="1h")

    def policy(self) -> BlockingPolicyClient:
        return BlockingPolicyClient("127.0.0.1", self.policy_port)

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """A signed webhook request, as the portal makes it; (status, parsed JSON or None)."""
        return signed_request(self.webhook_port, method, path, body, SECRET)

    def grant(self, ip: str, user: str = "alice") -> tuple[int, Any]:
        body = {"ip": ip, "user": user, "role": "student", "status": "normal"}
        return self.call("POST", "/v1/whitelist", body)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``smtp-whitelist ARGS`` with the daemon's settings."""
        return self.daemon.cli(*args)

    def cli_json(self, *args: str) -> Any:
        done = self.cli(*args, "--json")
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    def messages_used(self, ip: str) -> int:
        shown = self.cli_json("show", ip)
        (messages,) = [u for u in shown["limits"] if u["counts"] == "messages"]
        used: int = messages["used"]
        return used


@pytest.fixture
def served(redis_server: RedisServer, tmp_path: Path) -> Iterator[Served]:
    policy_port, webhook_port = free_port(), free_port()
    daemon = Service(
        "serve",
        {
            "REDIS_URL": redis_server.url,
            "WEBHOOK_SECRET": SECRET,
            "POLICY_LISTEN": f"127.0.0.1:{policy_port}",
            "WEBHOOK_LISTEN": f"127.0.0.1:{webhook_port}",
            "MESSAGE_LIMITS": "2/1h",
            "RECIPIENT_LIMITS": "",
            "WHITELIST_TTL": str(TTL),
            "ALLOWED_NETWORKS": "198.18.0.0/15",
            "MAX_GRANTS_PER_USER": "1",
            "LIMIT_REPLY": LIMIT_REPLY,
        },
        tmp_path / "serve",
    )
    daemon.start()
    try:
        wait_for(lambda: port_open("127.0.0.1", webhook_port), what="the webhook")
        yield Served(daemon, policy_port, webhook_port)
    finally:
        status = daemon.stop()
        log = daemon.log()
        assert status == 0, log
        assert "Traceback" not in log, log


def test_grant_lifts_the_limit_at_once_and_delete_restores_it(served: Served) -> None:
    """Over the limit → refused; POST → the very next DATA is DUNNO, uncounted; DELETE → refused."""
    smtpd = served.policy()
    try:
        data = policy_request(IP)
        assert smtpd.ask(data) == "DUNNO"
        assert smtpd.ask(data) == "DUNNO"
        assert smtpd.ask(data) == served.reply_for(IP)
        assert served.messages_used(IP) == 2

        status, grant = served.grant(IP)
        assert status == 201, grant
        assert grant["ip"] == IP
        assert grant["user"] == "alice"
        assert TTL - 2 <= grant["ttl"] <= TTL

        # The very next request on the same connection: whitelisted, and not counted.
        for _ in range(3):
            assert smtpd.ask(data) == "DUNNO"
        assert served.messages_used(IP) == 2
        assert served.cli_json("show", IP)["grant"]["user"] == "alice"

        # A grant for one IP does nothing for another (counted per /32 by default).
        other = policy_request(OTHER)
        assert smtpd.ask(other) == "DUNNO"
        assert smtpd.ask(other) == "DUNNO"
        assert smtpd.ask(other) == served.reply_for(OTHER)

        # While live, the grant is listed and can be read.
        status, listed = served.call("GET", "/v1/whitelist")
        assert status == 200
        assert [g["ip"] for g in listed["items"]] == [IP]
        status, shown = served.call("GET", f"/v1/whitelist/{IP}")
        assert status == 200
        assert shown["ip"] == IP

        # A second POST refreshes: 200, and the TTL is back to full.
        time.sleep(1.2)
        status, before = served.call("GET", f"/v1/whitelist/{IP}")
        assert status == 200
        assert before["ttl"] < TTL
        status, refreshed = served.grant(IP)
        assert status == 200, refreshed
        assert refreshed["ttl"] == TTL
        assert refreshed["expires_at"] > before["expires_at"]

        # DELETE ends it, and the very next request is limited again.
        status, body = served.call("DELETE", f"/v1/whitelist/{IP}")
        assert (status, body) == (204, None)
        assert smtpd.ask(data) == served.reply_for(IP)
        assert served.messages_used(IP) == 2
        assert served.call("GET", f"/v1/whitelist/{IP}")[0] == 404
        assert served.call("GET", "/v1/whitelist") == (200, {"items": []})
        assert served.call("DELETE", f"/v1/whitelist/{IP}")[0] == 404

        # The operator's CLI writes the same grant the policy server reads.
        added = served.cli("add", IP, "--user", "operator1")
        assert added.returncode == 0, added.stderr
        assert smtpd.ask(data) == "DUNNO"
        removed = served.cli("remove", IP)
        assert removed.returncode == 0, removed.stderr
        assert smtpd.ask(data) == served.reply_for(IP)
        assert served.cli("remove", IP).returncode == 1  # no such grant any more
    finally:
        smtpd.close()

    trail = served.cli_json("audit", "--ip", IP)["items"]
    assert [(e["event"], e["source"]) for e in trail] == [
        ("grant", "webhook"),
        ("refresh", "webhook"),
        ("remove", "webhook"),
        ("grant", "cli"),
        ("remove", "cli"),
    ]
    assert all(e["ip"] == IP for e in trail)
    assert [e["user"] for e in trail[:3]] == ["alice"] * 3
    assert trail[3]["user"] == "operator1"
    assert trail[0]["role"] == "student"
    assert trail[0]["status"] == "normal"
    assert [e["at"] for e in trail] == sorted(e["at"] for e in trail)
    # The other address was never granted, so it has no history.
    assert served.cli_json("audit", "--ip", OTHER)["items"] == []


def test_per_user_cap_refuses_a_second_ip_but_refreshes_the_first(served: Served) -> None:
    """MAX_GRANTS_PER_USER=1: a second IP of the same user is 429; refreshing the first is 200."""
    first, second = "198.18.0.20", "198.18.0.21"
    assert served.grant(first, user="bob")[0] == 201
    status, refused = served.grant(second, user="bob")
    assert status == 429, refused
    assert refused["error"] == "too_many_grants"
    status, refreshed = served.grant(first, user="bob")
    assert status == 200, refreshed
    assert refreshed["ttl"] == TTL
    # The refused address got nothing: still limited, and nothing was recorded for it.
    smtpd = served.policy()
    try:
        data = policy_request(second)
        assert smtpd.ask(data) == "DUNNO"
        assert smtpd.ask(data) == "DUNNO"
        assert smtpd.ask(data) == served.reply_for(second)
        # The granted one is not limited.
        for _ in range(3):
            assert smtpd.ask(policy_request(first)) == "DUNNO"
    finally:
        smtpd.close()
    assert served.cli_json("audit", "--ip", second)["items"] == []
    # Another user may have the second address; once bob's grant ends, bob may take another.
    assert served.grant(second, user="carol")[0] == 201
    assert served.call("DELETE", f"/v1/whitelist/{first}")[0] == 204
    assert served.grant("198.18.0.22", user="bob")[0] == 201
    items = served.call("GET", "/v1/whitelist")[1]["items"]
    assert sorted((g["ip"], g["user"]) for g in items) == [
        ("198.18.0.21", "carol"),
        ("198.18.0.22", "bob"),
    ]
