"""The one ``make_settings``: Settings for one test, on its own Redis and key prefix."""

from __future__ import annotations

import uuid
from typing import Any

from smtp_whitelist.settings import Settings

# A LIMIT_REPLY that shows every placeholder, so a test can read which limit refused.
TEST_LIMIT_REPLY = "450 4.7.1 {ip} is over {limit} per {window}"

# What the policy tests start from: no limits unless the test names them.
POLICY_DEFAULTS: dict[str, Any] = {
    "limit_reply": TEST_LIMIT_REPLY,
    "message_limits": "",
    "recipient_limits": "",
}


def make_settings(
    redis_url: str, *, defaults: dict[str, Any] | None = None, **values: Any
) -> Settings:
    """Settings for one test: its own Redis and a unique KEY_PREFIX, then ``defaults``
    (:data:`POLICY_DEFAULTS` unless given), then ``values``."""
    # Through a dict: mypy without pydantic's plugin takes fields with defaults as required.
    merged: dict[str, Any] = {"key_prefix": f"t{uuid.uuid4().hex[:8]}:"}
    merged.update(POLICY_DEFAULTS if defaults is None else defaults)
    merged.update(values)
    return Settings(redis_url=redis_url, **merged)


def limit_reply(ip: str, limit: str, window: str) -> str:
    return TEST_LIMIT_REPLY.format(ip=ip, limit=limit, window=window)
