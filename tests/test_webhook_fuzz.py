"""Hypothesis against the live webhook: mutated bodies, headers and paths get documented 4xx only.

A real ``smtp-whitelist webhook`` process and a real redis-server; every example is one real
HTTP request over loopback, sent with ``http.client`` so the path, the headers and the body go
on the wire exactly as generated (no client-side re-quoting or re-encoding).

Whatever is sent, the answer is a documented status for that request (INTERFACE.md plus the
codes of webhook/app.py), never a 5xx, and every error is JSON ``{"error", "detail"}`` with a
code that belongs to its status — never an HTML page or a traceback. Correctly signed requests
with broken bodies are refused for the body, not for the signature. After each run the server
still answers ``/healthz`` and still grants, and its log holds no traceback.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support import Service, require_tool, webhook_process
from webhook import auth
from webhook.app import MAX_BODY

SECRET = "fuzz-secret-" + "f" * 40
ALLOWED = "198.18.0.0/15"
EXAMPLES = 200

# Every error code the webhook can give, by status (INTERFACE.md and webhook/app.py). 5xx are
# deliberately absent: with Redis up and the DNS check off none of them has a reason to happen.
ERROR_CODES: dict[int, set[str]] = {
    400: {"bad_request"},
    401: {"unauthorized"},
    403: {"not_eligible"},
    404: {"not_found"},
    405: {"method_not_allowed"},
    409: {"replayed"},
    413: {"too_large"},
    415: {"unsupported_media_type"},
    422: {"invalid_ip", "ip_not_allowed", "no_registered_name"},
    429: {"too_many_grants"},
}
GRANT_ANSWERS = {200, 201, 400, 403, 413, 415, 422, 429}

FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    # Each example is a real HTTP request: slow by hypothesis' standards, and on purpose.
    suppress_health_check=list(HealthCheck),
)


@dataclass
class Answer:
    status: int
    content_type: str
    raw: bytes
    headers: http.client.HTTPMessage

    def json(self) -> Any:
        return json.loads(self.raw)


@dataclass
class Live:
    host: str
    port: int
    daemon: Service

    def send(
        self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> Answer:
        """One request on its own connection, exactly as given."""
        connection = http.client.HTTPConnection(self.host, self.port, timeout=10)
        try:
            connection.putrequest(method, path, skip_accept_encoding=True)
            for name, value in (headers or {}).items():
                connection.putheader(name, value)
            connection.putheader("Content-Length", str(len(body)))
            connection.endheaders(body)
            response = connection.getresponse()
            raw = response.read()
            return Answer(
                response.status, response.getheader("Content-Type", ""), raw, response.msg
            )
        finally:
            connection.close()

    def signed(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        content_type: str | None = "application/json",
        extra: dict[str, str] | None = None,
    ) -> Answer:
        """Signed the way the portal signs: over the method, the raw path and the raw body."""
        headers = auth.signed_headers(SECRET, method, path.partition("?")[0], body)
        if content_type is not None:
            headers["Content-Type"] = content_type
        headers.update(extra or {})
        return self.send(method, path, body, headers)


def check_answer(answer: Answer, allowed: set[int]) -> None:
    """A documented status; errors are the JSON shape with a code of that status."""
    assert answer.status < 500, (answer.status, answer.raw)
    assert answer.status in allowed, (answer.status, answer.raw, allowed)
    assert not answer.raw.lstrip().startswith(b"<"), answer.raw  # never an HTML page
    if answer.status >= 400:
        assert answer.content_type.startswith("application/json"), answer.content_type
        body = answer.json()
        assert isinstance(body, dict), body
        assert set(body) == {"error", "detail"}, body
        assert body["error"] in ERROR_CODES[answer.status], (answer.status, body)
        assert isinstance(body["detail"], str), body
        assert b"Traceback" not in answer.raw, answer.raw
    elif answer.status == 204:
        assert answer.raw == b""
    else:
        assert answer.content_type.startswith("application/json"), answer.content_type
        answer.json()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """``smtp-whitelist webhook`` and its own redis-server, shared by the module's runs."""
    settings = {
        "WEBHOOK_SECRET": SECRET,
        "ALLOWED_NETWORKS": ALLOWED,
        # High enough that the few users below rarely hit the cap; 429 stays possible.
        "MAX_GRANTS_PER_USER": "50",
    }
    directory = tmp_path_factory.mktemp("webhook-fuzz")
    with webhook_process(directory, require_tool("redis-server"), settings) as (daemon, port):
        yield Live("127.0.0.1", port, daemon)


