"""The sans-IO parser and reply encoder, fed a real Postfix 3.7 request in every fragmentation.

A policy server must not take one ``recv()`` for one request (SMTPD_POLICY_README: the request
ends with an empty line, and TCP may cut it anywhere), so the same bytes are read here one byte
at a time, cut at every point, in the buffer sizes of a real server (4096, 128, 16, 1), and
several at once.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from policyd.protocol import (
    MAX_ATTRIBUTES,
    MAX_LINE_BYTES,
    MAX_REQUEST_BYTES,
    PolicyRequest,
    ProtocolError,
    RequestParser,
    encode_reply,
    encode_request,
    parse_reply,
)
from tests.support import POSTFIX_37_REQUEST, postfix_request

# The request exactly as Postfix writes it on the wire.
WIRE = encode_request(POSTFIX_37_REQUEST)


def chunks(data: bytes, size: int) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def feed_all(parser: RequestParser, pieces: Iterator[bytes] | list[bytes]) -> list[PolicyRequest]:
    found: list[PolicyRequest] = []
    for piece in pieces:
        found += parser.feed(piece)
    return found


def test_the_wire_form_is_what_postfix_sends() -> None:
    # The fixture itself: name=value lines in Postfix's order, then one empty line.
    lines = WIRE.split(b"\n")
    assert lines[0] == b"request=smtpd_access_policy"
    assert lines[-2:] == [b"", b""]
    assert len(lines) == len(POSTFIX_37_REQUEST) + 2


def test_whole_request_in_one_read() -> None:
    [request] = RequestParser().feed(WIRE)
    assert request.attributes == POSTFIX_37_REQUEST
    assert request.protocol_state == "RCPT"
    assert request.client_address == "198.51.100.23"
    assert request.get("sasl_sender") == ""  # empty values are kept, not dropped
    assert request.get("queue_id") == "8045F2AB23"


@pytest.mark.parametrize("size", [4096, 128, 16, 1])
def test_request_read_in_buffers_of(size: int) -> None:
    parser = RequestParser()
    found = feed_all(parser, chunks(WIRE, size))
    assert [r.attributes for r in found] == [POSTFIX_37_REQUEST]
    assert not parser.pending


def test_one_byte_at_a_time_completes_only_on_the_empty_line() -> None:
    parser = RequestParser()
    for i, byte in enumerate(WIRE):
        found = parser.feed(bytes([byte]))
        if i < len(WIRE) - 1:
            assert found == [], f"a request came out early, at byte {i}"
            assert parser.pending
        else:
            assert [r.attributes for r in found] == [POSTFIX_37_REQUEST]
    assert not parser.pending


def test_every_split_point() -> None:
    for cut in range(len(WIRE) + 1):
        parser = RequestParser()
        found = feed_all(parser, [WIRE[:cut], WIRE[cut:]])
        assert [r.attributes for r in found] == [POSTFIX_37_REQUEST], f"cut at {cut}"


def test_every_split_point_of_three_requests() -> None:
    # Three different requests back to back, cut at every point: none may leak into another.
    requests = [
        postfix_request(protocol_state="RCPT", recipient_count="0"),
        postfix_request(protocol_state="DATA", recipient_count="3", queue_id="9AB12C"),
        postfix_request(protocol_state="END-OF-MESSAGE", client_address="2001:db8::7"),
    ]
    wire = b"".join(encode_request(r) for r in requests)
    for cut in range(0, len(wire) + 1, 7):
        parser = RequestParser()
        found = feed_all(parser, [wire[:cut], wire[cut:]])
        assert [r.attributes for r in found] == requests, f"cut at {cut}"


@pytest.mark.parametrize("size", [65536, 4096, 128, 16, 1])
def test_several_requests_in_one_stream(size: int) -> None:
    requests = [postfix_request(queue_id=f"Q{i}", recipient_count=str(i)) for i in range(5)]
    wire = b"".join(encode_request(r) for r in requests)
    found = feed_all(RequestParser(), chunks(wire, size))
    assert [r.attributes for r in found] == requests
    assert [r.recipient_count for r in found] == [0, 1, 2, 3, 4]


def test_several_requests_in_one_chunk_come_out_at_once() -> None:
    wire = WIRE * 3
    found = RequestParser().feed(wire)
    assert len(found) == 3
    assert all(r.attributes == POSTFIX_37_REQUEST for r in found)


def test_crlf_is_tolerated_in_any_fragmentation() -> None:
    crlf = WIRE.replace(b"\n", b"\r\n")
    for size in (4096, 16, 1):
        found = feed_all(RequestParser(), chunks(crlf, size))
        assert [r.attributes for r in found] == [POSTFIX_37_REQUEST], size


def test_value_keeps_its_equals_signs_and_last_repeat_wins() -> None:
    wire = b"sender=a=b@example.org\nclient_address=192.0.2.1\nclient_address=192.0.2.2\n\n"
    [request] = RequestParser().feed(wire)
    assert request.get("sender") == "a=b@example.org"
    assert request.client_address == "192.0.2.2"


def test_an_empty_request_is_a_request() -> None:
    # An empty line alone: a request without attributes (the decision answers it with DUNNO).
    assert [r.attributes for r in RequestParser().feed(b"\n")] == [{}]


@pytest.mark.parametrize(
    ("text", "count"), [("5", 5), ("0", 0), ("", 0), ("-3", 0), ("x", 0), ("9" * 10, 0)]
)
def test_recipient_count_never_raises(text: str, count: int) -> None:
    assert PolicyRequest({"recipient_count": text}).recipient_count == count


def test_protocol_state_is_case_insensitive() -> None:
    assert PolicyRequest({"protocol_state": "data"}).protocol_state == "DATA"


def test_undecodable_bytes_do_not_raise() -> None:
    [request] = RequestParser().feed(b"sender=\xff\xfe@example.org\n\n")
    assert request.get("sender").endswith("@example.org")


# -- malformed input: each kind raises, however it arrives ------------------------------------

LONG_LINE = b"sender=" + b"a" * MAX_LINE_BYTES + b"\n"
# Each line is under the line limit; together they pass the request limit before 256 lines.
BIG_REQUEST = b"".join(b"x%d=" % i + b"v" * 4000 + b"\n" for i in range(20)) + b"\n"
MANY_LINES = b"".join(b"a%d=1\n" % i for i in range(MAX_ATTRIBUTES + 1)) + b"\n"

MALFORMED = {
    "line without =": WIRE.replace(b"size=12345\n", b"size 12345\n"),
    "line without a name": b"=value\n\n",
    "line over 4 KiB": LONG_LINE + b"\n",
    "request over 64 KiB": BIG_REQUEST,
    "more than 256 lines": MANY_LINES,
}


@pytest.mark.parametrize("size", [65536, 4096, 128, 16, 1])
@pytest.mark.parametrize("kind", list(MALFORMED))
def test_malformed_input_raises(kind: str, size: int) -> None:
    parser = RequestParser()
    with pytest.raises(ProtocolError):
        feed_all(parser, chunks(MALFORMED[kind], size))


def test_a_long_line_is_refused_before_its_end_arrives() -> None:
    # Waiting for the newline would let a client make us buffer without bound.
    parser = RequestParser()
    with pytest.raises(ProtocolError, match="line longer"):
        feed_all(parser, chunks(b"sender=" + b"a" * (2 * MAX_LINE_BYTES), 512))


def test_a_big_request_is_refused_before_its_end_arrives() -> None:
    parser = RequestParser()
    endless = b"".join(b"x%d=" % i + b"v" * 4000 + b"\n" for i in range(40))
    with pytest.raises(ProtocolError, match="request longer"):
        feed_all(parser, chunks(endless, 4096))


def test_the_limits_themselves_are_allowed() -> None:
    # Exactly at each limit is still a request: the limits are maxima, not off by one.
    line = b"sender=" + b"a" * (MAX_LINE_BYTES - len(b"sender=")) + b"\n\n"
    assert len(RequestParser().feed(line)) == 1
    many = b"".join(b"a%d=1\n" % i for i in range(MAX_ATTRIBUTES)) + b"\n"
    [request] = RequestParser().feed(many)
    assert len(request.attributes) == MAX_ATTRIBUTES
    filler = b"".join(b"x%d=" % i + b"v" * 4000 + b"\n" for i in range(16))
    last = b"y=" + b"v" * (MAX_REQUEST_BYTES - len(filler) - len(b"y=") - 2) + b"\n\n"
    assert len(filler + last) == MAX_REQUEST_BYTES
    assert len(RequestParser().feed(filler + last)) == 1


def test_limits_apply_per_request_not_per_connection() -> None:
    # 300 short requests on one connection are far past 256 lines and 64 KiB in total.
    parser = RequestParser()
    found = feed_all(parser, [WIRE] * 300)
    assert len(found) == 300


# -- the reply ------------------------------------------------------------------------------


def test_encode_reply() -> None:
    assert encode_reply("DUNNO") == b"action=DUNNO\n\n"
    assert encode_reply("450 4.7.1 slow down") == b"action=450 4.7.1 slow down\n\n"


@pytest.mark.parametrize("action", ["DUNNO\n\naction=OK", "DUNNO\r\nOK", "DUNNO\nOK", "a\0b"])
def test_encode_reply_never_lets_a_line_break_in(action: str) -> None:
    wire = encode_reply(action)
    assert wire.count(b"\n") == 2
    assert wire.endswith(b"\n\n")
    assert b"\r" not in wire
    assert b"\0" not in wire
    assert parse_reply(wire) is not None


@given(st.text())
def test_encode_reply_is_always_one_reply(action: str) -> None:
    wire = encode_reply(action)
    assert wire.startswith(b"action=")
    assert wire.endswith(b"\n\n")
    assert wire.count(b"\n") == 2
    assert b"\r" not in wire
    assert b"\0" not in wire


@given(st.text(alphabet=st.characters(exclude_characters="\r\n\0", exclude_categories=["Cs"])))
def test_encode_reply_round_trips(action: str) -> None:
    assert parse_reply(encode_reply(action)) == action


def test_parse_reply_needs_a_complete_reply() -> None:
    assert parse_reply(b"action=DUNNO\n") is None
    assert parse_reply(b"action=DUNNO\n\n") == "DUNNO"
    assert parse_reply(b"nonsense=1\n\n") is None


# -- properties: any valid requests, cut anywhere, come out unchanged -------------------------

names = st.text(
    alphabet=st.characters(min_codepoint=33, max_codepoint=126, exclude_characters="="),
    min_size=1,
    max_size=40,
)
values = st.text(
    alphabet=st.characters(exclude_characters="\r\n", exclude_categories=["Cs"]), max_size=200
)
requests = st.lists(st.dictionaries(names, values, max_size=40), min_size=1, max_size=5)


@given(requests, st.data())
def test_any_requests_in_any_fragmentation(
    batch: list[dict[str, str]], data: st.DataObject
) -> None:
    wire = b"".join(encode_request(r) for r in batch)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=20)))
    pieces = [wire[a:b] for a, b in zip([0, *cuts], [*cuts, len(wire)], strict=True)]
    parser = RequestParser()
    assert [r.attributes for r in feed_all(parser, pieces)] == batch
    assert not parser.pending


@given(st.binary(max_size=2000), st.integers(1, 64))
def test_garbage_never_raises_anything_but_protocol_error(garbage: bytes, size: int) -> None:
    parser = RequestParser()
    try:
        for request in feed_all(parser, chunks(garbage, size)):
            assert isinstance(request.attributes, dict)
    except ProtocolError:
        pass
