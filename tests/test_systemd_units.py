"""Every unit in systemd/ passes `systemd-analyze verify`, exactly as shipped.

`systemd-analyze verify` checks more than syntax: it loads the unit with its dependencies and
insists that every Exec*= program exists and is executable. On a build machine the product is
not installed at /opt/smtp-whitelist and no systemd runs as PID 1, so the check runs against a
temporary root (``--root``): the units are copied byte for byte into its /etc/systemd/system,
the host's own /usr/lib/systemd/system supplies the targets they refer to (network-online,
multi-user, ...), and two stand-in executables take the places of the programs the units start
(/opt/smtp-whitelist/bin/smtp-whitelist and /bin/kill). No unit text is changed, nothing is
written outside the temporary directory, and the check works as root and without the
smtp-whitelist user (verify does not resolve User=).

verify prints warnings (unknown keys, unparsable values) and still exits 0, so its output must
also be empty.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support import require_tool

REPO = Path(__file__).resolve().parent.parent
UNIT_DIR = REPO / "systemd"
UNITS = sorted(p.name for p in UNIT_DIR.glob("*.service"))
HOST_UNITS = Path("/usr/lib/systemd/system")

# The exposure score of `systemd-analyze security` (0 = fully confined, 10 = unconfined);
# the units score 1.x. A change that drops hardening pushes it up and fails here.
MAX_EXPOSURE = 2.0

EXPECTED = {
    "smtp-whitelist-policyd.service": "policyd",
    "smtp-whitelist-webhook.service": "webhook",
    "smtp-whitelist.service": "serve",
}


def exec_programs(unit_text: str) -> set[str]:
    """Absolute program paths of every Exec*= line (without systemd's prefixes like '-')."""
    found = set()
    for match in re.finditer(r"^Exec\w+=\s*[-@:+!]*(/\S+)", unit_text, re.MULTILINE):
        found.add(match.group(1))
    return found


@pytest.fixture(scope="module")
def fake_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A minimal root for `systemd-analyze --root`, with the shipped units in it."""
    require_tool("systemd-analyze")
    if not HOST_UNITS.is_dir():
        pytest.fail(f"{HOST_UNITS} is missing; install the systemd package")
    root = tmp_path_factory.mktemp("systemd-root")
    shutil.copytree(HOST_UNITS, root / "usr/lib/systemd/system", symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    programs: set[str] = set()
    for name in UNITS:
        shutil.copyfile(UNIT_DIR / name, root / "etc/systemd/system" / name)
        programs |= exec_programs((UNIT_DIR / name).read_text(encoding="utf-8"))
    for program in programs:
        stand_in = root / program.lstrip("/")
        stand_in.parent.mkdir(parents=True, exist_ok=True)
        stand_in.write_text("#!/bin/sh\nexit 0\n", encoding="utf-8")
        stand_in.chmod(0o755)
    return root


def test_the_expected_units_are_shipped() -> None:
    assert set(UNITS) == set(EXPECTED)


@pytest.mark.parametrize("name", UNITS)
def test_unit_is_shipped_unchanged(fake_root: Path, name: str) -> None:
    copied = fake_root / "etc/systemd/system" / name
    assert copied.read_bytes() == (UNIT_DIR / name).read_bytes()


@pytest.mark.parametrize("name", UNITS)
def test_systemd_analyze_verify(fake_root: Path, name: str) -> None:
    result = subprocess.run(
        ["systemd-analyze", "verify", f"--root={fake_root}", name],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 0, output
    assert output == "", f"systemd-analyze verify warned about {name}:\n{output}"


@pytest.mark.parametrize("name", UNITS)
def test_hardening_exposure(fake_root: Path, name: str) -> None:
    result = subprocess.run(
        [
            "systemd-analyze",
            "security",
            "--offline=yes",
            f"--root={fake_root}",
            "--no-pager",
            name,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= MAX_EXPOSURE, result.stdout


@pytest.mark.parametrize("name", UNITS)
def test_unit_contract(name: str) -> None:
    """What the issue asks of every unit, read from the unit text itself."""
    text = (UNIT_DIR / name).read_text(encoding="utf-8")
    settings = {
        line.partition("=")[0]: line.partition("=")[2]
        for line in text.splitlines()
        if line and not line.startswith(("#", "[")) and "=" in line
    }
    assert settings["Type"] == "notify"
    assert settings["User"] == "smtp-whitelist"
    assert settings["Restart"] == "on-failure"
    assert settings["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert settings["KillSignal"] == "SIGTERM"
    assert settings["ExecStart"].endswith(
        f"--env-file /etc/smtp-whitelist/smtp-whitelist.env {EXPECTED[name]}"
    )
    assert "redis-server.service" in settings["After"]
    assert re.search(r"^Wants=redis-server\.service$", text, re.MULTILINE)
    # systemd loads the env file, and the program reads the same file (so SIGHUP sees edits).
    assert settings["EnvironmentFile"] == "/etc/smtp-whitelist/smtp-whitelist.env"
    assert "--env-file /etc/smtp-whitelist/smtp-whitelist.env" in settings["ExecStart"]
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "PrivateTmp": "yes",
        "ProtectHome": "yes",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
        "CapabilityBoundingSet": "",
    }.items():
        assert settings[key] == value, key
    assert settings["RuntimeDirectory"].startswith("smtp-whitelist")
    assert re.search(r"^SystemCallFilter=@system-service$", text, re.MULTILINE)
    assert int(settings["TimeoutStopSec"]) > 5  # the contract's 5 s drain, then SIGKILL