@pytest.fixture
def still_serving(live: Live) -> Iterator[Live]:
    """After the run: /healthz answers and a valid grant is still made."""
    yield live
    health = live.send("GET", "/healthz")
    assert (health.status, health.json()) == (200, {"redis": "ok"})
    body = json.dumps(valid_body("198.19.0.1", user="after-fuzz")).encode()
    answer = live.signed("POST", "/v1/whitelist", body)
    assert answer.status in (200, 201), answer.raw
    assert answer.json()["ip"] == "198.19.0.1"
    assert "Traceback" not in live.daemon.log()


# -- strategies --------------------------------------------------------------------------------

IP_TEXT = st.ip_addresses().map(str)
GRANTABLE = st.integers(0, 2**17 - 1).map(lambda n: str(ipaddress.ip_address("198.18.0.0") + n))
USERS = st.sampled_from(["alice", "bob", "carol.d", "e@campus.example"])
PAIRS = st.sampled_from([("staff", "normal"), ("student", "normal"), ("student", "resumption")])


def valid_body(
    ip: str, user: str = "alice", role: str = "staff", status: str = "normal"
) -> dict[str, Any]:
    return {"ip": ip, "user": user, "role": role, "status": status}


@st.composite
def valid_bodies(draw: st.DrawFn) -> dict[str, Any]:
    role, status = draw(PAIRS)
    return valid_body(draw(GRANTABLE), draw(USERS), role, status)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=20,
)
FIELDS = ["ip", "user", "role", "status"]
HUGE = st.integers(MAX_BODY - 64, 3 * MAX_BODY).map(lambda n: "x" * n)


@st.composite
def mutated_bodies(draw: st.DrawFn) -> dict[str, Any]:
    """A valid grant body with fields dropped, added, retyped or made huge or odd."""
    body = draw(valid_bodies())
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["drop", "add", "retype", "text", "huge"]))
        field = draw(st.sampled_from(FIELDS))
        if kind == "drop":
            body.pop(field, None)
        elif kind == "add":
            body[draw(st.text(min_size=1, max_size=12))] = draw(JSON_VALUES)
        elif kind == "retype":
            body[field] = draw(JSON_VALUES.filter(lambda v: not isinstance(v, str)))
        elif kind == "text":
            body[field] = draw(st.text(max_size=80))
        else:
            body[field] = draw(HUGE)
    return body


@st.composite
def one_odd_field(draw: st.DrawFn) -> dict[str, Any]:
    """A valid body but for one string field: the campus rules (403, 422) see it, not just 400."""
    body = draw(valid_bodies())
    field = draw(st.sampled_from(FIELDS))
    body[field] = draw(st.text(max_size=70) | IP_TEXT)
    return body


def encode(value: Any) -> bytes:
    return json.dumps(value).encode()


BODIES = st.one_of(
    valid_bodies().map(encode),
    mutated_bodies().map(encode),
    one_odd_field().map(encode),
    JSON_VALUES.map(encode),
    st.binary(max_size=300),
    # Valid JSON text in a form json.dumps never writes: odd spacing, escapes, duplicate keys.
    valid_bodies().map(lambda b: json.dumps(b, indent=3, ensure_ascii=True).encode()),
    valid_bodies().map(lambda b: encode(b)[:-1] + b', "ip": "198.18.0.1"}'),
    HUGE.map(lambda s: encode({"ip": "198.18.0.1", "user": s, "role": "staff", "status": "n"})),
    st.binary(min_size=MAX_BODY + 1, max_size=MAX_BODY + 200),
)


def expected_for_body(body: bytes) -> set[int]:
    """What a correctly signed POST with this body may get."""
    if len(body) > MAX_BODY:
        return {413}
    try:
        parsed = json.loads(body)
    except ValueError:
        return {400}
    if not isinstance(parsed, dict) or set(parsed) != set(FIELDS):
        return {400}
    if not all(isinstance(parsed[f], str) for f in FIELDS):
        return {400}
    return GRANT_ANSWERS - {413, 415}


# -- bodies ------------------------------------------------------------------------------------


@FUZZ_SETTINGS
@given(body=BODIES)
def test_signed_mutated_bodies_get_documented_answers(still_serving: Live, body: bytes) -> None:
    """Correctly signed POSTs: the body decides the answer, and only documented ones come."""
    answer = still_serving.signed("POST", "/v1/whitelist", body)
    check_answer(answer, expected_for_body(body))


