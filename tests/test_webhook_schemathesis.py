"""schemathesis against the live webhook: the running server keeps to ``webhook/openapi.yaml``.

A real ``smtp-whitelist webhook`` process on a free loopback port, a real redis-server, no DNS
check. Each operation of the OpenAPI file gets schema-generated requests, positive (bodies and
paths the schema allows) and negative (bodies that break it), signed the way the portal signs
them by a ``requests.Session`` whose ``send()`` adds the three headers over the request exactly
as it goes on the wire. Every answer must be documented for its operation, match the declared
content type and schema (the JSON error shape included), and never be a server error: with
Redis up and the DNS check off, no 5xx has a reason to happen.

A second run sends the same generated requests unsigned (headers missing, or well-formed but
signed with nothing) and proves every ``/v1`` route answers them 401 ``unauthorized`` only.

schemathesis 4.x API used: ``schemathesis.openapi.from_path``, ``schema[path][method]``,
``APIOperation.as_strategy(generation_mode=...)`` under hypothesis ``@given`` and
``Case.call_and_validate(base_url=..., session=..., checks=[...])``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

import webhook
from ratelimit.store import Store
from smtp_whitelist.settings import Settings
from smtp_whitelist.wiring import build_webhook
from tests.support import require_tool, webhook_process
from webhook import auth

SPEC = Path(webhook.__file__).parent / "openapi.yaml"
SECRET = "schemathesis-secret-" + "s" * 32
ALLOWED = "198.18.0.0/15"
MAX_GRANTS = 2
# Per operation and generation mode. Enough for schemathesis to reach every documented answer
# of an operation; the whole file stays well under a minute.
EXAMPLES = 100
UNSIGNED_EXAMPLES = 50

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
OPERATIONS = [
    ("/v1/whitelist", "POST"),
    ("/v1/whitelist", "GET"),
    ("/v1/whitelist/{ip}", "GET"),
    ("/v1/whitelist/{ip}", "DELETE"),
    ("/healthz", "GET"),
]
SIGNED_OPERATIONS = [op for op in OPERATIONS if op[0].startswith("/v1/")]

# A few addresses that may be granted and a few users, so generated requests also hit the
# success paths (201, 200, 204) and the per-user cap (429), not only the refusals.
GRANTABLE = [str(ipaddress.ip_address("198.18.0.0") + n) for n in range(10, 16)] + [
    "198.19.255.254"
]
# Addresses that are never granted, so reading and ending them reliably gives 404.
NEVER_GRANTED = ["198.18.9.9", "2001:db8::9", "203.0.113.7"]
PATH_IPS = st.sampled_from(GRANTABLE + NEVER_GRANTED)
USERS = ["alice", "bob", "c.d@campus.example"]
ELIGIBLE = [("staff", "normal"), ("student", "normal"), ("student", "resumption")]
# True three times in four; hypothesis' simplest value (0) is True, so shrinking keeps steering.
OFTEN = st.integers(0, 3).map(lambda n: n != 3)


class SigningSession(requests.Session):
    """Signs every request as the portal does: over the method, path and body actually sent."""

    def __init__(self, secret: str) -> None:
        super().__init__()
        self.secret = secret
        self.sent = 0

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        body = request.body or b""
        if isinstance(body, str):
            body = body.encode()
        assert isinstance(body, bytes), "schemathesis sent a streamed body"
        # The path as it is on the request line (percent-encoding kept), without the query.
        path = urlsplit(request.url or "").path
        request.headers.update(
            auth.signed_headers(self.secret, request.method or "GET", path, body)
        )
        self.sent += 1
        return super().send(request, **kwargs)


class UnsignedSession(requests.Session):
    """Sends what schemathesis generated, or strips the three headers: never a valid signature."""

    def __init__(self, strip: bool) -> None:
        super().__init__()
        self.strip = strip
        self.sent = 0

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        if self.strip:
            for name in (auth.TIMESTAMP_HEADER, auth.NONCE_HEADER, auth.SIGNATURE_HEADER):
                request.headers.pop(name, None)
        self.sent += 1
        return super().send(request, **kwargs)


@pytest.fixture(scope="module")
def live_webhook(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``smtp-whitelist webhook`` as a real process and its own redis-server; its base URL.

    One for the module: started once, it also proves the server stays healthy through every
    run. Grants left by one run are simply more state for the next.
    """
    settings = {
        "WEBHOOK_SECRET": SECRET,
        "ALLOWED_NETWORKS": ALLOWED,
        "MAX_GRANTS_PER_USER": str(MAX_GRANTS),
    }
    directory = tmp_path_factory.mktemp("schemathesis")
    with webhook_process(directory, require_tool("redis-server"), settings) as (_, port):
        yield f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def schema() -> Any:
    return schemathesis.openapi.from_path(SPEC)


