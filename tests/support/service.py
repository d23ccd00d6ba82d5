"""The one runner for the product as a process: ``smtp-whitelist serve|policyd|webhook``.

Readiness is what systemd sees: the ``READY=1`` datagram on ``NOTIFY_SOCKET``, which the
service sends only once every listener is bound. A caller that puts its own ``NOTIFY_SOCKET``
in :attr:`Service.env` reads readiness itself.
"""

from __future__ import annotations

import contextlib
import secrets
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Self

from ratelimit.listen import ListenAddress
from tests.support.cli import SMTP_WHITELIST, clean_env, run_cli
from tests.support.net import free_port
from tests.support.redis_server import RedisServer

# How long a start may take before the test calls it failed (Redis down at start included).
READY_TIMEOUT = 30.0
# How long SIGTERM may take: the service's own shutdown budget is well under this.
STOP_TIMEOUT = 15.0


class Service:
    """``smtp-whitelist COMMAND`` in a subprocess: settings by environment, log to a file.

    ``settings`` are names without the ``SMTP_WHITELIST_`` prefix, in any case; a test may
    change :attr:`settings` (what the next start or :meth:`cli` uses) and add other variables
    to :attr:`env`; the rest of the environment is the test's own at that moment.
    ``env_file`` is passed as ``--env-file`` (an empty one keeps a machine's /etc file out).
    """

    def __init__(
        self,
        command: str,
        settings: dict[str, str],
        directory: Path,
        *,
        env_file: Path | None = None,
    ) -> None:
        self.command = command
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        # Unique: several services may share one directory.
        self.log_path = directory / f"{command}-{secrets.token_hex(4)}.log"
        self.settings = {name.upper(): value for name, value in settings.items()}
        # Variables a test adds for this service only (the rest is read at each start or cli).
        self.env: dict[str, str] = {}
        self.options = [] if env_file is None else ["--env-file", str(env_file)]
        self.process: subprocess.Popen[bytes] | None = None
        self.notify: socket.socket | None = None
        self.notified: list[bytes] = []

    def start(self) -> Self:
        """Start, and return once the service said READY=1 (fails the test if it exits first)."""
        env = self.environment()
        own_notify = "NOTIFY_SOCKET" not in env
        if own_notify:
            # Like systemd, keep the socket open for the service's whole life, so STOPPING=1
            # has somewhere to go.
            self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            path = self.directory / f"notify-{secrets.token_hex(4)}"
            self.notify.bind(str(path))
            env["NOTIFY_SOCKET"] = str(path)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [SMTP_WHITELIST, *self.options, self.command],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        if own_notify:
            self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        assert self.notify is not None
        assert self.process is not None
        # Short receives, so a service that exits at start fails the test at once.
        self.notify.settimeout(0.1)
        for _ in range(int(READY_TIMEOUT / 0.1)):
            try:
                message = self.notify.recv(4096)
            except TimeoutError:
                if self.process.poll() is not None:
                    raise AssertionError(
                        f"{self.command} exited {self.process.returncode}: {self.log()}"
                    ) from None
                continue
            assert message == b"READY=1", message
            return
        raise AssertionError(f"no READY=1 within {READY_TIMEOUT} s; log:\n{self.log()}")

    def environment(self) -> dict[str, str]:
        """The process environment: the test's own now (without SMTP_WHITELIST_* names), then
        :attr:`env`, then :attr:`settings` as SMTP_WHITELIST_*."""
        return clean_env() | self.env | {f"SMTP_WHITELIST_{k}": v for k, v in self.settings.items()}

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    log_text = log

    def cli(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """Run another ``smtp-whitelist`` command with the same settings."""
        return run_cli(*self.options, *args, env=self.environment(), timeout=timeout)

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def terminate(self) -> None:
        self.signal(signal.SIGTERM)

    def wait(self, timeout: float) -> int:
        assert self.process is not None
        return self.process.wait(timeout=timeout)

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM, then the exit status (killed after ``timeout``; None if never started)."""
        if self.process is None:
            return None
        process, self.process = self.process, None
        try:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            return process.returncode
        finally:
            self._drain_notify()

    def _drain_notify(self) -> None:
        """Keep what the service told systemd after READY=1 (STOPPING=1 on SIGTERM)."""
        if self.notify is None:
            return
        self.notify.setblocking(False)
        with contextlib.suppress(BlockingIOError, OSError):
            while True:
                self.notified.append(self.notify.recv(4096))
        self.notify.close()
        self.notify = None

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


class PolicydProcess(Service):
    """``smtp-whitelist policyd`` on a free loopback port (settings as keyword arguments)."""

    def __init__(self, directory: Path, **settings: str) -> None:
        self.port = free_port()
        settings.setdefault("policy_listen", f"127.0.0.1:{self.port}")
        self.address = ListenAddress("127.0.0.1", self.port, None)
        super().__init__("policyd", settings, directory)


@contextlib.contextmanager
def webhook_process(
    directory: Path, redis_binary: str, settings: dict[str, str]
) -> Iterator[tuple[Service, int]]:
    """``smtp-whitelist webhook`` as a real process with its own redis-server, and its port.

    On the way out it checks what a long run against it must leave behind: a clean exit (0) and
    no traceback anywhere in its log, even where every answer looked fine.
    """
    redis_server = RedisServer(redis_binary, directory / "redis")
    redis_server.start()
    port = free_port()
    daemon = Service(
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
        daemon.start()
        yield daemon, port
    finally:
        status = daemon.stop()
        redis_server.stop()
        log = daemon.log()
        assert status == 0, log
        assert "Traceback" not in log, log
        assert "unexpected error" not in log, log  # the webhook's 500 path, logged
