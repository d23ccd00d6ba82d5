"""The shape of the code, enforced: which package may import which, and how long a file may be.

The rules are README.md's "Architecture": the application (``smtp_whitelist``) composes the three
parts; ``policyd`` and ``webhook`` use only ``ratelimit``; ``ratelimit`` is the Redis layer and
imports none of them, nor the settings machinery (pydantic-settings, dotenv) or HTTP (aiohttp).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("smtp_whitelist", "policyd", "webhook", "ratelimit")

# Which of our packages each package may import (itself always).
ALLOWED = {
    "smtp_whitelist": {"policyd", "webhook", "ratelimit"},
    "policyd": {"ratelimit"},
    "webhook": {"ratelimit"},
    "ratelimit": set(),
}
# Outside libraries a package must not import: the Redis layer takes small typed views of the
# settings and knows nothing of how they are read, nor of HTTP.
FORBIDDEN_LIBRARIES = {"ratelimit": {"pydantic_settings", "dotenv", "aiohttp"}}

# A file longer than this holds more than one role, or one role a reader cannot take in at once;
# split it by role (README.md, "Architecture"). 300 lines is about five screens.
MAX_LINES = 300


def _files(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def _imported(path: Path) -> set[str]:
    """The top-level names of every module ``path`` imports, wherever the import statement is."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("package", PACKAGES)
def test_a_package_imports_only_what_the_architecture_allows(package: str) -> None:
    wrong = []
    for path in _files(package):
        imported = _imported(path)
        ours = (imported & set(PACKAGES)) - {package} - ALLOWED[package]
        libraries = imported & FORBIDDEN_LIBRARIES.get(package, set())
        wrong += [f"{path.relative_to(ROOT)} imports {name}" for name in sorted(ours | libraries)]
    assert wrong == []


def test_the_import_scan_sees_imports_inside_functions(tmp_path: Path) -> None:
    # The rule would be hollow if a late import (inside a function, as the CLI's used to be)
    # went unseen.
    source = tmp_path / "late.py"
    source.write_text("def f():\n    from webhook.app import build_app\n    import dotenv.main\n")
    assert _imported(source) == {"webhook", "dotenv"}


@pytest.mark.parametrize("package", PACKAGES)
def test_no_file_is_longer_than_the_ceiling(package: str) -> None:
    long = {
        str(path.relative_to(ROOT)): lines
        for path in _files(package)
        if (lines := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert long == {}


# The Store's own file: the only one that may touch its Redis client (ratelimit/store.py's
# docstring). Everyone else goes through its typed methods, which bound each call by
# STORE_TIMEOUT, feed the circuit breaker and keep to the cluster's rules.
STORE_FILES = {ROOT / "ratelimit" / "store.py"}


def _raw_client_uses(path: Path) -> list[int]:
    """Lines where ``path`` reads ``.client`` or ``._client`` of something named ``store``
    (``store.client``, ``self.store._client``, ``running.store.client``...)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Attribute) and node.attr in {"client", "_client"}:
            owner = node.value
            name = owner.id if isinstance(owner, ast.Name) else getattr(owner, "attr", "")
            if name == "store":
                found.append(node.lineno)
    return sorted(found)


@pytest.mark.parametrize("package", [*PACKAGES, "benchmarks"])
def test_no_module_reaches_past_the_store_to_its_redis_client(package: str) -> None:
    wrong = [
        f"{path.relative_to(ROOT)}:{line}"
        for path in _files(package)
        if path not in STORE_FILES
        for line in _raw_client_uses(path)
    ]
    assert wrong == []


def test_the_client_scan_sees_every_spelling(tmp_path: Path) -> None:
    # Hollow if a spelling went unseen: through self, through a local, and the private name.
    source = tmp_path / "reach.py"
    source.write_text(
        "async def f(self, store):\n"
        "    await self.store.client.get('k')\n"
        "    store._client.ping()\n"
        "    self.batcher.client\n"  # not a Store: the batcher's own client
    )
    assert _raw_client_uses(source) == [2, 3]


def test_the_policy_server_alone_loads_no_http_stack() -> None:
    """`smtp-whitelist policyd` on a Postfix host needs no aiohttp, page or templates: importing
    them cost ~25 MB of RSS per policy server (73 against 49 MB measured with `make bench`)."""
    probe = (
        "import sys\n"
        "import smtp_whitelist.cli, smtp_whitelist.service, smtp_whitelist.components\n"
        "import smtp_whitelist.wiring\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in"
        " ('aiohttp', 'webhook', 'jinja2', 'captcha', 'PIL')))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "[]", result.stdout
