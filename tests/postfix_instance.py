"""A private Postfix instance for end-to-end tests, built from the project's own snippet.

The instance follows ``shared/reference/postfix-test-instance.md``: its own config, queue and
data directories in a fresh directory under /tmp, smtpd on loopback test ports, no chroot,
every message discarded by the ``discard`` transport, the log written to a plain file.

``postfix-snippet.cf`` is appended to main.cf exactly as shipped; the changes are the address
of the policy server (``inet:127.0.0.1:10031`` becomes the test's own port) and the path of the
clients table, which is ``postfix-clients.cidr`` as shipped with its example campus networks
replaced by the instance's ``mynetworks``. So a test that passes proves the files an
administrator installs. The instance is stopped and its
directory removed by :meth:`PostfixInstance.close`, which never raises and is safe to call
twice: use the instance as a context manager or from a fixture's ``finally``.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import random
import re
import secrets
import shutil
import signal
import socketserver
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType

REPO = Path(__file__).resolve().parent.parent
SNIPPET = REPO / "postfix-snippet.cf"
CLIENTS_TABLE = REPO / "postfix-clients.cidr"

# The address and table path the snippet ships with; the only texts the tests substitute.
SHIPPED_POLICY_ADDRESS = "inet:127.0.0.1:10031"
SHIPPED_CLIENTS_PATH = "/etc/postfix/smtp-whitelist-clients.cidr"
# The class the shipped table gives the campus networks (the lines the tests replace).
LIMIT_CLASS = "smtp_whitelist_limit"

# Postfix daemons run as "postfix" and must reach the queue directory: a pytest tmp_path
# (mode 0700, owned by root) is out of their reach, so the instance lives in its own
# world-traversable directory. A short path also keeps the UNIX sockets in spool/private
# under the 108-byte sun_path limit.
_TMP_PARENT = Path("/tmp")

# How long `postfix start`/`stop` may take before the test gives up; the reference measured
# about 4 s for a whole build, start, use and stop.
START_TIMEOUT = 20.0
STOP_TIMEOUT = 15.0

_MASTER_CF_SERVICES = """\
pickup          unix  n       -       n       60      1       pickup
cleanup         unix  n       -       n       -       0       cleanup
qmgr            unix  n       -       n       300     1       qmgr
rewrite         unix  -       -       n       -       -       trivial-rewrite
bounce          unix  -       -       n       -       0       bounce
defer           unix  -       -       n       -       0       bounce
trace           unix  -       -       n       -       0       bounce
verify          unix  -       -       n       -       1       verify
flush           unix  n       -       n       1000?   0       flush
proxymap        unix  -       -       n       -       -       proxymap
proxywrite      unix  -       -       n       -       1       proxymap
showq           unix  n       -       n       -       -       showq
error           unix  -       -       n       -       -       error
retry           unix  -       -       n       -       -       error
discard         unix  -       -       n       -       -       discard
anvil           unix  -       -       n       -       1       anvil
scache          unix  -       -       n       -       1       scache
postlog         unix-dgram n  -       n       -       1       postlogd
"""


class PostfixError(RuntimeError):
    """A postfix command failed; the message carries its output and the end of the maillog."""


def snippet_for(policy_address: str, snippet: Path = SNIPPET, clients: str = "") -> str:
    """The shipped snippet with its policy server address replaced by ``policy_address``.

    ``policy_address`` is what follows ``check_policy_service``, e.g. ``inet:127.0.0.1:40000``;
    ``clients``, when given, replaces the path of the clients table.
    """
    text = snippet.read_text(encoding="utf-8")
    if SHIPPED_POLICY_ADDRESS not in text:
        raise AssertionError(f"{snippet} no longer mentions {SHIPPED_POLICY_ADDRESS}")
    text = text.replace(SHIPPED_POLICY_ADDRESS, policy_address)
    return text.replace(SHIPPED_CLIENTS_PATH, clients) if clients else text


def clients_table_for(networks: Sequence[str], table: Path = CLIENTS_TABLE) -> str:
    """The shipped clients table with its example campus networks replaced by ``networks``.

    ``networks`` are written as in mynetworks (``[::1]/128``); cidr tables want them bare.
    """
    shipped = table.read_text(encoding="utf-8").splitlines()
    examples = [i for i, line in enumerate(shipped) if line.split()[-1:] == [LIMIT_CLASS]]
    if not examples:
        raise AssertionError(f"{table} no longer maps any network to {LIMIT_CLASS}")
    ours = [f"{n.replace('[', '').replace(']', '')}  {LIMIT_CLASS}" for n in networks]
    kept = [line for i, line in enumerate(shipped) if i not in examples]
    return "\n".join([*kept[: examples[0]], *ours, *kept[examples[0] :]]) + "\n"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class PostfixInstance:
    """One private Postfix: build, start, reload, read the log, stop and remove.

    ``hosts`` are the addresses smtpd listens on (``[::1]`` in brackets); all share ``port``.
    ``mynetworks`` is who may relay, as in a campus relay where every campus address may send.
    ``extra_main`` lines go after the base configuration and before the snippet, so a test can
    add settings but cannot silently override what the snippet sets. ``extra_master`` lines are
    added to master.cf (e.g. a submission service). ``sasl_users`` (name -> password) turn on
    Cyrus SASL with a sasldb of those users for services that enable it
    (``smtpd_sasl_auth_enable`` stays ``no`` in main.cf, as on a typical port 25).
    """

    def __init__(
        self,
        policy_address: str,
        *,
        port: int,
        hosts: Sequence[str] = ("127.0.0.1", "[::1]"),
        mynetworks: Sequence[str] = ("127.0.0.0/8", "[::1]/128"),
        extra_main: Sequence[str] = (),
        snippet: Path = SNIPPET,
        extra_master: Sequence[str] = (),
        sasl_users: dict[str, str] | None = None,
    ) -> None:
        self.policy_address = policy_address
        self.port = port
        self.hosts = tuple(hosts)
        self.mynetworks = tuple(mynetworks)
        self.extra_main = tuple(extra_main)
        self.snippet = snippet
        self.extra_master = tuple(extra_master)
        self.sasl_users = dict(sasl_users or {})
        self.root = Path(tempfile.mkdtemp(prefix="swl-pf-", dir=_TMP_PARENT))
        self.root.chmod(0o755)
        self.etc = self.root / "etc"
        self.spool = self.root / "spool"
        self.data = self.root / "data"
        self.maillog_path = self.root / "maillog"
        self.clients_path = self.root / "smtp-whitelist-clients.cidr"
        self._closed = False

    # -- building -----------------------------------------------------------------------------

    def main_cf(self) -> str:
        """The whole main.cf: the reference's base, the test's extras, then the snippet."""
        root = self.root
        base = f"""\
