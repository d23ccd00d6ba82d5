"""The ``smtp-whitelist`` command as an operator runs it: exit statuses, output, --json.

Every command runs the installed console script in a subprocess against a real redis-server;
exit statuses are INTERFACE.md's (0 done, 1 failed, 2 bad usage or settings, 3 Redis down).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from ratelimit.addresses import parse_ip
from ratelimit.grants import Grants
from ratelimit.store import KeyLayout, Store
from tests.support import (
    SMTP_WHITELIST,
    PolicyClient,
    PolicydProcess,
    RedisServer,
    clean_env,
    free_port,
    make_settings,
    policy_server,
    run_cli_async,
)

SECRET = "portal-secret-" + "k" * 40
IP = "198.51.100.23"


def assert_one_plain_line(stderr: str, *needles: str) -> None:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


@pytest.fixture
def env(redis_server: RedisServer) -> dict[str, str]:
    return clean_env(
        redis_url=redis_server.url,
        key_prefix="cli:",
        message_limits="2/1m",
        recipient_limits="10/1h",
        webhook_secret=SECRET,
        whitelist_ttl="600",
    )


# -- check --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("MESSAGE_LIMITS", "100/1y"),
        ("STORE_TIMEOUT", "0"),
        ("POLICY_LISTEN", "localhost"),
        ("LIMIT_REPLY", "450 {who}"),
        ("WEBHOOK_SECRET", "short"),
        ("MESSAGE_LIMIT", "5/1m"),  # misspelt
    ],
)
async def test_check_with_a_bad_setting_exits_2(env: dict[str, str], name: str, value: str) -> None:
    env[f"SMTP_WHITELIST_{name}"] = value
    result = await run_cli_async("check", env=env)
    assert result.returncode == 2
    assert_one_plain_line(result.stderr, f"SMTP_WHITELIST_{name}")
    assert result.stdout == ""


async def test_check_with_a_bad_env_file_exits_2(env: dict[str, str], tmp_path: Path) -> None:
    env_file = tmp_path / "site.env"
    env_file.write_text("SMTP_WHITELIST_IPV6_PREFIX=129\n")
    result = await run_cli_async("--env-file", str(env_file), "check", env=env)
    assert result.returncode == 2
    assert_one_plain_line(result.stderr, "SMTP_WHITELIST_IPV6_PREFIX")
    missing = await run_cli_async("--env-file", str(tmp_path / "nope.env"), "check", env=env)
    assert missing.returncode == 2
    assert_one_plain_line(missing.stderr, "nope.env")


async def test_check_with_redis_down_exits_3(env: dict[str, str]) -> None:
    env["SMTP_WHITELIST_REDIS_URL"] = f"redis://127.0.0.1:{free_port()}/0"
    result = await run_cli_async("check", env=env)
    assert result.returncode == 3
    assert_one_plain_line(result.stderr, "Redis unreachable")


async def test_check_with_redis_up_exits_0_and_masks_the_secret(
    env: dict[str, str], tmp_path: Path
) -> None:
    env_file = tmp_path / "site.env"
    env_file.write_text("SMTP_WHITELIST_EXEMPT_NETWORKS=192.0.2.0/24\n")
    result = await run_cli_async("--env-file", str(env_file), "check", env=env)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert f"env file: {env_file}" in lines
    assert "SMTP_WHITELIST_WEBHOOK_SECRET=********" in lines
    assert "SMTP_WHITELIST_MESSAGE_LIMITS=2/1m" in lines
    assert "SMTP_WHITELIST_EXEMPT_NETWORKS=192.0.2.0/24" in lines
    assert lines[-1].startswith("redis: ok")
    assert SECRET not in result.stdout + result.stderr


async def test_bad_usage_exits_2(env: dict[str, str]) -> None:
    for args in (["frobnicate"], ["add"], ["add", IP, "--ttl", "0"], ["query", IP, "--x"]):
        result = await run_cli_async(*args, env=env)
        assert result.returncode == 2, args
        assert "Traceback" not in result.stderr


# -- grants ----------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["add", "remove", "show", "query"])
async def test_bad_ip_exits_2(env: dict[str, str], command: str) -> None:
    result = await run_cli_async(command, "198.51.100.300", env=env)
    assert result.returncode == 2
    assert_one_plain_line(result.stderr, "'198.51.100.300' is not an IP address")


async def test_add_list_show_remove(env: dict[str, str], redis_server: RedisServer) -> None:
    added = await run_cli_async("add", IP, "--user", "alice", "--ttl", "120", env=env)
    assert added.returncode == 0, added.stderr
    assert added.stdout.startswith(f"granted {IP} for alice until ")
    again = await run_cli_async("add", IP, "--user", "alice", env=env)
    assert again.returncode == 0
    assert again.stdout.startswith(f"refreshed {IP} for alice")
    assert (await run_cli_async("add", "2001:DB8::0:7", "--user", "bob", env=env)).returncode == 0

    listed = await run_cli_async("list", "--json", env=env)
    assert listed.returncode == 0
    items = json.loads(listed.stdout)["items"]
    assert {(i["ip"], i["user"]) for i in items} == {(IP, "alice"), ("2001:db8::7", "bob")}
    mine = next(i for i in items if i["ip"] == IP)
    assert 590 <= mine["ttl"] <= 600, "a refresh without --ttl gives the full WHITELIST_TTL"
    assert mine["expires_at"].endswith("Z")
    text = await run_cli_async("list", env=env)
    assert IP in text.stdout
    assert "alice" in text.stdout

    shown = await run_cli_async("show", IP, "--json", env=env)
    assert shown.returncode == 0
    data = json.loads(shown.stdout)
    assert data["ip"] == IP
    assert data["network"] == f"{IP}/32"
    assert data["exempt"] is False
    assert data["grant"]["user"] == "alice"
    assert data["limits"] == [
        {"counts": "messages", "limit": "2/1m", "used": 0},
        {"counts": "recipients", "limit": "10/1h", "used": 0},
    ]

    removed = await run_cli_async("remove", IP, env=env)
    assert removed.returncode == 0
    assert removed.stdout.strip() == f"removed the grant of {IP} (user alice)"
    gone = await run_cli_async("remove", IP, env=env)
    assert gone.returncode == 1
    assert_one_plain_line(gone.stderr, f"no grant for {IP}")
    shown = await run_cli_async("show", IP, "--json", env=env)
    assert json.loads(shown.stdout)["grant"] is None

    audit = await run_cli_async("audit", "--ip", IP, "--json", env=env)
    assert audit.returncode == 0
    events = [(e["event"], e["source"]) for e in json.loads(audit.stdout)["items"]]
    assert events == [("grant", "cli"), ("refresh", "cli"), ("remove", "cli")]


async def test_add_unconfirmed_by_replicas_exits_1(env: dict[str, str]) -> None:
    # GRANT_MIN_REPLICAS=1 and a Redis without a replica: WAIT confirms nobody.
    added = await run_cli_async(
        "add", "192.0.2.44", env={**env, "SMTP_WHITELIST_GRANT_MIN_REPLICAS": "1"}
    )
    assert added.returncode == 1
    assert_one_plain_line(added.stderr, "may not have been kept", "0 of 1 replicas")


async def test_list_when_empty(env: dict[str, str]) -> None:
    result = await run_cli_async("list", "--json", env=env)
    assert result.returncode == 0
    assert json.loads(result.stdout) == {"items": []}
    assert (await run_cli_async("list", env=env)).stdout.strip() == "no live grants"


async def test_operator_tools_with_redis_down_exit_3(env: dict[str, str]) -> None:
    env["SMTP_WHITELIST_REDIS_URL"] = f"redis://127.0.0.1:{free_port()}/0"
    for args in (["add", IP], ["remove", IP], ["list"], ["show", IP]):
        result = await run_cli_async(*args, env=env)
        assert result.returncode == 3, (args, result.stderr)
        assert_one_plain_line(result.stderr, "Redis unreachable")


async def test_add_writes_the_key_the_policy_server_honours(
    env: dict[str, str], redis_server: RedisServer
) -> None:
    # The same settings as the CLI's, built in-process: the webhook's Grants and the server.
    settings = make_settings(redis_server.url, key_prefix="cli:", message_limits="1/1m")
    address = parse_ip(IP)
    assert address is not None
    async with policy_server(settings) as running:
        client = await running.connect()
        assert await client.ask(protocol_state="DATA", client_address=IP) == "DUNNO"
        assert await client.ask(protocol_state="DATA", client_address=IP) != "DUNNO"

        result = await run_cli_async("add", IP, "--user", "carol", "--ttl", "300", env=env)
        assert result.returncode == 0, result.stderr
        grant = await Grants(running.store, settings).get(address)
        assert grant is not None
        assert (grant.user, grant.source, grant.role) == ("carol", "cli", "operator")
        assert 295 <= grant.ttl <= 300

        for _ in range(3):
            assert await client.ask(protocol_state="DATA", client_address=IP) == "DUNNO"
        assert await running.log_size(f"{IP}/32") == 1, "whitelisted messages are not counted"

        assert (await run_cli_async("remove", IP, env=env)).returncode == 0
        assert await client.ask(protocol_state="DATA", client_address=IP) != "DUNNO"
        await client.aclose()


async def test_add_and_the_webhook_write_the_same_key(
    env: dict[str, str], redis_server: RedisServer
) -> None:
    # A grant made through Grants (as the webhook makes it) is what list and remove see.
    settings = make_settings(redis_server.url, key_prefix="cli:")
    address = parse_ip("203.0.113.5")
    assert address is not None
    store = Store.from_settings(settings)
    try:
        await Grants(store, settings).grant(
            address,
            user="dave",
            role="student",
            status="normal",
            source="webhook",
            ttl=60,
            max_per_user=3,
        )
    finally:
        await store.aclose()
    items = json.loads((await run_cli_async("list", "--json", env=env)).stdout)["items"]
    assert [(i["ip"], i["user"]) for i in items] == [("203.0.113.5", "dave")]
    assert (await run_cli_async("remove", "203.0.113.5", env=env)).returncode == 0
    assert (
        redis_server.cli("EXISTS", KeyLayout("cli:").grant("203.0.113.5", "203.0.113.5/32")) == "0"
    )


# -- query --------------------------------------------------------------------------------


async def test_query(env: dict[str, str], redis_server: RedisServer, tmp_path: Path) -> None:
    daemon = PolicydProcess(
        tmp_path,
        redis_url=redis_server.url,
        key_prefix="cli:",
        message_limits="1/1m",
        limit_reply="450 4.7.1 {ip} over {limit} per {window}",
    ).start()
    server = f"127.0.0.1:{daemon.port}"
    refused = f"450 4.7.1 {IP} over 1 messages per 1m"
    try:
        first = await run_cli_async("query", IP, "--server", server, env=env)  # RCPT: checks only
        assert (first.returncode, first.stdout.strip()) == (0, "DUNNO")
        counted = await run_cli_async("query", IP, "--state", "data", "--server", server, env=env)
        assert (counted.returncode, counted.stdout.strip()) == (0, "DUNNO")
        for state in ("DATA", "RCPT"):
            limited = await run_cli_async(
                "query", IP, "--state", state, "--server", server, env=env
            )
            assert (limited.returncode, limited.stdout.strip()) == (0, refused)
        # The default server is the first POLICY_LISTEN address.
        env["SMTP_WHITELIST_POLICY_LISTEN"] = server
        default = await run_cli_async("query", IP, env=env)
        assert default.stdout.strip() == refused
        # Whitelisted by `add`: the running server answers DUNNO at once, uncounted.
        assert (await run_cli_async("add", IP, env=env)).returncode == 0
        lifted = await run_cli_async("query", IP, "--state", "DATA", env=env)
        assert lifted.stdout.strip() == "DUNNO"
        shown = json.loads((await run_cli_async("show", IP, "--json", env=env)).stdout)
        # (show reads its limits from its own settings, 2/1m; the count is the daemon's one.)
        assert shown["limits"][0] == {"counts": "messages", "limit": "2/1m", "used": 1}

        client = await PolicyClient.connect(daemon.address)  # the daemon is still healthy
        assert await client.ask(protocol_state="MAIL") == "DUNNO"
        await client.aclose()
    finally:
        daemon.stop()
    nobody = await run_cli_async("query", IP, "--server", f"127.0.0.1:{free_port()}", env=env)
    assert nobody.returncode == 1
    assert_one_plain_line(nobody.stderr, "no answer from")
    bad = await run_cli_async("query", IP, "--server", "nowhere", env=env)
    assert bad.returncode == 2
    assert_one_plain_line(bad.stderr, "--server")


def test_a_reader_that_goes_away_gets_no_traceback(env: dict[str, str]) -> None:
    """`smtp-whitelist check | head -1`: the pipe closes before the output is written."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # every write now fails with EPIPE, as after `head` has exited
    try:
        result = subprocess.run(
            [SMTP_WHITELIST, "check"],
            env=env,
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=30,
            check=False,
        )
    finally:
        os.close(write_end)
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stderr == ""
    assert result.returncode == 1
