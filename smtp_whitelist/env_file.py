"""The env file read strictly: every line is a setting, a comment or blank, in UTF-8.

python-dotenv, which pydantic-settings uses to read the file, skips a line it cannot parse with
a warning and goes on; the setting on that line then silently falls back to its default (on
SIGHUP the limits loosen, ``EXEMPT_NETWORKS`` vanishes) and ``check`` still says all is well.
Here such a line, and a file that is not UTF-8, is a bad setting naming the file and the line.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

from dotenv import dotenv_values
from dotenv.parser import parse_stream

ENV_PREFIX = "SMTP_WHITELIST_"
# Names with our prefix that are not settings but are ours all the same.
_NOT_SETTINGS = {ENV_PREFIX + "ENV_FILE"}


def env_file_problems(path: Path) -> list[str]:
    """One line per problem of ``path``: ``FILE, line N: what``. Empty when the file is sound.

    Raises OSError when the file cannot be read at all.
    """
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        return [f"{path}, line {line}: not UTF-8 (byte 0x{data[error.start]:02x})"]
    problems: list[str] = []
    for binding in parse_stream(io.StringIO(text)):
        original = binding.original.string
        # A binding's text starts with the blank lines before it; name the line it is on.
        line = binding.original.line + original[: len(original) - len(original.lstrip())].count(
            "\n"
        )
        if binding.error:
            problems.append(
                f"{path}, line {line}: cannot be parsed as NAME=value (an unclosed quote?)"
            )
        elif binding.key is not None and binding.value is None:
            # Not echoed: a line without "=" may be the wrapped tail of a secret.
            problems.append(f"{path}, line {line}: no '=' (every setting is NAME=value)")
    return problems


def forget_inherited_copies(env_file: Path) -> list[str]:
    """Drop environment variables that merely repeat the env file; return their names.

    systemd's ``EnvironmentFile=`` copies the file into the environment once, at start, and the
    environment takes precedence over the file. Without this, a SIGHUP after editing the file
    would re-read it and still see the old values. A variable set to a *different* value (an
    operator's deliberate override, e.g. ``Environment=``) is kept and still wins.
    """
    dropped = []
    for name, value in dotenv_values(env_file).items():
        if value is not None and os.environ.get(name) == value:
            del os.environ[name]
            dropped.append(name)
    return dropped


def unknown_names(env_file: Path | None, known: set[str]) -> list[str]:
    """A misspelt setting would otherwise be ignored in silence and the default used."""
    known = known | _NOT_SETTINGS
    names = {name.upper() for name in os.environ if name.upper().startswith(ENV_PREFIX)}
    if env_file is not None:
        names |= {
            name.upper() for name in dotenv_values(env_file) if name.upper().startswith(ENV_PREFIX)
        }
    return [f"{name}: unknown setting" for name in sorted(names - known)]
