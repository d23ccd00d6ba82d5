"""A real redis-server on a free loopback port, which a test may stop, kill and restart."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.support.net import free_port, port_open, wait_for


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
