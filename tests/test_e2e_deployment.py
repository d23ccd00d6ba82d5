"""End to end, as a campus runs Postfix: a relay that is also the MX, with submission.

Through a real Postfix (``postfix-snippet.cf`` and ``postfix-clients.cidr`` as shipped) and
the real ``smtp-whitelist serve``:

- only the clients the relay serves are limited: campus clients (``mynetworks``) on port 25
  and on submission, and SASL-authenticated clients from anywhere; an outside server delivering
  to a relay domain is never asked about, counted nor limited (and ``LIMITED_NETWORKS`` keeps
  it so even with a snippet that asks about everyone);
- a message that alone exceeds a recipient limit gets TOO_BIG_REPLY, permanent;
- ``MODE=monitor``: decisions made and logged, Postfix told WARN, mail flows;
- with the DATA check missing, the warning comes at the first client over its message limit,
  and ``smtp-whitelist check`` says so.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.postfix_instance import SNIPPET, NamespaceHosts
from tests.support import free_port, require_tool, wait_for
from tests.test_e2e_postfix import (
    LIMIT,
    SENDER,
    SMTP_TIMEOUT,
    Stack,
    limit_text,
    make_stack,
)

pytestmark = pytest.mark.e2e

__all__ = ["make_stack"]  # the fixture, imported for pytest

RELAY_DOMAIN = "campus.test.invalid"
SASL_USER, SASL_PASSWORD = "alice", "e2e-password"


def swaks_from(
    hosts: NamespaceHosts,
    port: int,
    source: str,
    *,
    to: str = "rcpt@example.org",
    auth: bool = False,
) -> subprocess.CompletedProcess[str]:
    """One message with swaks from the test host ``source`` (exit 0 sent, 24 refused)."""
    login = ["--auth", "PLAIN", "--auth-user", SASL_USER, "--auth-password", SASL_PASSWORD]
    return hosts.run(
        require_tool("swaks"),
        "--server", hosts.host_address,
        "--port", str(port),
        "--local-interface", source,
        "--from", SENDER,
        "--to", to,
        "--timeout", str(int(SMTP_TIMEOUT)),
        *(login if auth else []),
    )  # fmt: skip


def used(stack: Stack, ip: str) -> dict[str, int]:
    """``smtp-whitelist show IP --json``: each limit's use."""
    shown = stack.product.cli("show", ip, "--json")
    assert shown.returncode == 0, shown.stderr
    return {f"{u['limit']} {u['counts']}": u["used"] for u in json.loads(shown.stdout)["limits"]}


def campus_relay(submission_port: int) -> Callable[[NamespaceHosts | None], dict[str, Any]]:
    """Postfix options: the first test host is campus, the second outside; a submission port.

    The submission service is configured as the README tells: SASL on, and the one
    ``$smtp_whitelist_check`` where master.cf replaces smtpd_recipient_restrictions.
    """

    def options(hosts: NamespaceHosts | None) -> dict[str, Any]:
        assert hosts is not None
        campus = hosts.client_addresses[0]
        return {
            "mynetworks": ["127.0.0.0/8", "[::1]/128", f"{campus}/32"],
            "extra_main": [f"relay_domains = {RELAY_DOMAIN}"],
            "extra_master": [
                f"{hosts.host_address}:{submission_port} inet n - n - - smtpd"
                " -o syslog_name=postfix-test/submission -o smtpd_sasl_auth_enable=yes"
                " -o smtpd_relay_restrictions=permit_mynetworks,permit_sasl_authenticated,reject"
                " -o smtpd_recipient_restrictions=$smtp_whitelist_check"
            ],
            "sasl_users": {SASL_USER: SASL_PASSWORD},
        }

    return options


def test_only_the_clients_the_relay_serves_are_limited(
    make_stack: Callable[..., Stack], monkeypatch: pytest.MonkeyPatch
) -> None:
    require_tool("saslpasswd2")
    submission = free_port()
    stack = make_stack(namespace=True, postfix_options=campus_relay(submission))
    # The snippet as shipped has the DATA check, and `check` finds it in main.cf.
    monkeypatch.setenv("MAIL_CONFIG", str(stack.postfix.etc))
    check = stack.product.cli("check")
    assert check.returncode == 0, check.stderr
    assert "smtpd_data_restrictions" not in check.stdout
    hosts = stack.hosts
    assert hosts is not None
    campus, outside = hosts.client_addresses

    # An outside server delivering to a relay domain, on port 25, beyond any limit: never
    # asked about, so never counted nor limited.
    for _ in range(LIMIT + 2):
        sent = swaks_from(hosts, stack.port, outside, to=f"someone@{RELAY_DOMAIN}")
        assert sent.returncode == 0, sent.stdout + sent.stderr
    assert used(stack, outside) == {"3/1h messages": 0, "1000/1h recipients": 0}
    assert f"client={outside}" not in stack.product.log()

    # A campus client is counted on port 25 and on submission alike, and limited on either.
    for port in (stack.port, stack.port, submission):
        sent = swaks_from(hosts, port, campus)
        assert sent.returncode == 0, sent.stdout + sent.stderr
    assert used(stack, campus)["3/1h messages"] == LIMIT
    for port in (submission, stack.port):
        refused = swaks_from(hosts, port, campus)
        assert refused.returncode == 24, refused.stdout
        assert limit_text(campus, f"{LIMIT} messages") in refused.stdout

    # The outside host, once it authenticates on submission, is a client the relay serves.
    for _ in range(LIMIT):
        sent = swaks_from(hosts, submission, outside, auth=True)
        assert sent.returncode == 0, sent.stdout + sent.stderr
    refused = swaks_from(hosts, submission, outside, auth=True)
    assert refused.returncode == 24, refused.stdout
    assert limit_text(outside, f"{LIMIT} messages") in refused.stdout
    # Relay control is intact: unauthenticated, it still cannot relay.
    denied = swaks_from(hosts, stack.port, outside)
    assert denied.returncode == 24, denied.stdout
    assert "Relay access denied" in denied.stdout
    assert stack.postfix.problems() == []


