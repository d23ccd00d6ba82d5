"""The Lua scripts shipped in ratelimit/lua, run by SHA and loaded where missing."""

from __future__ import annotations

import hashlib
from importlib import resources
from typing import Any

from redis.exceptions import NoScriptError

from ratelimit.node_calls import Command, roundtrip


class Script:
    """A Lua script shipped with the package, run by its SHA (loaded on first NOSCRIPT)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.source = resources.files("ratelimit").joinpath(f"lua/{name}.lua").read_text()
        self.sha = hashlib.sha1(self.source.encode(), usedforsecurity=False).hexdigest()


async def script_then(
    connection: Any, script: Script, keys: list[str], args: list[Any], then: Command | None
) -> tuple[Any, Any]:
    """Run ``script`` on ``connection`` (loading it there on NOSCRIPT), then ``then`` on the same
    connection; both replies (an error reply as its exception; ``then``'s None when not run)."""
    evalsha = ("EVALSHA", script.sha, len(keys), *keys, *args)
    # ``then`` only once the script has run: a WAIT after a NOSCRIPT would wait in vain.
    [result] = await roundtrip(connection, [evalsha])
    if isinstance(result, NoScriptError):
        result = (await roundtrip(connection, [("SCRIPT", "LOAD", script.source), evalsha]))[1]
    if isinstance(result, Exception) or then is None:
        return result, None
    [answer] = await roundtrip(connection, [then])
    return result, answer
