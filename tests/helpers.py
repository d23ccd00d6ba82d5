"""Reusable test helpers: real servers started on free ports, and small waits."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now on ``host``."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    """Poll until ``predicate()`` is true; fail the test with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if predicate():
                return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


class RedisServer:
    """A real redis-server in its own directory, on a free port, that a test may stop and restart.

    ``extra`` arguments (e.g. ``["--appendonly", "yes"]``) are kept across restarts so a restart
    test reads back what the server persisted.
    """

    def __init__(self, binary: str, directory: Path, extra: list[str] | None = None) -> None:
        self.binary = binary
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.host = "127.0.0.1"
        self.port = free_port()
        self.extra = extra or ["--save", "", "--appendonly", "no"]
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                self.host,
                "--dir",
                str(self.directory),
                "--logfile",
                str(self.directory / "redis.log"),
                # Fault-injection tests make Redis slow on purpose (DEBUG SLEEP).
                "--enable-debug-command",
                "local",
                *self.extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(lambda: port_open(self.host, self.port), what=f"redis-server on {self.port}")

    def stop(self) -> None:
        """Stop cleanly (SIGTERM: Redis writes its AOF/RDB first)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        self.process = None

    def kill(self) -> None:
        """Kill at once, as a crash would."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None

    def cli(self, *args: str) -> str:
        """Run redis-cli against this server (for fault injection such as DEBUG SLEEP)."""
        out = subprocess.run(
            ["redis-cli", "-h", self.host, "-p", str(self.port), *args],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        return out.stdout.strip()


# Every attribute Postfix 3.7 sends (SMTPD_POLICY_README, "Protocol description"), in its order;
# compatibility_level and mail_version only came with 3.8.
POSTFIX_37_REQUEST: dict[str, str] = {
    "request": "smtpd_access_policy",
    "protocol_state": "RCPT",
    "protocol_name": "ESMTP",
    "helo_name": "pc42.cs.example.edu.tw",
    "queue_id": "8045F2AB23",
    "sender": "alice@cs.example.edu.tw",
    "recipient": "bob@example.org",
    "recipient_count": "0",
    "client_address": "198.51.100.23",
    "client_name": "pc42.cs.example.edu.tw",
    "reverse_client_name": "pc42.cs.example.edu.tw",
    "instance": "123.456.7",
    "sasl_method": "plain",
    "sasl_username": "alice",
    "sasl_sender": "",
    "size": "12345",
    "ccert_subject": "solaris9.porcupine.org",
    "ccert_issuer": "Wietse+20Venema",
    "ccert_fingerprint": "C2:9D:F4:87:71:73:73:D9:18:E7:C2:F3:C1:DA:6E:04",
    "encryption_protocol": "TLSv1.3",
    "encryption_cipher": "TLS_AES_256_GCM_SHA384",
    "encryption_keysize": "256",
    "etrn_domain": "",
    "stress": "",
    "ccert_pubkey_fingerprint": "68:B3:29:DA:98:93:E3:40:99:C7:D8:AD:5C:B9:C9:40",
    "client_port": "49152",
    "policy_context": "submission",
    "server_address": "192.0.2.25",
    "server_port": "587",
}


def policy_request(client: str, state: str = "DATA", recipients: int = 1, **extra: str) -> bytes:
    """The Postfix 3.7 request, encoded, for ``client`` at ``state`` with ``recipients``."""
    attributes = dict(POSTFIX_37_REQUEST)
    attributes.update(
        protocol_state=state, client_address=client, recipient_count=str(recipients), **extra
    )
    return "".join(f"{k}={v}\n" for k, v in attributes.items()).encode() + b"\n"


class PolicyClient:
    """A blocking policy-protocol client on one persistent connection, as one smtpd holds."""

    def __init__(self, host: str, port: int, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)

    def ask(self, request: bytes) -> str | None:
        """Send one request; the action, or None when the server closed without a reply."""
        self.sock.sendall(request)
        reply = b""
        while not reply.endswith(b"\n\n"):
            chunk = self.sock.recv(65536)
            if not chunk:
                return None
            reply += chunk
        first = reply.split(b"\n", 1)[0].decode()
        assert first.startswith("action="), reply
        return first[len("action=") :]

    def close(self) -> None:
        self.sock.close()


class Daemon:
    """``smtp-whitelist COMMAND`` as a real process, with its settings in the environment.

    Its stderr (the log) goes to a file the test can read; ``stop()`` sends SIGTERM and returns
    the exit status.
    """

    def __init__(self, command: str, settings: dict[str, str], directory: Path) -> None:
        import os
        import sys

        self.command = command
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.log_path = directory / f"{command}.log"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("SMTP_WHITELIST_")}
        self.env.update({f"SMTP_WHITELIST_{k}": v for k, v in settings.items()})
        self.argv = [sys.executable, "-m", "smtp_whitelist", command]
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, wait_port: tuple[str, int] | None = None) -> Daemon:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.argv, env=self.env, stdout=log, stderr=log, stdin=subprocess.DEVNULL
            )
        if wait_port is not None:
            host, port = wait_port
            wait_for(
                lambda: (
                    self.process is not None
                    and self.process.poll() is None
                    and port_open(host, port)
                ),
                what=f"{self.command} listening on {host}:{port}\n{self.log()}",
            )
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, then the exit status (killed after ``timeout``)."""
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        status = self.process.returncode
        self.process = None
        return status

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def rss_kib(self) -> int:
        """Resident memory of the process, in KiB (VmRSS)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")


@contextlib.contextmanager
def webhook_process(
    directory: Path, redis_binary: str, settings: dict[str, str]
) -> Iterator[tuple[Daemon, int]]:
    """``smtp-whitelist webhook`` as a real process with its own redis-server, and its port.

    On the way out it checks what a long run against it must leave behind: a clean exit (0) and
    no traceback anywhere in its log, even where every answer looked fine.
    """
    redis_server = RedisServer(redis_binary, directory / "redis")
    redis_server.start()
    port = free_port()
    daemon = Daemon(
        "webhook",
        {
            "REDIS_URL": redis_server.url,
            "WEBHOOK_LISTEN": f"127.0.0.1:{port}",
            "LOG_LEVEL": "WARNING",
            **settings,
        },
        directory / "webhook",
    )
    try:
        daemon.start(wait_port=("127.0.0.1", port))
        yield daemon, port
    finally:
        status = daemon.stop()
        redis_server.stop()
        log = daemon.log()
        assert status == 0, log
        assert "Traceback" not in log, log
        assert "unexpected error" not in log, log  # the webhook's 500 path, logged