compatibility_level = 3.7
queue_directory = {self.spool}
data_directory = {self.data}
command_directory = /usr/sbin
daemon_directory = /usr/lib/postfix/sbin
meta_directory = /etc/postfix
shlib_directory = /usr/lib/postfix
mail_owner = postfix
setgid_group = postdrop
maillog_file = {self.maillog_path}
maillog_file_prefixes = {root}, /var, /dev/stdout
syslog_name = postfix-test
myhostname = mta.test.invalid
mydomain = test.invalid
myorigin = $myhostname
inet_interfaces = {", ".join(self.hosts)}
inet_protocols = all
mynetworks = {" ".join(self.mynetworks)}
mydestination =
relay_domains =
local_recipient_maps =
alias_maps =
alias_database =
default_transport = discard:test-sink
relay_transport = discard:test-sink
local_transport = discard:test-sink
smtpd_peername_lookup = no
disable_dns_lookups = yes
smtp_dns_support_level = disabled
smtpd_error_sleep_time = 0
smtpd_soft_error_limit = 1000
smtpd_hard_error_limit = 1000
in_flow_delay = 0
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
"""
        if self.sasl_users:
            base += "smtpd_sasl_auth_enable = no\nsmtpd_sasl_local_domain = $myhostname\n"
        extras = "".join(line + "\n" for line in self.extra_main)
        return (
            base
            + extras
            + "\n# ---- postfix-snippet.cf as shipped, policy server and table substituted ----\n"
            + snippet_for(self.policy_address, self.snippet, str(self.clients_path))
        )

    def master_cf(self) -> str:
        """smtpd on every test address, the reference's internal services, no chroot."""
        listeners = "".join(
            f"{host}:{self.port}  inet  n  -  n  -  -  smtpd\n" for host in self.hosts
        )
        extras = "".join(line + "\n" for line in self.extra_master)
        return listeners + extras + _MASTER_CF_SERVICES

    def build(self) -> None:
        """Write the configuration and create the directories with the owners Postfix wants."""
        self.etc.mkdir(mode=0o755)
        self.spool.mkdir(mode=0o755)  # must be root-owned, or `postfix check` refuses it
        self.data.mkdir(mode=0o700)
        shutil.chown(self.data, "postfix", "postfix")
        (self.etc / "main.cf").write_text(self.main_cf(), encoding="utf-8")
        (self.etc / "master.cf").write_text(self.master_cf(), encoding="utf-8")
        self.clients_path.write_text(clients_table_for(self.mynetworks), encoding="utf-8")
        if self.sasl_users:
            self._build_sasl()
        # `postfix check` creates the queue subdirectories with their owners and modes.
        self._postfix("check")

    def _build_sasl(self) -> None:
        """Cyrus SASL: $config_directory/sasl/smtpd.conf (where Debian's smtpd looks) + sasldb."""
        sasl = self.etc / "sasl"
        sasl.mkdir(mode=0o755)
        database = sasl / "sasldb2"
        for user, password in self.sasl_users.items():
            subprocess.run(
                ["saslpasswd2", "-f", str(database), "-c", "-p", "-u", "mta.test.invalid", user],
                input=password, text=True, capture_output=True, timeout=10, check=True,
            )  # fmt: skip
        shutil.chown(database, "postfix", "postfix")  # smtpd runs as postfix
        (sasl / "smtpd.conf").write_text(
            "pwcheck_method: auxprop\nauxprop_plugin: sasldb\nmech_list: PLAIN LOGIN\n"
            f"sasldb_path: {database}\n",
            encoding="utf-8",
        )

    # -- running ------------------------------------------------------------------------------

    def _postfix(self, *args: str, timeout: float = START_TIMEOUT) -> str:
        # The postfix command prints its errors only to a terminal; the exit code and the
        # maillog are what a non-interactive run can trust.
        result = subprocess.run(
            ["postfix", "-c", str(self.etc), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if result.returncode != 0:
            raise PostfixError(
                f"postfix {' '.join(args)} exited {result.returncode}: "
                f"{result.stdout}{result.stderr}\n--- maillog tail ---\n{self.maillog()[-3000:]}"
            )
        return result.stdout + result.stderr

    @property
    def pid_file(self) -> Path:
        return self.spool / "pid" / "master.pid"

    def master_pid(self) -> int | None:
        """The master's PID from its pid file, if that process is alive."""
        with contextlib.suppress(OSError, ValueError):
            pid = int(self.pid_file.read_text().strip())
            if pid > 0 and _alive(pid):
                return pid
        return None

    def _remove_stale_pids(self) -> None:
        # A master killed with SIGKILL leaves its pid file behind, and `postfix start` then
        # believes it is still running. Only files whose process is gone are removed.
        for pid_file in (self.spool / "pid").glob("*.pid"):
            with contextlib.suppress(OSError, ValueError):
                pid = int(pid_file.read_text().strip() or "0")
                if pid <= 0 or not _alive(pid):
                    pid_file.unlink()

    def start(self) -> None:
        """Start the master and wait until every smtpd address accepts connections."""
        if not self.etc.exists():
            self.build()
        self._remove_stale_pids()
        self._postfix("start")
        deadline = time.monotonic() + START_TIMEOUT
        while self.master_pid() is None:
            if time.monotonic() > deadline:
                raise PostfixError(f"no master pid after start\n{self.maillog()[-3000:]}")
            time.sleep(0.05)
        self.wait_for_log("daemon started", timeout=START_TIMEOUT)

    def reload(self) -> None:
        """Re-read main.cf/master.cf; smtpd processes spawned from now on use the new files."""
        mark = len(self.maillog())
        self._postfix("reload")
        self.wait_for_log("reload", timeout=START_TIMEOUT, since=mark)

    def write_main_cf(self) -> None:
        """Write main.cf again (after changing ``extra_main`` or ``policy_address``)."""
        (self.etc / "main.cf").write_text(self.main_cf(), encoding="utf-8")

    def stop(self) -> None:
        """Stop the master (and so every child); kill it by PID if it does not go in time."""
        pid = self.master_pid()
        if pid is None:
            self._remove_stale_pids()
            return
        with contextlib.suppress(PostfixError, subprocess.TimeoutExpired):
            self._postfix("stop", timeout=STOP_TIMEOUT)
        deadline = time.monotonic() + STOP_TIMEOUT
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _alive(pid):
            # The children watch the master's status pipe and exit when it is gone.
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            time.sleep(0.2)
        self._remove_stale_pids()

    def close(self) -> None:
        """Stop and remove everything; never raises, so a failing test still cleans up."""
        if self._closed:
            return
        self._closed = True
        try:
            self.stop()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PostfixInstance:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- the log ------------------------------------------------------------------------------

    def maillog(self) -> str:
        """The whole maillog so far ("" before postlogd has written anything)."""
        try:
            return self.maillog_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def log_lines(self, pattern: str, since: int = 0) -> list[str]:
        """Lines of the maillog (from character offset ``since``) that match ``pattern``."""
        regex = re.compile(pattern)
        return [line for line in self.maillog()[since:].splitlines() if regex.search(line)]

    def wait_for_log(self, pattern: str, timeout: float = 10.0, since: int = 0) -> str:
        """Wait for a maillog line matching ``pattern`` (postlogd writes asynchronously)."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.log_lines(pattern, since)
            if found:
                return found[0]
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"no maillog line matching {pattern!r} within {timeout}s; "
                    f"tail:\n{self.maillog()[since:][-3000:]}"
                )
            time.sleep(0.05)

    def problems(self, since: int = 0) -> list[str]:
        """fatal/panic/error lines and configuration warnings: a clean run has none."""
        return self.log_lines(r"(fatal|panic|error):|warning: .*(unknown|unused|syntax)", since)


class RecordingPolicyServer:
    """A throw-away policy server: records every request and answers with ``reply(request)``.

    It speaks just enough of the SMTPD_POLICY_README protocol (``name=value`` lines, an empty
    line ends a request, ``action=...`` and an empty line answer it, the connection is reused)
    to test the snippet and the instance without the product.
    """

    def __init__(self, reply: Callable[[dict[str, str]], str] | None = None) -> None:
        self.reply = reply or (lambda _request: "DUNNO")
        self.requests: list[dict[str, str]] = []
        self._lock = threading.Lock()
        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def address(self) -> str:
        """The address as check_policy_service wants it."""
        return f"inet:127.0.0.1:{self.port}"

    def _handler(self) -> type[socketserver.StreamRequestHandler]:
        owner = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                request: dict[str, str] = {}
                for raw in self.rfile:
                    line = raw.decode("utf-8", "replace").rstrip("\r\n")
                    if line:
                        name, _, value = line.partition("=")
                        request[name] = value
                        continue
                    with owner._lock:
                        owner.requests.append(request)
                    self.wfile.write(f"action={owner.reply(request)}\n\n".encode())
                    request = {}

        return Handler

    def stages(self) -> list[str]:
        """protocol_state of every request so far, in order."""
        with self._lock:
            return [r.get("protocol_state", "") for r in self.requests]

    def __enter__(self) -> RecordingPolicyServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


# Test hosts with campus-like (non-loopback) addresses live in the benchmarking range
# (RFC 2544): never the machine's own link (192.0.2.0/24 and fd00::/64 here), never anything
# that could route off the machine.
TEST_HOST_RANGE = ipaddress.IPv4Network("198.18.0.0/15")


def _ip_json(*args: str) -> list[dict[str, object]]:
    out = subprocess.run(
        ["ip", "-j", *args], capture_output=True, text=True, timeout=10, check=True
    ).stdout
    parsed: list[dict[str, object]] = json.loads(out or "[]")
    return parsed


def _networks_in_use() -> list[ipaddress.IPv4Network]:
    """Every IPv4 destination and address the machine has, in any routing table."""
    found: list[ipaddress.IPv4Network] = []
    for route in _ip_json("-4", "route", "show", "table", "all"):
        dst = str(route.get("dst", ""))
        if dst and dst != "default":
            found.append(ipaddress.IPv4Network(dst, strict=False))
    for link in _ip_json("-4", "addr", "show"):
        for info in link.get("addr_info", []):  # type: ignore[attr-defined]
            found.append(
                ipaddress.IPv4Network(f"{info['local']}/{info['prefixlen']}", strict=False)
            )
    return found


class NamespaceHosts:
    """Client hosts in a network namespace, joined to this machine by a veth pair.

    The machine gets ``.1`` of a free /24 in 198.18.0.0/15, the namespace gets ``.10``,
    ``.11``, ... (``clients`` of them). A subnet that overlaps any route or address the machine
    already has is never used. :meth:`close` removes the link and the namespace whatever
    happened, and is safe to call twice.
    """

    def __init__(self, clients: int = 2) -> None:
        token = secrets.token_hex(3)
        self.namespace = f"swl-{token}"
        self.host_link = f"swlh{token}"  # interface names: at most 15 characters
        self.client_link = f"swlc{token}"
        self.subnet = self._free_subnet()
        hosts = list(self.subnet.hosts())
        self.host_address = str(hosts[0])
        self.client_addresses = [str(hosts[9 + i]) for i in range(clients)]
        self._created = False

    @staticmethod
    def _free_subnet() -> ipaddress.IPv4Network:
        used = _networks_in_use()
        candidates = list(TEST_HOST_RANGE.subnets(new_prefix=24))
        random.shuffle(candidates)
        for subnet in candidates:
            if not any(subnet.overlaps(net) for net in used):
                return subnet
        raise RuntimeError("no free /24 in 198.18.0.0/15 for a test host")

    def _ip(self, *args: str) -> None:
        subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10, check=True)

    def open(self) -> NamespaceHosts:
        """Create the namespace and the link, and prove the route stays on this machine."""
        self._created = True
        try:
            self._create()
        except BaseException:
            self.close()
            raise
        return self

    def _create(self) -> None:
        prefix = self.subnet.prefixlen
        self._ip("netns", "add", self.namespace)
        self._ip(
            "link", "add", self.host_link, "type", "veth",
            "peer", "name", self.client_link, "netns", self.namespace,
        )  # fmt: skip
        self._ip("addr", "add", f"{self.host_address}/{prefix}", "dev", self.host_link)
        self._ip("link", "set", self.host_link, "up")
        for address in self.client_addresses:
            self._ip(
                "-n", self.namespace, "addr", "add", f"{address}/{prefix}",
                "dev", self.client_link,
            )  # fmt: skip
        self._ip("-n", self.namespace, "link", "set", self.client_link, "up")
        self._ip("-n", self.namespace, "link", "set", "lo", "up")
        route = subprocess.run(
            ["ip", "route", "get", self.client_addresses[0]],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout  # fmt: skip
        if f"dev {self.host_link}" not in route:
            raise RuntimeError(f"test host not on {self.host_link}: {route.strip()}")

    def run(self, *command: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """Run ``command`` inside the namespace (as one of the test hosts)."""
        return subprocess.run(
            ["ip", "netns", "exec", self.namespace, *command],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def close(self) -> None:
        """Remove the link (both ends) and the namespace; never raises."""
        if not self._created:
            return
        self._created = False
        for args in (["link", "del", self.host_link], ["netns", "del", self.namespace]):
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                subprocess.run(["ip", *args], capture_output=True, timeout=10, check=False)

    def __enter__(self) -> NamespaceHosts:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()
