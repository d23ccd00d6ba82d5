"""End to end: real SMTP through a real Postfix, asking the real `smtp-whitelist serve`.

Every test builds its own stack and removes it afterwards: a redis-server on a free port
(``redis_server`` from conftest), ``smtp-whitelist serve`` started through its console script
with ``SMTP_WHITELIST_*`` settings, and a private Postfix instance whose main.cf ends with
``postfix-snippet.cf`` as shipped, only the policy server's address substituted. Mail is sent
with smtplib from several loopback source addresses (127.0.0.2, 127.0.0.3, ..., ::1), with
swaks, and from network-namespace test hosts in 198.18.0.0/15 where the webhook needs an
address that is not loopback.

What the SMTP client sees for a refused message is Postfix's wrapping of LIMIT_REPLY: the
check is reached through ``check_client_access`` (the clients table), so at RCPT and at DATA
alike ``450 4.7.1 <name[ip]>: Client host rejected: <text>``, where ``<text>`` is LIMIT_REPLY
without its ``450 4.7.1`` and with ``{ip}``, ``{limit}``, ``{window}`` filled in.
"""

from __future__ import annotations

import re
import smtplib
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import pytest

from smtp_whitelist.settings import DEFAULT_LIMIT_REPLY
from tests.postfix_instance import (
    SNIPPET,
    NamespaceHosts,
    PostfixInstance,
    RecordingPolicyServer,
)
from tests.support import (
    RedisServer,
    Service,
    free_port,
    port_open,
    require_tool,
    signed_request,
    wait_for,
)

pytestmark = pytest.mark.e2e

SECRET = "e2e-" + "s3cret-" * 6  # WEBHOOK_SECRET needs at least 32 characters
SENDER = "sender@test.invalid"
LIMIT = 3  # MESSAGE_LIMITS=3/1h unless a test says otherwise

# Long enough for Postfix's retry (try_limit=2, retry_delay=1s) when the policy server is down.
SMTP_TIMEOUT = 30.0


# -- the product ----------------------------------------------------------------------------


class Product(Service):
    """``smtp-whitelist serve`` with the end-to-end defaults, on free ports, ready on READY=1."""

    def __init__(self, directory: Path, redis_url: str, settings: dict[str, str]) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.policy_port = free_port()
        self.webhook_port = free_port()
        # An empty env file keeps a machine's /etc/smtp-whitelist/smtp-whitelist.env out of it.
        self.env_file = directory / "empty.env"
        self.env_file.write_text("", encoding="utf-8")
        defaults = {
            "REDIS_URL": redis_url,
            "POLICY_LISTEN": f"127.0.0.1:{self.policy_port}",
            "WEBHOOK_LISTEN": f"127.0.0.1:{self.webhook_port}",
            "WEBHOOK_SECRET": SECRET,
            "MESSAGE_LIMITS": f"{LIMIT}/1h",
            "RECIPIENT_LIMITS": "1000/1h",
            "ALLOWED_NETWORKS": "198.18.0.0/15",
            "LOG_LEVEL": "INFO",
        }
        super().__init__("serve", defaults | settings, directory, env_file=self.env_file)

    def start(self) -> Self:
        super().start()
        assert port_open("127.0.0.1", self.policy_port), "READY=1 before the policy port"
        return self

    def webhook(self, method: str, path: str, body: dict[str, str] | None = None) -> int:
        """A signed webhook request, as the portal makes it; its status."""
        return signed_request(self.webhook_port, method, path, body, SECRET)[0]


# -- SMTP clients ---------------------------------------------------------------------------


@dataclass
class Result:
    """The outcome of one message: the reply that decided it."""

    code: int
    text: str
    stage: str  # "accepted", "RCPT" or "DATA"

    @property
    def accepted(self) -> bool:
        return self.stage == "accepted"


def send(
    host: str,
    port: int,
    source: str,
    recipients: int | list[str] = 1,
    *,
    subject: str = "e2e",
) -> Result:
    """One message over smtplib from ``source``; what the server finally said."""
    rcpts = (
        [f"rcpt{i}@example.org" for i in range(recipients)]
        if isinstance(recipients, int)
        else recipients
    )
    message = f"From: {SENDER}\r\nSubject: {subject}\r\n\r\nbody\r\n"
    with smtplib.SMTP(host, port, timeout=SMTP_TIMEOUT, source_address=(source, 0)) as client:
        try:
            refused = client.sendmail(SENDER, rcpts, message)
        except smtplib.SMTPRecipientsRefused as error:
            code, rcpt_reply = next(iter(error.recipients.values()))
            return Result(code, rcpt_reply.decode(), "RCPT")
        except smtplib.SMTPDataError as error:
            reply = error.smtp_error
            text = reply.decode() if isinstance(reply, bytes) else reply
            return Result(error.smtp_code, text, "DATA")
        assert not refused, refused  # some but not all recipients refused: not expected here
        return Result(250, "", "accepted")


