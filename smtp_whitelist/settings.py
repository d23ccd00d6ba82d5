"""Every setting of the service, read once at start-up (and again on SIGHUP).

The settings belong to the application (``smtp_whitelist``), which hands each part only what it
reads: the parts type that as a small Protocol of their own, never this class. Values come from
the environment (prefix ``SMTP_WHITELIST_``) or an env file (docs/interface.md, "Settings"); a bad
value becomes one plain line naming the setting (:func:`load_settings`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from ratelimit.addresses import IPNetwork, parse_networks
from ratelimit.connections import parse_redis_url
from ratelimit.grant_rules import MAX_WHITELIST_TTL
from ratelimit.limits import Limit, parse_limits
from ratelimit.listen import ListenAddress, parse_listen
from smtp_whitelist.env_file import (
    ENV_PREFIX,
    env_file_problems,
    forget_inherited_copies,
    unknown_names,
)
from smtp_whitelist.values import (
    DEFAULT_LIMIT_REPLY,
    DEFAULT_TOO_BIG_REPLY,
    SYSLOG_FACILITIES,
    check_action,
    check_template,
    parse_dns_servers,
    parse_eligible,
)

# HMAC-SHA256 keys shorter than this are guessable by brute force; 32 random characters carry
# well over the 128 bits the campus portal needs.
MIN_SECRET_LENGTH = 32

_KEY_PREFIX = re.compile(r"^[A-Za-z0-9_:.\-]{1,32}$")


class SettingsError(Exception):
    """Invalid settings: one line per problem, each naming its setting."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