CONTENT_TYPES = st.sampled_from(
    [
        None,
        "application/json",
        "application/json; charset=utf-8",
        "application/json; charset=latin-1",
        "application/json; charset=utf-16",
        "text/plain",
        "text/html",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/jsonx",
        "application/problem+json",
        "",
        "*/*",
    ]
) | st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=40)


@FUZZ_SETTINGS
@given(body=valid_bodies(), content_type=CONTENT_TYPES)
def test_content_types(still_serving: Live, body: dict[str, Any], content_type: str | None) -> None:
    """A valid signed body under any Content-Type: granted only as application/json (UTF-8)."""
    answer = still_serving.signed("POST", "/v1/whitelist", encode(body), content_type)
    json_ok = content_type is not None and content_type.split(";")[0].strip() == (
        "application/json"
    )
    check_answer(answer, GRANT_ANSWERS if json_ok else {415})
    if not json_ok:
        assert answer.status == 415


# -- headers -----------------------------------------------------------------------------------

PRINTABLE = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=120)


@st.composite
def header_mutations(draw: st.DrawFn) -> tuple[str, dict[str, str | None]]:
    """Which header to break and its new values (None: the header is left out)."""
    now = int(time.time())
    field = draw(st.sampled_from([auth.TIMESTAMP_HEADER, auth.NONCE_HEADER, auth.SIGNATURE_HEADER]))
    value: str | None
    if field == auth.TIMESTAMP_HEADER:
        value = draw(
            st.one_of(
                st.none(),
                PRINTABLE,
                st.integers(-(10**13), 10**13).map(str),
                st.integers(301, 10**9).map(lambda d: str(now + d)),
                st.integers(301, now).map(lambda d: str(now - d)),
                st.just(f"{now}.5"),
                st.just(f"+{now}"),
                st.just(f"0{now}"),
            )
        )
    elif field == auth.NONCE_HEADER:
        value = draw(
            st.one_of(
                st.none(),
                PRINTABLE,
                st.text("abcXYZ019_-", max_size=15),
                st.text("abcXYZ019_-", min_size=65, max_size=200),
                st.text("abc!$%^&*.~", min_size=16, max_size=64),
            )
        )
    else:
        value = draw(
            st.one_of(
                st.none(),
                PRINTABLE,
                st.text("0123456789abcdef", min_size=64, max_size=64).map(lambda h: "sha256=" + h),
                st.text("0123456789abcdef", max_size=63).map(lambda h: "sha256=" + h),
                st.text("0123456789abcdef", min_size=64, max_size=64).map(lambda h: "sha1=" + h),
            )
        )
    return field, {field: value}


def locally_valid(headers: dict[str, str], method: str, path: str, body: bytes) -> bool:
    """Whether the headers, as the server will read them, carry a valid, fresh signature."""
    try:
        auth.verify(
            SECRET,
            timestamp=headers.get(auth.TIMESTAMP_HEADER),
            nonce=headers.get(auth.NONCE_HEADER),
            signature=headers.get(auth.SIGNATURE_HEADER),
            method=method,
            path=path,
            body=body,
            now=time.time(),
        )
    except auth.AuthError:
        return False
    return True


@FUZZ_SETTINGS
@given(
    body=valid_bodies(),
    mutation=header_mutations(),
    route=st.sampled_from(
        [("POST", "/v1/whitelist"), ("GET", "/v1/whitelist"), ("GET", "/v1/whitelist/198.18.0.1")]
    ),
)
def test_mutated_signature_headers_get_401(
    still_serving: Live,
    body: dict[str, Any],
    mutation: tuple[str, dict[str, str | None]],
    route: tuple[str, str],
) -> None:
    """One signature header missing, malformed, stale or wrong: 401, whatever the route."""
    method, path = route
    raw = encode(body) if method == "POST" else b""
    headers = auth.signed_headers(SECRET, method, path, raw)
    for name, value in mutation[1].items():
        if value is None:
            headers.pop(name)
        else:
            headers[name] = value
    if method == "POST":
        headers["Content-Type"] = "application/json"
    # The HTTP parser strips a header value's surrounding space; the server judges what is left.
    seen = {k: v.strip(" \t") for k, v in headers.items()}
    answer = still_serving.send(method, path, raw, headers)
    if locally_valid(seen, method, path, raw):
        # The mutation happened to keep it valid (an upper-case hex digest, say).
        check_answer(answer, GRANT_ANSWERS | {200, 404})
    else:
        check_answer(answer, {401})