def swaks(
    server: str, port: int, source: str, *, runner: Callable[..., subprocess.CompletedProcess[str]]
) -> subprocess.CompletedProcess[str]:
    """One message with swaks from ``source`` (exit 0 sent, 24 all recipients refused)."""
    return runner(
        require_tool("swaks"),
        "--server", server,
        "--port", str(port),
        "--local-interface", source,
        "--from", SENDER,
        "--to", "rcpt@example.org",
        "--timeout", str(int(SMTP_TIMEOUT)),
    )  # fmt: skip


def run_here(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(command), capture_output=True, text=True, timeout=SMTP_TIMEOUT * 2, check=False
    )


def limit_text(ip: str, limit: str, window: str = "1h", template: str = DEFAULT_LIMIT_REPLY) -> str:
    """LIMIT_REPLY as the client sees it after Postfix's prefix: without "450 4.7.1 "."""
    reply = template.format(ip=ip, limit=limit, window=window)
    assert reply.startswith("450 4.7.1 ")
    return reply.removeprefix("450 4.7.1 ")


def assert_limited(result: Result, ip: str, limit: str, stage: str = "RCPT") -> None:
    assert result.stage == stage, result
    assert result.code == 450, result
    # The check is reached through check_client_access (the clients table), so Postfix names
    # the client, at both stages: "<unknown[ip]>: Client host rejected: <text>".
    assert result.text.startswith("4.7.1 <"), result.text
    assert ">: Client host rejected: " in result.text, result.text
    assert result.text.endswith(limit_text(ip, limit)), result.text


# -- the stack ------------------------------------------------------------------------------


@dataclass
class Stack:
    """Redis, the product and Postfix of one test."""

    redis: RedisServer
    product: Product
    postfix: PostfixInstance
    hosts: NamespaceHosts | None = None

    @property
    def port(self) -> int:
        return self.postfix.port

    def send(self, source: str, recipients: int | list[str] = 1) -> Result:
        host = "::1" if ":" in source else "127.0.0.1"
        return send(host, self.port, source, recipients)


@pytest.fixture
def make_stack(redis_server: RedisServer, tmp_path: Path) -> Iterator[Callable[..., Stack]]:
    """Build a stack with extra product settings; everything is torn down after the test."""
    require_tool("postfix")
    require_tool("swaks")
    require_tool("ip")
    built: list[Stack] = []

    def build(
        *,
        namespace: bool = False,
        postfix_options: Callable[[NamespaceHosts | None], dict[str, Any]] | None = None,
        **settings: str,
    ) -> Stack:
        """``postfix_options(hosts)``: PostfixInstance arguments to use instead of the defaults."""
        hosts = NamespaceHosts(clients=2).open() if namespace else None
        try:
            product = Product(tmp_path / "product", redis_server.url, settings)
            postfix_hosts = ["127.0.0.1", "[::1]"]
            networks = ["127.0.0.0/8", "[::1]/128"]
            if hosts is not None:
                postfix_hosts.append(hosts.host_address)
                networks.append(str(hosts.subnet))
            options: dict[str, Any] = {"hosts": postfix_hosts, "mynetworks": networks}
            if postfix_options is not None:
                options.update(postfix_options(hosts))
            postfix = PostfixInstance(
                f"inet:127.0.0.1:{product.policy_port}", port=free_port(), **options
            )
        except BaseException:
            if hosts is not None:
                hosts.close()
            raise
        stack = Stack(redis_server, product, postfix, hosts)
        built.append(stack)  # from here on the fixture's teardown removes all of it
        product.start()
        postfix.start()
        return stack

    try:
        yield build
    finally:
        for stack in built:
            # Postfix first (it talks to the product), then the product, then the namespace;
            # each step runs even when an earlier one fails.
            try:
                stack.postfix.close()
            finally:
                try:
                    stack.product.stop()
                finally:
                    if stack.hosts is not None:
                        stack.hosts.close()


# -- the snippet alone ----------------------------------------------------------------------


def test_snippet_asks_at_rcpt_and_counts_at_data() -> None:
    """The shipped snippet asks once per RCPT and once per message, with recipient_count.

    A throw-away policy server records what Postfix sends, independent of the product; BDAT
    (CHUNKING) must arrive as protocol_state=DATA too, or BDAT mail would never be counted.
    """
    require_tool("postfix")
    with RecordingPolicyServer() as policy:
        instance = PostfixInstance(policy.address, port=free_port())
        try:
            instance.start()
            assert send("127.0.0.1", instance.port, "127.0.0.2", 3).accepted
            _send_bdat(instance.port, "127.0.0.3")
            wait_for(lambda: len(policy.requests) >= 6, what="6 policy requests")
            by_client = [
                (r["protocol_state"], r["client_address"], r["recipient_count"])
                for r in policy.requests
            ]
            assert by_client == [
                ("RCPT", "127.0.0.2", "0"),
                ("RCPT", "127.0.0.2", "0"),
                ("RCPT", "127.0.0.2", "0"),
                ("DATA", "127.0.0.2", "3"),
                ("RCPT", "127.0.0.3", "0"),
                ("DATA", "127.0.0.3", "1"),
            ]
            # The per-check { ... } settings were accepted without a complaint.
            assert instance.problems() == []
        finally:
            instance.close()