class Settings(BaseSettings):
    """The settings of docs/interface.md, validated; field names are the names without prefix."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        # Unknown names are found by _unknown_names, which knows which ones are ours.
        extra="ignore",
        frozen=True,
        case_sensitive=False,
        env_file_encoding="utf-8",
    )

    redis_url: str = "redis://127.0.0.1:6379/0"
    key_prefix: str = "swl:"
    policy_listen: Annotated[tuple[ListenAddress, ...], NoDecode] = parse_listen("127.0.0.1:10031")
    webhook_listen: Annotated[tuple[ListenAddress, ...], NoDecode] = parse_listen("127.0.0.1:10032")
    webhook_secret: SecretStr | None = None
    whitelist_ttl: int = Field(3600, ge=1, le=MAX_WHITELIST_TTL)
    message_limits: Annotated[tuple[Limit, ...], NoDecode] = parse_limits("100/1h")
    recipient_limits: Annotated[tuple[Limit, ...], NoDecode] = parse_limits("1000/1h")
    ipv4_prefix: int = Field(32, ge=8, le=32)
    ipv6_prefix: int = Field(64, ge=16, le=128)
    exempt_networks: Annotated[tuple[IPNetwork, ...], NoDecode] = ()
    limit_reply: str = DEFAULT_LIMIT_REPLY
    store_timeout: float = Field(0.5, gt=0, le=30)
    max_connections: int = Field(1000, ge=1, le=1_000_000)
    idle_timeout: float = Field(600, gt=0)
    request_timeout: float = Field(10, gt=0)
    on_store_error: str = "DUNNO"
    allowed_networks: Annotated[tuple[IPNetwork, ...], NoDecode] = ()
    required_ptr_suffix: str = ""
    dns_servers: Annotated[tuple[tuple[str, int], ...], NoDecode] = ()
    eligible: Annotated[frozenset[tuple[str, str]], NoDecode] = parse_eligible(
        "staff:normal,student:normal,student:resumption"
    )
    max_grants_per_user: int = Field(3, ge=1, le=1000)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["text", "json"] = "text"
    limited_networks: Annotated[tuple[IPNetwork, ...], NoDecode] = ()
    too_big_reply: str = DEFAULT_TOO_BIG_REPLY
    mode: Literal["enforce", "monitor"] = "enforce"
    syslog_facility: str = ""
    # Empty: no metrics listener (and nothing counted for it).
    metrics_listen: Annotated[tuple[ListenAddress, ...], NoDecode] = ()
    offender_threshold: int = Field(50, ge=1, le=1_000_000)
    # The self-service page (webhook/page); off while HANDOFF_SECRET is empty.
    handoff_secret: SecretStr | None = None
    # The login system's hand-off link is followed at once; two minutes is the campus' own rule.
    handoff_max_age: int = Field(120, ge=10, le=3600)
    session_idle: int = Field(600, ge=10, le=86400)
    session_max_age: int = Field(1800, ge=10, le=7 * 86400)
    trusted_proxies: Annotated[tuple[IPNetwork, ...], NoDecode] = ()
    page_url: str = ""
    # A replica count above a handful is no deployment's; WAIT for more would only time out.
    grant_min_replicas: int = Field(0, ge=0, le=16)

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str) -> str:
        parse_redis_url(value)  # raises ValueError naming what is wrong
        return value

    @field_validator("key_prefix")
    @classmethod
    def _key_prefix(cls, value: str) -> str:
        if not _KEY_PREFIX.match(value):
            raise ValueError("must be 1 to 32 characters of A-Z a-z 0-9 _ : . -")
        return value

    @field_validator("policy_listen", "webhook_listen", mode="before")
    @classmethod
    def _listen(cls, value: object) -> object:
        return parse_listen(value) if isinstance(value, str) else value

    @field_validator("metrics_listen", mode="before")
    @classmethod
    def _metrics_listen(cls, value: object) -> object:
        if not isinstance(value, str) or not value.strip():
            return () if isinstance(value, str) else value
        addresses = parse_listen(value)
        if any(a.path is not None for a in addresses):
            raise ValueError("host:port only (Prometheus scrapes over TCP)")
        return addresses

    @field_validator("message_limits", "recipient_limits", mode="before")
    @classmethod
    def _limits(cls, value: object) -> object:
        return parse_limits(value) if isinstance(value, str) else value

    @field_validator(
        "exempt_networks", "allowed_networks", "trusted_proxies", "limited_networks", mode="before"
    )
    @classmethod
    def _networks(cls, value: object) -> object:
        return parse_networks(value) if isinstance(value, str) else value

    @field_validator("eligible", mode="before")
    @classmethod
    def _eligible(cls, value: object) -> object:
        return parse_eligible(value) if isinstance(value, str) else value

    @field_validator("dns_servers", mode="before")
    @classmethod
    def _dns_servers(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        return parse_dns_servers(value)

    @field_validator("handoff_secret", mode="before")
    @classmethod
    def _empty_is_off(cls, value: object) -> object:
        # docs/interface.md: an empty HANDOFF_SECRET turns the page off rather than being too short.
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("page_url")
    @classmethod
    def _page_url(cls, value: str) -> str:
        value = value.strip()
        # Braces would be read as placeholders when {page} is filled into LIMIT_REPLY, and a
        # space or a query would not survive inside an SMTP reply or the hand-off URL.
        if value and not re.fullmatch(r"https?://[^\s{}?#]+", value):
            raise ValueError("must be an http:// or https:// URL without spaces, braces or query")
        return value.rstrip("/")

    @field_validator("webhook_secret", "handoff_secret")
    @classmethod
    def _secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < MIN_SECRET_LENGTH:
            raise ValueError(f"must be at least {MIN_SECRET_LENGTH} characters")
        return value

    @field_validator("required_ptr_suffix")
    @classmethod
    def _suffix(cls, value: str) -> str:
        value = value.strip().strip(".").lower()
        if value and not re.fullmatch(r"[a-z0-9]([a-z0-9.\-]*[a-z0-9])?", value):
            raise ValueError("must be a domain name such as nthu.edu.tw")
        return value

    @field_validator("limit_reply")
    @classmethod
    def _limit_reply(cls, value: str) -> str:
        return check_template(check_action(value, "the reply"))

    @field_validator("too_big_reply")
    @classmethod
    def _too_big_reply(cls, value: str) -> str:
        value = check_template(check_action(value, "the reply"))
        # Permanent on purpose: a 4xx would make the client retry a message that cannot pass.
        if not value.startswith("5"):
            raise ValueError("must be a permanent reply: a 5xx code and a text (550 5.7.1 ...)")
        return value

    @field_validator("syslog_facility", mode="before")
    @classmethod
    def _facility(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        value = value.strip().lower()
        if value and value not in SYSLOG_FACILITIES:
            raise ValueError(f"must be empty or one of {', '.join(sorted(SYSLOG_FACILITIES))}")
        return value

    @field_validator("on_store_error")
    @classmethod
    def _on_store_error(cls, value: str) -> str:
        return check_action(value, "the action")

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator("mode", "log_format", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    def masked(self) -> dict[str, str]:
        """The effective settings as an operator reads them, secrets masked."""
        shown: dict[str, str] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                text = "********"
            elif name == "redis_url":
                text = re.sub(r"//([^@/]*)@", "//********@", value)
            elif isinstance(value, tuple | frozenset):
                items = sorted(f"{a}:{b}" for a, b in value) if name == "eligible" else value
                if name == "dns_servers":
                    items = [f"{h}:{p}" for h, p in value]
                text = ",".join(str(item) for item in items)
            else:
                text = "" if value is None else str(value)
            shown[ENV_PREFIX + name.upper()] = text
        return shown


def load_settings(env_file: Path | None) -> Settings:
    """Read the environment and ``env_file``; raise :class:`SettingsError` on any bad value."""
    if env_file is not None:
        if not env_file.is_file():
            raise SettingsError([f"--env-file {env_file}: no such file"])
        try:
            problems = env_file_problems(env_file)
        except OSError as error:
            raise SettingsError([f"--env-file {env_file}: {error.strerror}"]) from None
        if problems:
            raise SettingsError(problems)
    known = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
    lines = unknown_names(env_file, known)
    try:
        settings = Settings(_env_file=env_file)
    except ValidationError as error:
        for problem in error.errors():
            name = ENV_PREFIX + "_".join(str(part) for part in problem["loc"][:1]).upper()
            message = problem["msg"].removeprefix("Value error, ")
            if problem["type"] == "extra_forbidden":
                message = "unknown setting"
            lines.append(f"{name}: {message}")
        raise SettingsError(lines) from None
    if lines:
        raise SettingsError(lines)
    return settings


# Importers name these as the settings' own (the env file's reading lives in env_file.py).
__all__ = [
    "DEFAULT_LIMIT_REPLY",
    "DEFAULT_TOO_BIG_REPLY",
    "ENV_PREFIX",
    "MIN_SECRET_LENGTH",
    "SYSLOG_FACILITIES",
    "Settings",
    "SettingsError",
    "forget_inherited_copies",
    "load_settings",
]
