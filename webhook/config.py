"""What the webhook and its page read of the settings: a Protocol, never the app's Settings.

The application's ``smtp_whitelist.settings.Settings`` satisfies it (mypy checks that where
``smtp_whitelist.wiring`` passes one in); the webhook depends only on these read-only fields.
"""

from __future__ import annotations

from typing import Protocol

from pydantic import SecretStr

from ratelimit.addresses import IPNetwork


class WebhookSettings(Protocol):
    """The webhook's settings (docs/interface.md, "Settings"), read-only."""

    @property
    def webhook_secret(self) -> SecretStr | None: ...
    @property
    def whitelist_ttl(self) -> int: ...
    @property
    def allowed_networks(self) -> tuple[IPNetwork, ...]: ...
    @property
    def eligible(self) -> frozenset[tuple[str, str]]: ...
    @property
    def max_grants_per_user(self) -> int: ...
    @property
    def required_ptr_suffix(self) -> str: ...
    @property
    def dns_servers(self) -> tuple[tuple[str, int], ...]: ...
    # The self-service page.
    @property
    def handoff_secret(self) -> SecretStr | None: ...
    @property
    def handoff_max_age(self) -> int: ...
    @property
    def session_idle(self) -> int: ...
    @property
    def session_max_age(self) -> int: ...
    @property
    def trusted_proxies(self) -> tuple[IPNetwork, ...]: ...
    @property
    def page_url(self) -> str: ...
