"""Every error answer of the webhook: one JSON shape, and one table from domain error to answer.

Handlers raise :class:`ApiError` (status, code, detail) or let a domain error through; the
:func:`errors` middleware turns each into ``{"error": CODE, "detail": TEXT}`` and logs it once.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from ratelimit.store import StoreError, StoreUnavailable
from webhook import rules
from webhook.models import error_body

log = logging.getLogger("webhook.app")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# How long the portal should wait before retrying a 503 (Retry-After, RFC 9110 §10.2.3).
RETRY_AFTER = "5"

# At most this much of text that is not an address is copied into a log line (escaped).
MAX_SHOWN_TEXT = 64

# Codes for the answers aiohttp itself produces (routing, body size), so they share our shape.
_HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    413: "too_large",
    415: "unsupported_media_type",
}


class ApiError(Exception):
    """An answer other than success: status, machine-readable code, and a human detail.

    Every 4xx ApiError is logged once, by the error middleware, at ``level`` (INFO; auth
    failures and replays WARNING), so a helpdesk can answer "why could I not register?".
    """

    def __init__(self, status: int, code: str, detail: str, level: int = logging.INFO) -> None:
        super().__init__(f"{status} {code}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail
        self.level = level


# Request keys under which the handlers leave who and what a refusal was about, for its log line.
REFUSAL_USER = web.RequestKey("refusal_user", str)
REFUSAL_ADDRESS = web.RequestKey("refusal_address", str)


def shown_address(text: str) -> str:
    """An address for a log line: normalised when it is one, else its printable escape."""
    address = rules.parse_address(text)
    return str(address) if address is not None else ascii(text[:MAX_SHOWN_TEXT])


def _log_refusal(request: web.Request, error: ApiError) -> None:
    address = request.get(REFUSAL_ADDRESS) or (
        shown_address(request.match_info["ip"]) if "ip" in request.match_info else "-"
    )
    log.log(
        error.level,
        "webhook refused %s %s from %s: %d %s user=%s ip=%s (%s)",
        request.method,
        request.path,
        request.remote,
        error.status,
        error.code,
        request.get(REFUSAL_USER, "-"),
        address,
        error.detail,
    )


def error_response(
    status: int, code: str, detail: str, headers: dict[str, str] | None = None
) -> web.Response:
    """The JSON error answer; 503s tell the portal when to retry."""
    extra = dict(headers or {})
    if status == 503:
        extra.setdefault("Retry-After", RETRY_AFTER)
    return web.json_response(error_body(code, detail), status=status, headers=extra)


# Domain errors that reach the middleware uncaught, in one table: what the portal is told
# (status, code, detail) and the log line's wording. A StoreError is Redis reachable but
# refusing (out of memory, read-only); either way nothing was granted. Checked in order, so the
# subclass (StoreError) comes before its base (StoreUnavailable).
DOMAIN_ERRORS: tuple[tuple[type[Exception], int, str, str, str], ...] = (
    (
        StoreError,
        503,
        "store_unavailable",
        "the grant store (Redis) answered an error",
        "webhook %s %s: %s",
    ),
    (
        StoreUnavailable,
        503,
        "store_unavailable",
        "the grant store (Redis) is unavailable",
        "webhook %s %s: Redis unavailable (%s)",
    ),
)


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every failure into the JSON error shape: no HTML page, no traceback escapes."""
    try:
        return await handler(request)
    except ApiError as error:
        if error.status < 500:
            _log_refusal(request, error)
        return error_response(error.status, error.code, error.detail)
    except web.HTTPException as error:
        if error.status < 400:
            raise
        code = _HTTP_CODES.get(error.status, "http_error")
        headers = {k: v for k, v in error.headers.items() if k.lower() == "allow"}
        return error_response(error.status, code, error.reason, headers)
    except Exception as error:
        for kind, status, code, detail, line in DOMAIN_ERRORS:
            if isinstance(error, kind):
                log.warning(line, request.method, request.path, error)
                return error_response(status, code, detail)
        log.exception("webhook %s %s: unexpected error", request.method, request.path)
        return error_response(500, "internal_error", "unexpected error; see the webhook's log")
