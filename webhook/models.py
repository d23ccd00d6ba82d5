"""Request and response bodies of the webhook, validated with pydantic.

Unknown fields are refused and types are strict (``"user": 5`` is an error, not ``"5"``), so a
portal bug shows up as a 400 at once instead of as a grant for something nobody asked for. The
user name is limited to a safe alphabet because it becomes part of a Redis key and of log lines.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, StringConstraints, ValidationError

from ratelimit.grant_rules import USER_PATTERN  # the one rule for user names, every entry point

# The longest textual IPv6 address is 45 characters (e.g. ffff:...:255.255.255.255); a little
# room on top, and anything longer is not an address worth parsing.
MAX_IP_TEXT = 64
# Role and status are matched against ELIGIBLE; a value outside this alphabet could never be
# eligible, and refusing it keeps control characters out of the logs and the audit trail.
WORD_PATTERN = r"^[A-Za-z0-9._-]{1,32}$"

IpText = Annotated[str, StringConstraints(min_length=1, max_length=MAX_IP_TEXT)]
UserName = Annotated[str, StringConstraints(pattern=USER_PATTERN)]
Word = Annotated[str, StringConstraints(pattern=WORD_PATTERN)]


class GrantRequest(BaseModel):
    """The body of ``POST /v1/whitelist``: who asks, in which role and status, for which IP."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    ip: IpText
    user: UserName
    role: Word
    status: Word


class BadRequest(Exception):
    """The body is not a valid :class:`GrantRequest`: the answer is 400 with this detail."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


def parse_grant_request(body: bytes) -> GrantRequest:
    """Parse and validate a JSON body; raise :class:`BadRequest` naming every problem.

    The detail names fields and what is wrong with them but never echoes the input, so nothing
    a caller sent is reflected back or copied into a log line.
    """
    try:
        return GrantRequest.model_validate_json(body)
    except ValidationError as error:
        raise BadRequest(describe(error)) from None


def describe(error: ValidationError) -> str:
    """One line per problem, ``field: message``, without the offending values."""
    lines: list[str] = []
    for problem in error.errors(include_input=False, include_url=False):
        where = ".".join(str(part) for part in problem["loc"]) or "body"
        lines.append(f"{where}: {problem['msg']}")
    return "; ".join(lines)


def error_body(code: str, detail: str) -> dict[str, str]:
    """Every error answer of the webhook: ``{"error": CODE, "detail": TEXT}``."""
    return {"error": code, "detail": detail}
