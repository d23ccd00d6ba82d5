"""Serving the webhook on the addresses of WEBHOOK_LISTEN: TCP, IPv6 and UNIX sockets."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from pathlib import Path

import aiohttp
import pytest

from ratelimit.addresses import parse_networks
from ratelimit.listen import ListenAddress
from ratelimit.store import Store
from smtp_whitelist.wiring import build_webhook
from tests.dns_server import silent_dns_server
from tests.support import (
    RedisServer,
    free_port,
    make_settings,
    port_open,
)
from webhook import auth
from webhook.registered_name import RegisteredNameChecker
from webhook.serve import SHUTDOWN_GRACE, bound_ports, start_webhook

SECRET = "serve-test-secret-" + "s" * 32
WEBHOOK = {"webhook_secret": SECRET}


async def _healthz(url: str, connector: aiohttp.BaseConnector | None = None) -> int:
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.get(url) as response,
    ):
        assert (await response.json())["redis"] == "ok"
        return response.status


async def _signed_post(session: aiohttp.ClientSession, port: int) -> int:
    body = json.dumps(
        {"ip": "192.0.2.10", "user": "alice", "role": "staff", "status": "normal"}
    ).encode()
    headers = {
        "Content-Type": "application/json",
        **auth.signed_headers(SECRET, "POST", "/v1/whitelist", body),
    }
    url = f"http://127.0.0.1:{port}/v1/whitelist"
    async with session.post(url, data=body, headers=headers) as response:
        return response.status


async def test_tcp_ipv6_and_unix_sites(redis_server: RedisServer, tmp_path: Path) -> None:
    settings = make_settings(redis_server.url, defaults=WEBHOOK)
    store = Store.from_settings(settings)
    v4, v6 = free_port(), free_port("::1")
    path = str(tmp_path / "webhook.sock")
    addresses = [
        ListenAddress("127.0.0.1", v4, None),
        ListenAddress("::1", v6, None),
        ListenAddress(None, None, path),
    ]
    runner = await start_webhook(
        build_webhook(settings, store, resolver=RegisteredNameChecker("")), addresses
    )
    try:
        assert ("127.0.0.1", v4) in bound_ports(runner)
        assert await _healthz(f"http://127.0.0.1:{v4}/healthz") == 200
        assert await _healthz(f"http://[::1]:{v6}/healthz") == 200
        assert await _healthz("http://localhost/healthz", aiohttp.UnixConnector(path)) == 200
    finally:
        await runner.cleanup()
        await store.aclose()
    assert not port_open("127.0.0.1", v4)
    with socket.socket(socket.AF_UNIX) as sock, pytest.raises(FileNotFoundError):
        sock.connect(path)


async def test_stale_unix_socket_is_replaced(redis_server: RedisServer, tmp_path: Path) -> None:
    path = tmp_path / "webhook.sock"
    with socket.socket(socket.AF_UNIX) as left_over:
        left_over.bind(str(path))  # as a crashed run leaves it: a socket nobody listens on
    settings = make_settings(redis_server.url, defaults=WEBHOOK)
    store = Store.from_settings(settings)
    app = build_webhook(settings, store, resolver=RegisteredNameChecker(""))
    runner = await start_webhook(app, [ListenAddress(None, None, str(path))])
    try:
        assert await _healthz("http://localhost/healthz", aiohttp.UnixConnector(str(path))) == 200
    finally:
        await runner.cleanup()
        await store.aclose()


async def test_a_file_in_the_way_is_not_removed(redis_server: RedisServer, tmp_path: Path) -> None:
    path = tmp_path / "precious.txt"
    path.write_text("not a socket")
    settings = make_settings(redis_server.url, defaults=WEBHOOK)
    store = Store.from_settings(settings)
    port = free_port()
    addresses = [ListenAddress("127.0.0.1", port, None), ListenAddress(None, None, str(path))]
    try:
        with pytest.raises(OSError, match="not a socket"):
            await start_webhook(
                build_webhook(settings, store, resolver=RegisteredNameChecker("")), addresses
            )
    finally:
        await store.aclose()
    assert path.read_text() == "not a socket"
    # The site started before the failure was stopped again: no half-started webhook.
    assert not port_open("127.0.0.1", port)


async def test_port_in_use_fails_cleanly(redis_server: RedisServer) -> None:
    settings = make_settings(redis_server.url, defaults=WEBHOOK)
    store = Store.from_settings(settings)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        try:
            with pytest.raises(OSError, match="in use"):
                await start_webhook(
                    build_webhook(settings, store, resolver=RegisteredNameChecker("")),
                    [ListenAddress("127.0.0.1", port, None)],
                )
        finally:
            await store.aclose()


async def test_cleanup_does_not_wait_forever_for_a_hung_request(
    redis_server: RedisServer,
) -> None:
    """SIGTERM must end the process within 5 s even while a request waits on DNS."""
    settings = make_settings(
        redis_server.url,
        defaults=WEBHOOK,
        allowed_networks=parse_networks("192.0.2.0/24"),
        required_ptr_suffix="campus.example",
    )
    store = Store.from_settings(settings)
    port = free_port()
    with silent_dns_server() as silent:
        checker = RegisteredNameChecker("campus.example", [silent], lifetime=30.0)
        app = build_webhook(settings, store, resolver=checker)
        runner = await start_webhook(app, [ListenAddress("127.0.0.1", port, None)])
        try:
            async with aiohttp.ClientSession() as session:
                hung = asyncio.create_task(_signed_post(session, port))
                await asyncio.sleep(0.5)  # the request now waits on the silent DNS server
                assert not hung.done()
                started = time.monotonic()
                await asyncio.wait_for(runner.cleanup(), 5)
                # Waits the grace, then cancels: well within SIGTERM's 5 s.
                assert time.monotonic() - started < 2 * SHUTDOWN_GRACE + 0.5
                # The client is answered or disconnected, never left hanging.
                await asyncio.wait_for(asyncio.gather(hung, return_exceptions=True), 2)
        finally:
            await store.aclose()


async def test_a_live_unix_socket_is_not_stolen(redis_server: RedisServer, tmp_path: Path) -> None:
    path = str(tmp_path / "webhook.sock")
    settings = make_settings(redis_server.url, defaults=WEBHOOK)
    store = Store.from_settings(settings)
    with socket.socket(socket.AF_UNIX) as running:
        running.bind(path)
        running.listen()
        try:
            with pytest.raises(OSError, match="in use"):
                await start_webhook(
                    build_webhook(settings, store, resolver=RegisteredNameChecker("")),
                    [ListenAddress(None, None, path)],
                )
        finally:
            await store.aclose()
        # The running server's socket is untouched: a client still reaches it.
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(path)
