"""Issue 5: hostile input never reaches a key, a Lua argument or a reply unnormalised, and
secrets never reach a log line or ``smtp-whitelist check``."""

from __future__ import annotations

import ipaddress
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from ratelimit.store import KeyLayout
from tests.support import (
    BlockingPolicyClient,
    RedisServer,
    Service,
    free_port,
    policy_request,
    require_tool,
    run_cli,
    signed_request,
)

SECRET = "s3cret-" + secrets.token_hex(24)
REDIS_PASSWORD = "pw-" + secrets.token_hex(12)


@pytest.fixture
def guarded_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(
        require_tool("redis-server"),
        tmp_path / "redis",
        ["--save", "", "--appendonly", "no", "--requirepass", REDIS_PASSWORD],
    )
    server.start()
    yield server
    server.stop()


def _url(redis: RedisServer) -> str:
    return f"redis://:{REDIS_PASSWORD}@{redis.host}:{redis.port}/0"


def test_secrets_stay_out_of_logs_and_check(guarded_redis: RedisServer, tmp_path: Path) -> None:
    policy_port, webhook_port = free_port(), free_port()
    settings = {
        "REDIS_URL": _url(guarded_redis),
        "POLICY_LISTEN": f"127.0.0.1:{policy_port}",
        "WEBHOOK_LISTEN": f"127.0.0.1:{webhook_port}",
        "WEBHOOK_SECRET": SECRET,
        "ALLOWED_NETWORKS": "198.18.0.0/15",
        "LOG_LEVEL": "DEBUG",
        "MESSAGE_LIMITS": "1/1h",
    }
    daemon = Service("serve", settings, tmp_path).start()
    try:
        grant = {"ip": "198.18.0.10", "user": "alice", "role": "staff", "status": "normal"}
        assert signed_request(webhook_port, "POST", "/v1/whitelist", grant, SECRET)[0] == 201
        assert (
            signed_request(webhook_port, "POST", "/v1/whitelist", grant, "wrong-" + SECRET)[0]
            == 401
        )
        client = BlockingPolicyClient("127.0.0.1", policy_port)
        try:
            for _ in range(3):
                client.ask(policy_request("198.18.0.11"))
        finally:
            client.close()
    finally:
        assert daemon.stop() == 0
    log = daemon.log()
    assert "limited client=198.18.0.11" in log  # the log is really there, at DEBUG
    assert SECRET not in log
    assert REDIS_PASSWORD not in log

    env = {**daemon.environment(), "SMTP_WHITELIST_REDIS_URL": _url(guarded_redis)}
    env["SMTP_WHITELIST_WEBHOOK_SECRET"] = SECRET
    out = run_cli("check", env=env)
    assert out.returncode == 0, out.stderr
    assert "SMTP_WHITELIST_WEBHOOK_SECRET=********" in out.stdout
    assert SECRET not in out.stdout + out.stderr
    assert REDIS_PASSWORD not in out.stdout + out.stderr


HOSTILE_ADDRESSES = [
    "198.18.0.20\x00",
    "{ip}{limit}",
    "198.18.0.20\r",
    " 198.18.0.21 ",
    "::ffff:198.18.0.22",
    "2001:db8::1%eth0",
    "*",
    "swl:wl:198.18.0.23",
    "198.18.0.24/24",
    "[2001:db8::2]",
]


def test_hostile_client_addresses_never_reach_a_key_unnormalised(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    port = free_port()
    daemon = Service(
        "policyd",
        {
            "REDIS_URL": redis_server.url,
            "POLICY_LISTEN": f"127.0.0.1:{port}",
            "MESSAGE_LIMITS": "5/1h",
            "LIMIT_REPLY": "450 4.7.1 {ip} over {limit}/{window}",
        },
        tmp_path,
    ).start()
    client = BlockingPolicyClient("127.0.0.1", port)
    try:
        for address in HOSTILE_ADDRESSES:
            request = policy_request("x").replace(
                b"client_address=x\n", b"client_address=" + address.encode() + b"\n"
            )
            action = client.ask(request)
            assert action is not None
            assert "\n" not in action
            assert action == "DUNNO"
    finally:
        client.close()
        daemon.stop()
    keys = redis_server.cli("--scan").split()
    assert keys, "the well-formed ones were counted"
    for key in keys:
        prefix, kind, rest = key.split(":", 2)
        assert (prefix, kind) == ("swl", "c")
        assert (rest[0], rest[-1]) == ("{", "}"), key  # the hash tag is all of it
        network = ipaddress.ip_network(rest[1:-1])  # raises unless it is a normalised network
        assert str(network) == rest[1:-1]
    layout = KeyLayout("swl:")
    assert sorted(keys) == sorted(layout.client_log(f"198.18.0.{n}/32") for n in (20, 21, 22))
