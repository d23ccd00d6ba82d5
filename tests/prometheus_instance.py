"""A real Prometheus (Debian's ``prometheus``) for the tests, on a loopback port of its own.

Its own data directory (never the system's /var/lib/prometheus), its own config that scrapes
one target every second and loads the shipped alert rules, stopped by its own PID. Its first
scrape comes about 5 s after start (targets are applied on a 5 s tick), so tests poll.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from tests.support import free_port, wait_for

RULES = Path(__file__).resolve().parent.parent / "contrib" / "prometheus" / "alerts.yml"


class Prometheus:
    """``prometheus`` scraping ``127.0.0.1:target_port`` (reserved up front) every second."""

    def __init__(self, binary: str, directory: Path, target_port: int) -> None:
        self.binary = binary
        self.directory = directory
        self.target_port = target_port
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        config = self.directory / "prometheus.yml"
        config.write_text(
            json.dumps(  # JSON is YAML: no hand-made indentation to get wrong
                {
                    "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                    "rule_files": [str(RULES)],
                    "scrape_configs": [
                        {
                            "job_name": "smtp-whitelist",
                            "static_configs": [{"targets": [f"127.0.0.1:{self.target_port}"]}],
                        }
                    ],
                }
            )
        )
        log = (self.directory / "prometheus.log").open("wb")
        self.process = subprocess.Popen(
            [
                self.binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={self.directory / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        wait_for(self._ready, timeout=30, what=f"prometheus ready\n{self.log()}")

    def _ready(self) -> bool:
        assert self.process is not None
        assert self.process.poll() is None, self.log()
        with urllib.request.urlopen(self.url + "/-/ready", timeout=1) as answer:  # noqa: S310
            return bool(answer.status == 200)

    def log(self) -> str:
        path = self.directory / "prometheus.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def api(self, path: str, **params: str) -> Any:
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=5) as answer:  # noqa: S310 (loopback, our URL)
            body = json.load(answer)
        assert body["status"] == "success", body
        return body["data"]

    def value(self, query: str) -> float | None:
        """The instant value of a query that gives one series (None: no series)."""
        result = self.api("query", query=query)["result"]
        assert len(result) <= 1, result
        return float(result[0]["value"][1]) if result else None

    def wait_value(self, query: str, want: float, timeout: float = 30.0) -> float | None:
        """Poll until ``query`` gives ``want``; the last value seen (the caller asserts it)."""
        deadline = time.monotonic() + timeout
        got = self.value(query)
        while got != want and time.monotonic() < deadline:
            time.sleep(0.2)
            got = self.value(query)
        return got

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()  # only our own PID: a system Prometheus is left alone
            assert self.process.wait(timeout=30) == 0, self.log()
        self.process = None
