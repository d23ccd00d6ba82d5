"""``make run`` from a fresh clone: with no Redis at the configured address it starts a private
redis-server (AOF on, data under run/redis), serves, limits, and stops both cleanly on Ctrl-C;
with a Redis there, it uses that one and says so.

The clone is made with ``git clone`` of this repository (its committed state). The clone's
``make run`` uses this checkout's virtualenv (``VENV=``, its install stamps marked up to date
with ``-o``) with the clone first on ``PYTHONPATH``, so no package index is needed and the
clone's code runs.
The Redis address is a free port, never the machine's own 6379.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ratelimit.store import KeyLayout
from tests.support import (
    BlockingPolicyClient,
    RedisServer,
    free_port,
    policy_request,
    port_open,
    require_tool,
    wait_for,
)

REPO = Path(__file__).resolve().parent.parent
VENV = Path(sys.executable).parent.parent


@pytest.fixture
def clone(tmp_path: Path) -> Path:
    git = require_tool("git")
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout: nothing to clone")
    target = tmp_path / "clone"
    subprocess.run([git, "clone", "-q", str(REPO), str(target)], check=True, timeout=60)
    return target


class MakeRun:
    """``make run`` in its own session (as in a terminal), its output in a file."""

    def __init__(self, clone: Path, redis_port: int) -> None:
        self.clone = clone
        self.policy_port = free_port()
        self.redis_port = redis_port
        self.output = clone.parent / "make-run.log"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("SMTP_WHITELIST_")}
        self.env.update(
            PYTHONPATH=str(clone),
            SMTP_WHITELIST_REDIS_URL=f"redis://127.0.0.1:{redis_port}/0",
            SMTP_WHITELIST_POLICY_LISTEN=f"127.0.0.1:{self.policy_port}",
            SMTP_WHITELIST_WEBHOOK_LISTEN=f"127.0.0.1:{free_port()}",
            SMTP_WHITELIST_MESSAGE_LIMITS="2/1h",
        )
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> MakeRun:
        # `make run` needs only the running install's stamp; both are marked up to date.
        stamps = [VENV / "bin" / ".installed-run", VENV / "bin" / ".installed"]
        with self.output.open("wb") as out:
            self.process = subprocess.Popen(
                [require_tool("make"), "run", f"VENV={VENV}", *(f"-o{s}" for s in stamps)],
                cwd=self.clone,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        wait_for(self._serving, timeout=30, what=f"make run serving\n{self.text()}")
        return self

    def _serving(self) -> bool:
        assert self.process is not None
        assert self.process.poll() is None, self.text()
        return port_open("127.0.0.1", self.policy_port)

    def text(self) -> str:
        return self.output.read_text(errors="replace") if self.output.exists() else ""

    def interrupt(self) -> None:
        """Ctrl-C: SIGINT to the whole foreground process group, as a terminal sends it."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGINT)
        self.process.wait(timeout=20)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)


@pytest.fixture
def make_run_cleanup() -> Iterator[list[MakeRun]]:
    runs: list[MakeRun] = []
    yield runs
    for run in runs:
        run.kill()


def _limits(port: int) -> list[str | None]:
    client = BlockingPolicyClient("127.0.0.1", port)
    try:
        return [client.ask(policy_request("192.0.2.60", "DATA")) for _ in range(3)]
    finally:
        client.close()


def test_make_run_starts_and_stops_a_private_redis(
    clone: Path, make_run_cleanup: list[MakeRun]
) -> None:
    require_tool("redis-server")
    redis_port = free_port()  # nothing listens here
    run = MakeRun(clone, redis_port)
    make_run_cleanup.append(run)
    run.start()
    assert port_open("127.0.0.1", redis_port)
    answers = _limits(run.policy_port)
    assert answers[:2] == ["DUNNO", "DUNNO"]
    assert (answers[2] or "").startswith("450 4.7.1"), answers
    run.interrupt()
    text = run.text()
    assert f"nothing listened on 127.0.0.1:{redis_port}: started a private redis-server" in text
    assert "AOF on" in text
    assert "INFO policyd: stopped" in text, text
    assert "make run: private redis-server stopped" in text, text
    assert "Traceback" not in text, text
    assert not port_open("127.0.0.1", redis_port)
    assert not port_open("127.0.0.1", run.policy_port)
    # The counts were kept in the append-only file under the clone's run directory.
    aof = list((clone / "run" / "redis" / "appendonlydir").iterdir())
    assert any(p.name.endswith(".aof") and p.stat().st_size > 0 for p in aof), aof
    assert (clone / "dev.env").exists()


def test_make_run_uses_a_running_redis(
    clone: Path, redis_server: RedisServer, make_run_cleanup: list[MakeRun]
) -> None:
    run = MakeRun(clone, redis_server.port)
    make_run_cleanup.append(run)
    run.start()
    answers = _limits(run.policy_port)
    assert answers[:2] == ["DUNNO", "DUNNO"]
    run.interrupt()
    text = run.text()
    assert f"using the Redis already listening on 127.0.0.1:{redis_server.port}" in text, text
    assert "private redis-server" not in text
    assert not (clone / "run").exists()
    assert port_open("127.0.0.1", redis_server.port)  # theirs, left running
    assert redis_server.cli("EXISTS", KeyLayout("swl:").client_log("192.0.2.60/32")) == "1"