@pytest.mark.parametrize(
    "relay_restrictions",
    ["permit_mynetworks, reject_unauth_destination", ""],
    ids=["relay-restrictions", "pre-2.10-empty-relay-restrictions"],
)
def test_snippet_keeps_relay_control(relay_restrictions: str) -> None:
    """Asking the policy server first must not open the relay to clients outside mynetworks.

    With an empty smtpd_relay_restrictions (a pre-2.10 style main.cf) the snippet's own
    reject_unauth_destination, after its permits, is what refuses them.
    """
    require_tool("postfix")
    with RecordingPolicyServer() as policy:
        instance = PostfixInstance(
            policy.address,
            port=free_port(),
            mynetworks=["127.0.0.2/32", "[::1]/128"],
            extra_main=[f"smtpd_relay_restrictions = {relay_restrictions}"],
        )
        try:
            instance.start()
            outsider = send("127.0.0.1", instance.port, "127.0.0.9")
            assert (outsider.code, outsider.stage) == (554, "RCPT"), outsider
            assert "Relay access denied" in outsider.text
            assert send("127.0.0.1", instance.port, "127.0.0.2").accepted
            assert instance.problems() == []
        finally:
            instance.close()


def _send_bdat(port: int, source: str) -> None:
    """One message with BDAT (RFC 3030), which smtplib cannot send."""
    body = b"Subject: bdat\r\n\r\nbody\r\n"
    with socket.create_connection(("127.0.0.1", port), 10, (source, 0)) as conn:
        stream = conn.makefile("rwb")

        def command(line: bytes | None) -> bytes:
            if line is not None:
                stream.write(line)
                stream.flush()
            lines = [stream.readline()]
            while lines[-1][3:4] == b"-":  # a multi-line reply (RFC 5321 4.2.1)
                lines.append(stream.readline())
            return b"".join(lines)

        assert command(None).startswith(b"220")
        assert b"CHUNKING" in command(b"EHLO bdat.test.invalid\r\n")
        assert command(b"MAIL FROM:<%s>\r\n" % SENDER.encode()).startswith(b"250")
        assert command(b"RCPT TO:<rcpt@example.org>\r\n").startswith(b"250")
        assert command(b"BDAT %d LAST\r\n" % len(body) + body).startswith(b"250")
        command(b"QUIT\r\n")


# -- the product through Postfix ------------------------------------------------------------