def _steer(case: Any, data: st.DataObject) -> None:
    """Sometimes swap generated values for ones the campus rules accept, to reach 2xx and 429.

    Role/status and the address are swapped independently, so a generated address also meets
    the IP rules (422) behind an eligible role, instead of always stopping at 403.
    """
    if isinstance(case.body, dict):
        body = dict(case.body)
        if data.draw(OFTEN, label="eligible"):
            body["role"], body["status"] = data.draw(st.sampled_from(ELIGIBLE), label="pair")
            body["user"] = data.draw(st.sampled_from(USERS), label="user")
        if data.draw(OFTEN, label="grantable"):
            body["ip"] = data.draw(st.sampled_from(GRANTABLE), label="ip")
        case.body = body
    path_ip = bool(case.path_parameters) and "ip" in case.path_parameters
    if path_ip and data.draw(OFTEN, label="grantable path"):
        case.path_parameters = {"ip": data.draw(PATH_IPS, label="path ip")}


def _seed(base_url: str, session: requests.Session) -> None:
    """Two live grants, so that a run on its own also finds some to read and end."""
    for ip in GRANTABLE[-2:]:
        body = {"ip": ip, "user": "seed", "role": "staff", "status": "normal"}
        answer = session.post(f"{base_url}/v1/whitelist", json=body, timeout=10)
        assert answer.status_code in (200, 201), answer.text


def _run(
    operation: Any,
    mode: GenerationMode,
    examples: int,
    send: Callable[[Any, st.DataObject], None],
) -> None:
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        # Each example is a real HTTP request to a real server: slow by hypothesis' standards.
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode), data=st.data())
    def run(case: Any, data: st.DataObject) -> None:
        send(case, data)

    run()


# Negative generation only for the POST body: a negated header is re-signed by the session (so
# it is positive again) and the path segment accepts any text by design (422 invalid_ip).
RUNS = [(path, method, GenerationMode.POSITIVE) for path, method in OPERATIONS] + [
    ("/v1/whitelist", "POST", GenerationMode.NEGATIVE)
]


@pytest.mark.parametrize(("path", "method", "mode"), RUNS)
def test_signed_requests_keep_to_the_schema(
    live_webhook: str, schema: Any, path: str, method: str, mode: GenerationMode
) -> None:
    """Signed, schema-generated requests: only documented answers, in the documented shapes."""
    operation = schema[path][method]
    session = SigningSession(SECRET)
    _seed(live_webhook, session)
    seen: set[int] = set()

    def send(case: Any, data: st.DataObject) -> None:
        if mode is GenerationMode.POSITIVE:
            _steer(case, data)
        response = case.call_and_validate(base_url=live_webhook, session=session, checks=CHECKS)
        seen.add(response.status_code)
        assert response.status_code != 401, response.text  # signed correctly: never refused
        assert response.status_code != 409, response.text  # a fresh nonce every time

    _run(operation, mode, EXAMPLES, send)
    # /healthz has nothing to vary, so hypothesis stops after a request or two.
    assert session.sent >= (1 if path == "/healthz" else EXAMPLES // 2)
    assert not any(code >= 500 for code in seen), seen
    # The steering reaches the success answers and every rule, not only the first refusal.
    if mode is GenerationMode.POSITIVE:
        expected = {
            ("/v1/whitelist", "POST"): {201, 200, 403, 422, 429},
            ("/v1/whitelist", "GET"): {200},
            ("/v1/whitelist/{ip}", "GET"): {200, 404, 422},
            ("/v1/whitelist/{ip}", "DELETE"): {204, 404, 422},
            ("/healthz", "GET"): {200},
        }[path, method]
        assert expected <= seen, seen
    if mode is GenerationMode.NEGATIVE:
        # Broken bodies are refused as such (a case that only negated a header is re-signed by
        # the session and then meets the campus rules instead).
        assert 400 in seen, seen


@pytest.mark.parametrize("strip", [True, False], ids=["headers-missing", "signature-wrong"])
@pytest.mark.parametrize(("path", "method"), SIGNED_OPERATIONS)
def test_unsigned_requests_get_only_401(
    live_webhook: str, schema: Any, path: str, method: str, strip: bool
) -> None:
    """Without a valid signature every /v1 route answers 401 unauthorized (JSON), nothing else."""
    operation = schema[path][method]
    session = UnsignedSession(strip)

    def send(case: Any, data: st.DataObject) -> None:
        _steer(case, data)
        response = case.call_and_validate(base_url=live_webhook, session=session, checks=CHECKS)
        assert response.status_code == 401, response.text
        # schemathesis' Response: lower-case header names, list values.
        assert response.headers["content-type"][0].startswith("application/json")
        body = response.json()
        assert set(body) == {"error", "detail"}, body
        assert body["error"] == "unauthorized", body

    _run(operation, GenerationMode.POSITIVE, UNSIGNED_EXAMPLES, send)
    assert session.sent >= UNSIGNED_EXAMPLES // 2


def test_the_spec_names_the_implemented_routes() -> None:
    """The OpenAPI file lists every route build_app registers, and no other."""
    loaded = schemathesis.openapi.from_path(SPEC)
    documented: set[tuple[str, str]] = set()
    for result in loaded.get_all_operations():
        assert isinstance(result, Ok), result  # the file is a valid OpenAPI document
        operation = result.ok()
        documented.add((operation.path, operation.method.upper()))
    assert documented == set(OPERATIONS)
    settings_ = Settings(webhook_secret=SECRET)
    store = Store.from_settings(settings_)
    app = build_webhook(settings_, store)
    implemented = {
        (route.resource.canonical, route.method)
        for route in app.router.routes()
        if route.resource is not None and route.method != "HEAD"
    }
    assert implemented == documented
