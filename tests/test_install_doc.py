"""systemd/README.md's install steps, run as written, from a fresh clone, in a namespace.

The README's ``sh`` blocks are what operators paste; tests/install_doc_driver.py runs them
unchanged, in order, inside ``unshare --mount --net`` with throw-away overlays over /etc, /opt
and /var, so nothing on this machine changes and the machine's own Redis and Postfix are never
touched. Python packages come from a wheelhouse built here first (the namespace has no network).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import require_tool

REPO = Path(__file__).resolve().parent.parent
DRIVER = Path(__file__).resolve().parent / "install_doc_driver.py"
# The PATH the driver runs the README with: a root shell's on Debian, the system's python3.
SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


@pytest.mark.timeout(900)
def test_install_steps_take_a_fresh_host_to_running_units(tmp_path: Path) -> None:
    for tool in ("unshare", "git", "redis-server", "postfix", "systemctl", "setpriv", "ip"):
        require_tool(tool)
    if os.geteuid() != 0:
        pytest.skip("namespaces and overlays need root (the tests run as root, see README)")
    clone, wheelhouse, work = tmp_path / "clone", tmp_path / "wheels", tmp_path / "work"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True, timeout=60)
    # Everything `pip install .` will need, the build backend included, resolved by the same
    # python3 the README's venv is made with (its version decides some dependencies).
    system_python = shutil.which("python3", path=SYSTEM_PATH)
    assert system_python, f"no python3 on {SYSTEM_PATH}"
    subprocess.run(
        [system_python, "-m", "venv", str(tmp_path / "builder")], check=True, timeout=120
    )
    subprocess.run(
        [
            str(tmp_path / "builder" / "bin" / "pip"),
            "wheel",
            "--quiet",
            "--wheel-dir",
            str(wheelhouse),
            str(clone),
            "hatchling>=1.27",  # the build backend (pyproject.toml)
        ],
        check=True,
        timeout=600,
        capture_output=True,
    )
    work.mkdir()
    before = Path("/etc/passwd").read_text()

    run = subprocess.run(
        [
            "unshare",
            "--mount",
            "--net",
            "--",
            sys.executable,
            str(DRIVER),
            str(work),
            str(clone),
            str(wheelhouse),
        ],
        capture_output=True,
        text=True,
        timeout=800,
        check=False,
    )
    out = run.stdout + run.stderr
    assert run.returncode == 0, out

    # Every step ran, the booted-host ones through their stand-ins.
    assert "$ adduser --system --group" in out
    assert "(booted host) $ systemctl enable --now" in out
    assert "(start smtp-whitelist-policyd.service as systemd would" in out
    assert "(start smtp-whitelist-webhook.service as systemd would" in out
    # Step 6 asked the running units: the policy server answered, the webhook reached Redis.
    lines = run.stdout.splitlines()
    assert "DUNNO" in lines, out
    assert '{"redis": "ok"}' in lines, out
    assert out.count("exit 0)") == 2, out

    # What the steps left behind, in the overlays' upper layers.
    etc, opt = work / "etc-upper", work / "opt-upper"
    assert (opt / "smtp-whitelist" / "bin" / "smtp-whitelist").exists()
    settings = etc / "smtp-whitelist" / "smtp-whitelist.env"
    assert oct(settings.stat().st_mode & 0o777) == "0o640"
    # The shipped example, its placeholder secret replaced by a generated one.
    values = dict(
        line.split("=", 1)
        for line in settings.read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert len(values["SMTP_WHITELIST_WEBHOOK_SECRET"]) >= 32
    assert values["SMTP_WHITELIST_MODE"] == "monitor"
    assert (etc / "postfix" / "smtp-whitelist-clients.cidr").is_file()
    assert "smtp-whitelist:" in (etc / "passwd").read_text()
    wants = etc / "systemd" / "system" / "multi-user.target.wants"
    assert (wants / "smtp-whitelist-policyd.service").is_symlink()
    assert "check_policy_service" in (etc / "postfix" / "main.cf").read_text()
    # ... and nothing outside them.
    assert Path("/etc/passwd").read_text() == before
    assert not Path("/opt/smtp-whitelist").exists()