@FUZZ_SETTINGS
@given(
    body=valid_bodies(),
    twice=st.sampled_from([auth.TIMESTAMP_HEADER, auth.NONCE_HEADER, auth.SIGNATURE_HEADER]),
)
def test_replayed_and_duplicated_headers(
    still_serving: Live, body: dict[str, Any], twice: str
) -> None:
    """A replayed request is 409; a signature header given twice is 401."""
    raw = encode(body)
    headers = auth.signed_headers(SECRET, "POST", "/v1/whitelist", raw)
    headers["Content-Type"] = "application/json"
    first = still_serving.send("POST", "/v1/whitelist", raw, headers)
    check_answer(first, GRANT_ANSWERS)
    again = still_serving.send("POST", "/v1/whitelist", raw, headers)
    check_answer(again, {409})
    # http.client sends a header once per putheader call: here the same header twice.
    fresh = auth.signed_headers(SECRET, "POST", "/v1/whitelist", raw)
    connection = http.client.HTTPConnection(still_serving.host, still_serving.port, timeout=10)
    try:
        connection.putrequest("POST", "/v1/whitelist", skip_accept_encoding=True)
        for name, value in fresh.items():
            connection.putheader(name, value)
        connection.putheader(twice, fresh[twice])
        connection.putheader("Content-Type", "application/json")
        connection.putheader("Content-Length", str(len(raw)))
        connection.endheaders(raw)
        response = connection.getresponse()
        answer = Answer(
            response.status, response.getheader("Content-Type", ""), response.read(), response.msg
        )
    finally:
        connection.close()
    check_answer(answer, {401})


# -- paths -------------------------------------------------------------------------------------

IP_LIKE = st.one_of(
    GRANTABLE,
    st.ip_addresses().map(str),
    st.ip_addresses(v=6).map(lambda a: a.exploded.upper()),
    st.lists(st.integers(0, 999), min_size=1, max_size=6).map(lambda p: ".".join(map(str, p))),
    st.lists(st.integers(0, 0xFFFFF).map("{:x}".format), min_size=1, max_size=9).map(":".join),
    st.ip_addresses(v=6).map(lambda a: f"{a}%eth0"),
    st.ip_addresses(v=4).map(lambda a: f"::ffff:{a}"),
    st.ip_addresses(v=4).map(lambda a: f" {a}"),
    st.ip_addresses(v=4).map(lambda a: f"{a}/32"),
    st.text(max_size=30),
)


@st.composite
def paths(draw: st.DrawFn) -> str:
    """A path under /v1/whitelist/: IP-like or random, percent-encoded in several ways."""
    text = draw(IP_LIKE)
    style = draw(st.sampled_from(["all", "safe", "raw-ascii", "double", "extra-segment"]))
    if style == "all":
        segment = quote(text, safe="")
    elif style == "safe":
        segment = quote(text, safe=":.[]@!$&'()*+,;=")
    elif style == "raw-ascii":
        # Only what may stand unencoded on a request line (RFC 3986 pchar), the rest encoded.
        segment = quote(text, safe=":@!$&'()*+,;=-._~")
    elif style == "double":
        segment = quote(quote(text, safe=""), safe="")
    else:
        segment = quote(text, safe="") + "/" + quote(draw(st.text(max_size=10)), safe="")
    query = draw(st.sampled_from(["", "?x=1", "?ip=198.18.0.1&&", "?"]))
    return "/v1/whitelist/" + segment + query


METHODS = st.sampled_from(["GET", "DELETE", "POST", "PUT", "PATCH"])


@FUZZ_SETTINGS
@given(path=paths(), method=METHODS)
def test_random_paths_signed(still_serving: Live, path: str, method: str) -> None:
    """Signed requests to any path under /v1/whitelist/: documented answers only."""
    answer = still_serving.signed(method, path, b"", content_type=None)
    check_answer(answer, {200, 204, 404, 405, 422})
    if method in ("POST", "PUT", "PATCH"):
        # /v1/whitelist/{ip} has no such method (or, with a slash more, there is no such path).
        assert answer.status in (404, 405), answer.raw
    if answer.status == 405:
        assert answer.headers.get("Allow"), answer.headers


@FUZZ_SETTINGS
@given(path=paths(), method=METHODS)
def test_random_paths_unsigned(still_serving: Live, path: str, method: str) -> None:
    """Unsigned: a route that exists answers 401 before looking at the address."""
    answer = still_serving.send(method, path)
    check_answer(answer, {401, 404, 405})
    if method in ("GET", "DELETE") and answer.status != 404:
        assert answer.status == 401, answer.raw