def test_limited_networks_guards_against_a_snippet_that_asks_about_everyone(
    make_stack: Callable[..., Stack], tmp_path: Path
) -> None:
    # The mistake the old snippet invited: the check first, for every client.
    mistaken = tmp_path / "mistaken-snippet.cf"
    mistaken.write_text(
        "smtpd_recipient_restrictions = check_policy_service inet:127.0.0.1:10031,"
        " permit_mynetworks, reject_unauth_destination\n"
        "smtpd_data_restrictions = check_policy_service inet:127.0.0.1:10031\n",
        encoding="utf-8",
    )
    stack = make_stack(
        LIMITED_NETWORKS="127.0.0.2/32",
        postfix_options=lambda _hosts: {
            "mynetworks": ["127.0.0.2/32"],
            "extra_main": [f"relay_domains = {RELAY_DOMAIN}"],
            "snippet": mistaken,
        },
    )
    # 127.0.0.3 plays an outside server delivering inbound mail: asked about, yet DUNNO.
    for _ in range(LIMIT + 2):
        assert stack.send("127.0.0.3", [f"someone@{RELAY_DOMAIN}"]).accepted
    assert used(stack, "127.0.0.3")["3/1h messages"] == 0
    # The campus client is limited as before (the check asked directly: a recipient reject).
    for _ in range(LIMIT):
        assert stack.send("127.0.0.2").accepted
    refused = stack.send("127.0.0.2")
    assert (refused.stage, refused.code) == ("RCPT", 450), refused
    assert refused.text.endswith(limit_text("127.0.0.2", f"{LIMIT} messages")), refused


def test_a_message_that_alone_exceeds_a_recipient_limit_is_refused_permanently(
    make_stack: Callable[..., Stack],
) -> None:
    stack = make_stack(MESSAGE_LIMITS="100/1h", RECIPIENT_LIMITS="10/1h")
    mark = len(stack.postfix.maillog())
    too_big = stack.send("127.0.0.8", 11)
    assert (too_big.stage, too_big.code) == ("DATA", 550), too_big
    assert "Too many recipients in one message from 127.0.0.8: the limit is 10 recipients" in (
        too_big.text
    )
    stack.postfix.wait_for_log(r"reject: DATA from \S+\[127\.0\.0\.8\]: 550 5\.7\.1", since=mark)
    wait_for(lambda: "can never pass" in stack.product.log(), what="the log says why")
    line = next(ln for ln in stack.product.log().splitlines() if "can never pass" in ln)
    assert "client=127.0.0.8" in line
    assert "one message with 11 recipients" in line
    assert "limit=10/1h recipients" in line
    # Nothing was counted: ten recipients still fit.
    assert stack.send("127.0.0.8", 10).accepted


def test_monitor_mode_tells_postfix_warn_and_mail_flows(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(MODE="monitor")
    mark = len(stack.postfix.maillog())
    for _ in range(LIMIT + 2):
        assert stack.send("127.0.0.9").accepted
    # Postfix logged the policy server's WARN with the text the client would have got.
    line = stack.postfix.wait_for_log(r"warn: RCPT from \S+\[127\.0\.0\.9\]", since=mark)
    assert limit_text("127.0.0.9", f"{LIMIT} messages") in line
    # The product made and logged the decision, once (the next refusals are summarised).
    log = stack.product.log()
    decided = [ln for ln in log.splitlines() if "would limit (MODE=monitor)" in ln]
    assert len(decided) == 1, log
    assert "client=127.0.0.9" in decided[0]
    assert used(stack, "127.0.0.9")["3/1h messages"] == LIMIT


def test_missing_data_check_is_reported_at_the_first_client_over_its_limit(
    make_stack: Callable[..., Stack], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shipped = SNIPPET.read_text(encoding="utf-8")
    head, marker, _ = shipped.partition("smtpd_data_restrictions =")
    assert marker, "the shipped snippet has a DATA check"
    broken = tmp_path / "no-data-check.cf"
    broken.write_text(head, encoding="utf-8")
    stack = make_stack(postfix_options=lambda _hosts: {"snippet": broken})
    warning = "no DATA-stage policy requests: nothing is being counted"

    # Before any mail: `check` on the Postfix host reads main.cf through postconf.
    monkeypatch.setenv("MAIL_CONFIG", str(stack.postfix.etc))
    check = stack.product.cli("check")
    assert check.returncode == 0, check.stderr
    assert "smtpd_data_restrictions does not ask the policy server" in check.stdout

    for _ in range(LIMIT):
        assert stack.send("127.0.0.10").accepted
    assert warning not in stack.product.log()
    check = stack.product.cli("check")
    assert check.returncode == 0, check.stderr
    assert warning not in check.stdout
    # The fourth message passes (nothing is counted), and that is the evidence.
    assert stack.send("127.0.0.10").accepted
    wait_for(lambda: warning in stack.product.log(), what="the warning")
    for _ in range(2):
        assert stack.send("127.0.0.10").accepted
    lines = [ln for ln in stack.product.log().splitlines() if warning in ln]
    assert len(lines) == 1, lines  # once
    assert "client 127.0.0.10 passed RCPT for 4 messages, over its limit of 3" in lines[0]

    def check_says_so() -> bool:
        result = stack.product.cli("check")
        return result.returncode == 0 and warning in result.stdout

    wait_for(check_says_so, what="check reports the missing DATA check")
