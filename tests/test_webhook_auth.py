"""The webhook signature, checked without a server: every way a request can fail to be signed."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from hypothesis import given
from hypothesis import strategies as st

from webhook import auth

SECRET = "portal-secret-0123456789-abcdefghijklmnop"
NOW = 1_750_000_000
NONCE = "n0nce_Value-12345"
PATH = "/v1/whitelist"
BODY = b'{"ip": "192.0.2.10", "user": "alice", "role": "staff", "status": "normal"}'


def _headers(
    *,
    timestamp: str = str(NOW),
    nonce: str = NONCE,
    method: str = "POST",
    path: str = PATH,
    body: bytes = BODY,
    secret: str = SECRET,
) -> dict[str, str | None]:
    return {
        "timestamp": timestamp,
        "nonce": nonce,
        "signature": auth.sign(secret, timestamp, nonce, method, path, body),
    }


def _verify(
    headers: dict[str, str | None],
    *,
    method: str = "POST",
    path: str = PATH,
    body: bytes = BODY,
    now: float = NOW,
) -> auth.Signed:
    return auth.verify(
        SECRET,
        timestamp=headers["timestamp"],
        nonce=headers["nonce"],
        signature=headers["signature"],
        method=method,
        path=path,
        body=body,
        now=now,
    )


def test_signature_is_the_documented_hmac() -> None:
    """The README's recipe, spelt out with hashlib: timestamp, nonce, METHOD, path, body."""
    message = f"{NOW}\n{NONCE}\nPOST\n{PATH}\n".encode() + BODY
    expected = hmac.new(SECRET.encode(), message, hashlib.sha256).hexdigest()
    assert auth.sign(SECRET, str(NOW), NONCE, "POST", PATH, BODY) == f"sha256={expected}"


def test_correct_signature_passes() -> None:
    assert _verify(_headers()) == auth.Signed(timestamp=NOW, nonce=NONCE)


def test_upper_case_hex_passes() -> None:
    headers = _headers()
    headers["signature"] = "sha256=" + str(headers["signature"]).removeprefix("sha256=").upper()
    assert _verify(headers).nonce == NONCE


@pytest.mark.parametrize("missing", ["timestamp", "nonce", "signature"])
def test_missing_header(missing: str) -> None:
    headers = _headers()
    headers[missing] = None
    with pytest.raises(auth.AuthError, match="missing"):
        _verify(headers)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("timestamp", ""),
        ("timestamp", "-5"),
        ("timestamp", "1750000000.5"),
        ("timestamp", " 1750000000"),
        ("timestamp", "1" * 13),
        ("timestamp", "yesterday"),
        ("nonce", "short"),
        ("nonce", "x" * 65),
        ("nonce", "has space in it 123"),
        ("nonce", "semicolon;not;allowed"),
        ("nonce", "newline\nnot-allowed-x"),
        ("signature", ""),
        ("signature", "sha1=" + "0" * 40),
        ("signature", "sha256=" + "0" * 63),
        ("signature", "sha256=" + "g" * 64),
        ("signature", "0" * 64),
    ],
)
def test_malformed_header(field: str, value: str) -> None:
    headers = _headers()
    headers[field] = value
    with pytest.raises(auth.AuthError, match="malformed"):
        _verify(headers)


def test_wrong_key() -> None:
    with pytest.raises(auth.AuthError, match="does not match"):
        _verify(_headers(secret=SECRET + "x"))


def test_body_altered_after_signing() -> None:
    with pytest.raises(auth.AuthError, match="does not match"):
        _verify(_headers(), body=BODY.replace(b"192.0.2.10", b"192.0.2.11"))


def test_path_altered_after_signing() -> None:
    headers = _headers(method="DELETE", path="/v1/whitelist/192.0.2.10", body=b"")
    with pytest.raises(auth.AuthError, match="does not match"):
        _verify(headers, method="DELETE", path="/v1/whitelist/192.0.2.11", body=b"")


