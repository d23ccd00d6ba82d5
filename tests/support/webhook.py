"""The one signed-request helper, on webhook.auth's signer (``auth.signed_headers``, which the
tests that build their own requests use directly).

(The in-process webhook is built by smtp_whitelist.wiring.build_webhook, as the service
builds it.)"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from webhook import auth


def signed_request(port: int, method: str, path: str, body: Any, secret: str) -> tuple[int, Any]:
    """A signed webhook request to loopback ``port``, as the portal makes it, from a
    synchronous test: (status, the parsed JSON answer or None when it has no body)."""
    raw = b"" if body is None else json.dumps(body).encode()
    headers = auth.signed_headers(secret, method, path, raw)
    if body is not None:
        headers["Content-Type"] = "application/json"
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=raw if body is not None else None,
        method=method,
        headers=headers,
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 (loopback)
            data = response.read()
            return int(response.status), (json.loads(data) if data else None)
    except urllib.error.HTTPError as error:
        data = error.read()
        return error.code, (json.loads(data) if data else None)