def test_under_limit_250_then_limit_reply_exactly_at_n(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack()
    for _ in range(LIMIT):
        assert stack.send("127.0.0.2").accepted
    mark = len(stack.postfix.maillog())
    over = stack.send("127.0.0.2")
    assert_limited(over, "127.0.0.2", f"{LIMIT} messages")
    # Postfix logs the refusal with the policy server's text.
    line = stack.postfix.wait_for_log(r"NOQUEUE: reject: RCPT from \S+\[127\.0\.0\.2\]", since=mark)
    assert "450 4.7.1" in line
    assert limit_text("127.0.0.2", f"{LIMIT} messages") in line
    # The product says why, naming the client.
    wait_for(lambda: "limited client=127.0.0.2" in stack.product.log(), what="limited log line")
    # Another client is counted on its own.
    assert stack.send("127.0.0.3").accepted
    # And the operator's view agrees with Postfix.
    query = stack.product.cli(
        "query", "127.0.0.2", "--server", f"127.0.0.1:{stack.product.policy_port}"
    )
    assert query.returncode == 0, query.stderr
    assert limit_text("127.0.0.2", f"{LIMIT} messages") in query.stdout


def test_swaks_is_limited_too(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack()
    for _ in range(LIMIT):
        sent = swaks("127.0.0.1", stack.port, "127.0.0.4", runner=run_here)
        assert sent.returncode == 0, sent.stdout + sent.stderr
    refused = swaks("127.0.0.1", stack.port, "127.0.0.4", runner=run_here)
    assert refused.returncode == 24, refused.stdout  # swaks: no recipient accepted
    assert limit_text("127.0.0.4", f"{LIMIT} messages") in refused.stdout


def test_recipient_limit_by_one_message_with_many_recipients(
    make_stack: Callable[..., Stack],
) -> None:
    stack = make_stack(MESSAGE_LIMITS="100/1h", RECIPIENT_LIMITS="5/1h")
    assert stack.send("127.0.0.5", 3).accepted
    # Three more recipients pass RCPT (a check of message limits only) and are refused at DATA,
    # where the message is counted with its recipient_count; nothing of it is counted.
    too_many = stack.send("127.0.0.5", 3)
    assert_limited(too_many, "127.0.0.5", "5 recipients", stage="DATA")
    # So two recipients still fit, exactly, and then not one more.
    assert stack.send("127.0.0.5", 2).accepted
    assert_limited(stack.send("127.0.0.5", 1), "127.0.0.5", "5 recipients", stage="DATA")


def test_ipv6_client_is_limited(make_stack: Callable[..., Stack]) -> None:
    # smtplib, not swaks: swaks speaks IPv6 only with IO::Socket::INET6 installed.
    stack = make_stack()
    for _ in range(LIMIT):
        assert stack.send("::1").accepted
    mark = len(stack.postfix.maillog())
    assert_limited(stack.send("::1"), "::1", f"{LIMIT} messages")
    stack.postfix.wait_for_log(r"NOQUEUE: reject: RCPT from \S+\[::1\]: 450 4\.7\.1", since=mark)
    # 127.0.0.1 is a different client: IPv4 and IPv6 are counted apart.
    assert stack.send("127.0.0.1").accepted


def test_webhook_grant_lifts_the_limit_for_that_ip_only(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(namespace=True)
    hosts = stack.hosts
    assert hosts is not None
    granted, other = hosts.client_addresses

    def from_host(source: str) -> subprocess.CompletedProcess[str]:
        return swaks(hosts.host_address, stack.port, source, runner=hosts.run)

    for source in (granted, other):
        for _ in range(LIMIT):
            sent = from_host(source)
            assert sent.returncode == 0, sent.stdout + sent.stderr
        refused = from_host(source)
        assert refused.returncode == 24, refused.stdout
        assert limit_text(source, f"{LIMIT} messages") in refused.stdout

    grant = {"ip": granted, "user": "e2e-user", "role": "staff", "status": "normal"}
    assert stack.product.webhook("POST", "/v1/whitelist", grant) == 201
    # Effective for the very next message, and not counted.
    for _ in range(LIMIT + 2):
        sent = from_host(granted)
        assert sent.returncode == 0, sent.stdout + sent.stderr
    # The other IP is still at its limit.
    still = from_host(other)
    assert still.returncode == 24, still.stdout
    assert limit_text(other, f"{LIMIT} messages") in still.stdout

    assert stack.product.webhook("DELETE", f"/v1/whitelist/{granted}") == 204
    after = from_host(granted)
    assert after.returncode == 24, after.stdout
    assert limit_text(granted, f"{LIMIT} messages") in after.stdout
    # Postfix saw the real test-host address, not loopback.
    assert stack.postfix.log_lines(rf"client=unknown\[{re.escape(granted)}\]")


def test_redis_stopped_mail_flows_and_the_log_says_why(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack()
    assert stack.send("127.0.0.6").accepted
    stack.redis.stop()
    # Beyond the limit of 3: fail-open (ON_STORE_ERROR=DUNNO, the default) lets all of it pass.
    for _ in range(LIMIT + 2):
        started = time.monotonic()
        assert stack.send("127.0.0.6").accepted
        # STORE_TIMEOUT is 0.5 s per request; two requests per message, plus a margin.
        assert time.monotonic() - started < 5
    log = stack.product.log()
    assert "store unavailable" in log, log
    assert "ON_STORE_ERROR=DUNNO (fail-open)" in log, log
    assert stack.postfix.problems() == []


def test_policy_server_stopped_postfix_applies_default_action(
    make_stack: Callable[..., Stack],
) -> None:
    actions = set(re.findall(r"default_action=(\w+)", SNIPPET.read_text(encoding="utf-8")))
    assert actions == {"DUNNO"}, "the snippet ships fail-open; this test checks that"
    stack = make_stack()
    assert stack.send("127.0.0.7").accepted
    assert stack.product.stop() == 0  # SIGTERM: a clean exit
    assert b"STOPPING=1" in stack.product.notified  # what systemd is told
    mark = len(stack.postfix.maillog())
    for _ in range(LIMIT):  # one before the stop, so past the limit of 3 here
        started = time.monotonic()
        assert stack.send("127.0.0.7").accepted  # DUNNO: the other restrictions decide
        # Two tries a stage, 1 s apart: about 2 s a message, never Postfix's 100 s default.
        assert time.monotonic() - started < 10
    line = stack.postfix.wait_for_log(
        r"warning: problem talking to server 127\.0\.0\.1:", since=mark
    )
    assert str(stack.product.policy_port) in line
