"""The documentation agrees with the program: README examples run as printed with the
default settings, every setting is documented, install instructions name files and extras
that exist, and `make run` installs only what running needs."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from smtp_whitelist.settings import (
    DEFAULT_LIMIT_REPLY,
    ENV_PREFIX,
    Settings,
    SettingsError,
    load_settings,
)
from tests.support import (
    PolicydProcess,
    RedisServer,
    clean_env,
    require_tool,
    run_cli,
)

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text(encoding="utf-8")
SYSTEMD_README = (REPO / "systemd" / "README.md").read_text(encoding="utf-8")


def section(text: str, heading: str) -> str:
    start = text.index(heading)
    end = text.find("\n## ", start + len(heading))
    return text[start : end if end != -1 else len(text)]


def console_session(block: str) -> list[tuple[str, list[str]]]:
    """``$ command`` lines of a code block, each with the output lines printed after it."""
    session: list[tuple[str, list[str]]] = []
    for line in block.splitlines():
        if line.startswith("$ "):
            session.append((line[2:], []))
        elif session:
            session[-1][1].append(line)
    return session


def test_checking_that_it_works_runs_as_printed(tmp_path: Path, redis_server: RedisServer) -> None:
    text = section(README, "### 5. Checking that it works")
    blocks = re.findall(r"```\n(.*?)```", text, flags=re.DOTALL)
    session = console_session(blocks[0])
    assert [command.split()[0] for command, _ in session] == ["smtp-whitelist"] * 4
    # Default settings but for where Redis and the policy server are (both private to the test).
    daemon = PolicydProcess(tmp_path, redis_url=redis_server.url).start()
    env = clean_env(redis_url=redis_server.url, policy_listen=f"127.0.0.1:{daemon.port}")
    empty = tmp_path / "empty.env"
    empty.write_text("", encoding="utf-8")
    try:
        for command, expected in session:
            argv = shlex.split(command)
            ran = run_cli("--env-file", str(empty), *argv[1:], env=env)
            assert ran.returncode == 0, ran.stderr
            assert [ln.rstrip() for ln in ran.stdout.rstrip("\n").splitlines()] == expected, command
    finally:
        daemon.stop()
    # The limit reply printed after it is what the defaults say.
    shown = blocks[1].strip()
    assert shown == DEFAULT_LIMIT_REPLY.format(ip="192.0.2.50", limit="100 messages", window="1h")
    assert Settings().message_limits[0].count == 100


def test_every_setting_is_in_the_readme_table() -> None:
    table = section(README, "## Settings")
    for name in Settings.model_fields:
        assert (
            f"| `{name.upper()}`" in table
            or f"`{name.upper()}` /" in table
            or (f"/ `{name.upper()}`" in table)
        ), name


def test_install_instructions_name_what_exists() -> None:
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    for text in (README, SYSTEMD_README):
        installs = re.findall(r"pip install '?\.\[(\w+)\]'?", text)
        assert installs, "pip install from the checkout, with an extra"
        assert set(installs) <= set(extras)
        assert "pip install smtp-whitelist" not in text  # not on PyPI
    for path in re.findall(r"install -m \d+ (?:-o \S+ -g \S+ )?(\S+) /", README + SYSTEMD_README):
        for found in REPO.glob(path):
            assert found.is_file(), path
        assert list(REPO.glob(path)), f"{path} is installed by the docs but not shipped"


def test_shipped_env_file_is_valid_except_the_placeholder_secret(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    example = REPO / "systemd" / "smtp-whitelist.env"
    for name in list(os.environ):
        if name.startswith(ENV_PREFIX):
            monkeypatch.delenv(name)
    with pytest.raises(SettingsError) as refused:
        load_settings(example)
    assert [line.split(":")[0] for line in refused.value.lines] == ["SMTP_WHITELIST_WEBHOOK_SECRET"]
    monkeypatch.setenv("SMTP_WHITELIST_WEBHOOK_SECRET", "x" * 40)
    settings = load_settings(example)
    assert settings.mode == "monitor"
    assert settings.limited_networks


def test_make_run_installs_only_what_running_needs(tmp_path: Path) -> None:
    make = require_tool("make")
    venv = tmp_path / "venv"

    def dry_run(target: str) -> str:
        return subprocess.run(
            [make, "-n", "-B", f"VENV={venv}", f"{venv}/bin/{target}"],
            cwd=REPO, capture_output=True, text=True, timeout=30, check=True,
        ).stdout  # fmt: skip

    run = dry_run(".installed-run")
    assert "-e '.[fast]'" in run
    installs = [line for line in run.splitlines() if " -e " in line]
    assert len(installs) == 1
    assert "test" not in installs[0].replace(str(venv), "")
    assert "-e '.[test,fast]'" in dry_run(".installed")


def test_every_line_of_the_snippet_and_table_is_explained() -> None:
    deployment = section(README, "## Deploying with Postfix")
    snippet = (REPO / "postfix-snippet.cf").read_text(encoding="utf-8")
    parameters = re.findall(r"^(\w+) =", snippet, flags=re.MULTILINE)
    assert len(parameters) == 7
    for name in parameters:
        assert f"`{name} = " in deployment, name
    settings = re.findall(r"(\w+)=\w+", snippet.split("check_policy_service {", 1)[1])
    assert settings == ["timeout", "try_limit", "retry_delay", "default_action"]
    for name in settings:
        assert f"| `{name}=" in deployment, name
    for entry in ("permit_mynetworks", "permit_sasl_authenticated", "reject_unauth_destination"):
        assert entry in deployment
    table = (REPO / "postfix-clients.cidr").read_text(encoding="utf-8")
    for value in {line.split()[-1] for line in table.splitlines() if not line.startswith("#")}:
        assert f"{value}`" in deployment, value


def test_the_wheel_carries_the_data_files(tmp_path: Path) -> None:
    """The data files (Lua scripts, py.typed, openapi.yaml, the page's templates, styles and
    translations) are in the built wheel, which is what pip installs."""
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(REPO)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    output = (built.stdout + built.stderr).splitlines()
    # pip's own notes about this machine's package index are not the build's warnings.
    assert not [ln for ln in output if "warn" in ln.lower() and "Location 'file" not in ln]
    (wheel,) = tmp_path.glob("smtp_whitelist-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for wanted in (
        "ratelimit/lua/decide.lua",
        "ratelimit/py.typed",
        "policyd/py.typed",
        "webhook/openapi.yaml",
        "webhook/page/templates/apply.html",
        "webhook/page/static/style.css",
        "webhook/page/locale/zh_TW/LC_MESSAGES/messages.mo",
        "smtp_whitelist/cli.py",
    ):
        assert wanted in names, wanted