def test_method_altered_after_signing() -> None:
    headers = _headers(method="GET", path="/v1/whitelist/192.0.2.10", body=b"")
    with pytest.raises(auth.AuthError, match="does not match"):
        _verify(headers, method="DELETE", path="/v1/whitelist/192.0.2.10", body=b"")


def test_nonce_is_covered_by_the_signature() -> None:
    headers = _headers()
    headers["nonce"] = NONCE + "x"
    with pytest.raises(auth.AuthError, match="does not match"):
        _verify(headers)


@pytest.mark.parametrize("offset", [-auth.TIMESTAMP_WINDOW, 0, auth.TIMESTAMP_WINDOW])
def test_timestamp_inside_the_window(offset: int) -> None:
    assert _verify(_headers(timestamp=str(NOW + offset))).timestamp == NOW + offset


@pytest.mark.parametrize(
    ("offset", "what"),
    [(-auth.TIMESTAMP_WINDOW - 1, "stale"), (auth.TIMESTAMP_WINDOW + 1, "future")],
)
def test_timestamp_outside_the_window(offset: int, what: str) -> None:
    with pytest.raises(auth.AuthError, match="300 s"):
        _verify(_headers(timestamp=str(NOW + offset)))


def test_nonce_is_kept_as_long_as_a_request_could_be_valid() -> None:
    # Accepted from timestamp - 300 to timestamp + 300: a nonce must outlive that whole span.
    assert auth.NONCE_TTL >= 2 * auth.TIMESTAMP_WINDOW


_NONCES = st.from_regex(r"\A[A-Za-z0-9_-]{16,64}\Z")


@given(
    body=st.binary(max_size=512),
    path=st.from_regex(r"\A/[a-z0-9/:.]{0,40}\Z"),
    nonce=_NONCES,
    skew=st.integers(-auth.TIMESTAMP_WINDOW, auth.TIMESTAMP_WINDOW),
)
def test_round_trip(body: bytes, path: str, nonce: str, skew: int) -> None:
    headers = _headers(path=path, body=body, nonce=nonce)
    assert _verify(headers, path=path, body=body, now=NOW + skew).nonce == nonce


@given(body=st.binary(min_size=1, max_size=256), data=st.data())
def test_any_changed_body_byte_is_refused(body: bytes, data: st.DataObject) -> None:
    headers = _headers(body=body)
    index = data.draw(st.integers(0, len(body) - 1))
    flip = data.draw(st.integers(1, 255))
    altered = body[:index] + bytes([body[index] ^ flip]) + body[index + 1 :]
    with pytest.raises(auth.AuthError):
        _verify(headers, body=altered)


def test_signed_headers_are_what_verify_accepts_once_per_nonce() -> None:
    # The one signer the tests and any portal-side script share: now, and a fresh nonce each time.
    first = auth.signed_headers(SECRET, "POST", PATH, BODY)
    second = auth.signed_headers(SECRET, "POST", PATH, BODY)
    assert first[auth.NONCE_HEADER] != second[auth.NONCE_HEADER]
    signed = auth.verify(
        SECRET,
        timestamp=first[auth.TIMESTAMP_HEADER],
        nonce=first[auth.NONCE_HEADER],
        signature=first[auth.SIGNATURE_HEADER],
        method="POST",
        path=PATH,
        body=BODY,
        now=int(first[auth.TIMESTAMP_HEADER]),
    )
    assert signed.nonce == first[auth.NONCE_HEADER]
    with pytest.raises(auth.AuthError):
        auth.verify(
            "another-secret-0123456789-abcdefghijklmn",
            timestamp=first[auth.TIMESTAMP_HEADER],
            nonce=first[auth.NONCE_HEADER],
            signature=first[auth.SIGNATURE_HEADER],
            method="POST",
            path=PATH,
            body=BODY,
            now=int(first[auth.TIMESTAMP_HEADER]),
        )
