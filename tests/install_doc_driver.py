"""Run systemd/README.md's install steps inside a private mount and network namespace.

Started by tests/test_install_doc.py as ``unshare --mount --net -- python3 THIS WORK CLONE
WHEELHOUSE``. Inside, /etc, /opt and /var are overlays whose changes land under WORK and vanish
with the namespace; the loopback is the namespace's own, where a redis-server on 6379 stands in
for Debian's redis-server.service. Then every ``sh`` block of the README runs unchanged with
``bash -euo pipefail`` in the clone. A ``sh booted-host`` block needs a running systemd or
Postfix, which a namespace does not have; for those this driver does the nearest real thing:

- ``apt-get install ... PACKAGES``: each package must be installed (``dpkg -s``);
- ``systemctl daemon-reload``: nothing to do without a manager;
- ``systemctl enable --now UNITS``: ``systemctl enable UNITS`` for real (offline), then each
  unit's ``ExecStart=`` as its ``User=``/``Group=`` with its ``EnvironmentFile=`` loaded, as
  systemd would start it, until it logs "ready";
- ``postfix reload``: ``postfix check`` (no Postfix master runs here to reload).

Standard library only: it runs before anything is installed. Exit status 0 when every step
passed; the output says what ran.
"""

from __future__ import annotations

import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

BLOCK = re.compile(r"^```(sh[^\n]*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
STEP_TIMEOUT = 300  # pip installing from the wheelhouse is the slowest step


def sh(command: str, cwd: Path, env: dict[str, str]) -> None:
    print(f"$ {command.strip()}", flush=True)
    subprocess.run(
        ["bash", "-euo", "pipefail", "-c", command],
        cwd=cwd,
        env=env,
        check=True,
        timeout=STEP_TIMEOUT,
    )


def overlay(work: Path, path: str) -> None:
    name = path.strip("/")
    upper, scratch = work / f"{name}-upper", work / f"{name}-work"
    upper.mkdir(parents=True)
    scratch.mkdir(parents=True)
    options = f"lowerdir={path},upperdir={upper},workdir={scratch}"
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", options, path], check=True)


def unit_settings(unit: Path) -> dict[str, str]:
    found: dict[str, str] = {}
    for line in unit.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() in ("ExecStart", "User", "Group", "EnvironmentFile"):
            found[key.strip()] = value.strip()
    return found


def env_file(path: str) -> dict[str, str]:
    values: dict[str, str] = {}
    for line in Path(path.lstrip("-")).read_text().splitlines():
        name, sep, value = line.strip().partition("=")
        if sep and not name.startswith("#"):
            values[name.strip()] = value.strip().strip("'\"")
    return values


def start_unit(name: str, work: Path, started: list[subprocess.Popen[bytes]]) -> None:
    unit = unit_settings(Path("/etc/systemd/system") / name)
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
    env.update(env_file(unit["EnvironmentFile"]))
    argv = [
        "setpriv",
        f"--reuid={unit['User']}",
        f"--regid={unit['Group']}",
        "--init-groups",
        "--",
        *shlex.split(unit["ExecStart"]),
    ]
    log = work / f"{name}.log"
    print(f"(start {name} as systemd would: {' '.join(argv)})", flush=True)
    with log.open("wb") as out:
        process = subprocess.Popen(argv, env=env, stdout=out, stderr=out, stdin=subprocess.DEVNULL)
    started.append(process)
    deadline = time.monotonic() + 30
    while "ready (pid" not in log.read_text(errors="replace"):
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"{name} did not start:\n{log.read_text(errors='replace')}")
        time.sleep(0.1)


def booted_host(command: str, cwd: Path, env: dict[str, str], work: Path, started: list) -> None:  # type: ignore[type-arg]
    for line in command.splitlines():
        words = shlex.split(line, comments=True)
        if not words:
            continue
        print(f"(booted host) $ {line.strip()}", flush=True)
        if words[:2] == ["apt-get", "install"]:
            for package in (w for w in words[2:] if not w.startswith("-")):
                subprocess.run(["dpkg", "-s", package], check=True, stdout=subprocess.DEVNULL)
        elif words == ["systemctl", "daemon-reload"]:
            pass
        elif words[:3] == ["systemctl", "enable", "--now"]:
            sh("systemctl enable " + " ".join(words[3:]), cwd, env)
            for unit in words[3:]:
                start_unit(unit, work, started)
        elif words == ["postfix", "reload"]:
            sh("postfix check", cwd, env)
        else:
            raise SystemExit(f"no stand-in for a booted-host command: {line}")


def main() -> int:
    work, clone, wheelhouse = (Path(a) for a in sys.argv[1:4])
    for path in ("/etc", "/opt", "/var"):
        overlay(work, path)
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    # A fresh Debian host where Postfix was configured at install ("Internet Site") has this.
    main_cf = Path("/etc/postfix/main.cf")
    if not main_cf.exists():
        main_cf.write_text(Path("/usr/share/postfix/main.cf.debian").read_text())
    (work / "redis").mkdir()
    redis = subprocess.Popen(
        ["redis-server", "--bind", "127.0.0.1", "--port", "6379", "--dir", str(work / "redis")],
        stdout=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
    )
    # pip finds everything in the wheelhouse (built outside: this namespace has no network).
    env = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "LANG": "C.UTF-8",
        "HOME": str(work),
        "PIP_NO_INDEX": "1",
        "PIP_FIND_LINKS": str(wheelhouse),
    }
    started: list[subprocess.Popen[bytes]] = []
    try:
        text = (clone / "systemd" / "README.md").read_text()
        blocks = BLOCK.findall(text)
        print(f"{len(blocks)} blocks", flush=True)
        for info, command in blocks:
            if info.split()[1:] == ["booted-host"]:
                booted_host(command, clone, env, work, started)
            elif info.strip() == "sh":
                sh(command, clone, env)
            else:
                raise SystemExit(f"unknown block kind: {info}")
    finally:
        statuses = []
        for process in started:
            process.send_signal(signal.SIGTERM)
        for process in started:
            statuses.append(process.wait(timeout=10))
            argv = process.args if isinstance(process.args, list) else [process.args]
            print(f"(stopped {shlex.join(map(str, argv))}: exit {statuses[-1]})", flush=True)
        redis.terminate()
        redis.wait(timeout=10)
    return 1 if any(statuses) else 0


if __name__ == "__main__":
    sys.exit(main())
