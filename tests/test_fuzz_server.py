"""Issue 5: random and mutated Postfix requests against a running daemon (hypothesis).

Whatever arrives, the daemon answers every complete well-formed request, answers nothing to a
malformed one and closes that connection, and keeps serving everybody else.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policyd.protocol import MAX_LINE_BYTES, ProtocolError, RequestParser
from tests.support import (
    BlockingPolicyClient,
    RedisServer,
    Service,
    free_port,
    policy_request,
    require_tool,
)

REAL_REQUEST = policy_request("198.18.7.7", state="RCPT")


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Service, int]]:
    directory: Path = tmp_path_factory.mktemp("fuzz")
    redis = RedisServer(require_tool("redis-server"), directory / "redis")
    redis.start()
    port = free_port()
    process = Service(
        "policyd",
        {
            "REDIS_URL": redis.url,
            "POLICY_LISTEN": f"127.0.0.1:{port}",
            "MESSAGE_LIMITS": "1000000/1h",
            "REQUEST_TIMEOUT": "2",
        },
        directory,
    ).start()
    yield process, port
    assert process.stop() == 0
    redis.stop()


def _expected(data: bytes) -> tuple[int, bool]:
    """(complete requests, malformed) as the protocol defines them, for a whole input."""
    parser = RequestParser()
    try:
        return len(parser.feed(data)), False
    except ProtocolError:
        return -1, True


def _exchange(port: int, data: bytes, replies_wanted: int) -> tuple[int, bool]:
    """Send ``data``, half-close, and read: (replies received, closed by the server)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            return 0, True
        received = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            received += chunk
    return received.count(b"\n\n"), True


names = st.text(
    alphabet=st.characters(exclude_characters="=\n\r\x00", codec="utf-8"),
    min_size=1,
    max_size=20,
)
values = st.text(
    alphabet=st.characters(exclude_characters="\n\r", codec="utf-8"),
    max_size=60,
)
attribute_sets = st.dictionaries(names, values, max_size=12)


def _encode(attributes: dict[str, str]) -> bytes:
    return "".join(f"{k}={v}\n" for k, v in attributes.items()).encode() + b"\n"


mutations = st.sampled_from(
    [
        b"no equals sign here\n",
        b"x=" + b"y" * (MAX_LINE_BYTES + 10) + b"\n",
        b"\n",
        b"protocol_state=DATA\n",
        b"client_address=::ffff:1.2.3.4\n",
        b"client_address=not-an-ip\n",
        b"recipient_count=99999999999999999999\n",
        b"\xff\xfe=\xc3\x28\n",
        b"=value-without-name\n",
    ]
)


@st.composite
def mutated_requests(draw: st.DrawFn) -> bytes:
    """A real Postfix request with lines inserted, dropped or replaced at random."""
    lines = REAL_REQUEST.split(b"\n")[:-2]
    for _ in range(draw(st.integers(0, 4))):
        position = draw(st.integers(0, len(lines)))
        choice = draw(st.integers(0, 2))
        if choice == 0:
            lines.insert(position, draw(mutations).rstrip(b"\n"))
        elif choice == 1 and lines:
            del lines[min(position, len(lines) - 1)]
        else:
            lines.insert(position, draw(st.binary(max_size=40)).replace(b"\n", b""))
    return b"\n".join(lines) + b"\n\n"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(
        st.lists(attribute_sets, min_size=1, max_size=3).map(lambda xs: b"".join(map(_encode, xs))),
        mutated_requests(),
        st.binary(max_size=300),
    )
)
def test_random_input_is_answered_or_dropped_and_others_are_served(
    daemon: tuple[Service, int], data: bytes
) -> None:
    process, port = daemon
    observer = BlockingPolicyClient("127.0.0.1", port)
    try:
        complete, malformed = _expected(data)
        replies, _ = _exchange(port, data, complete)
        if malformed:
            assert replies <= data.count(b"\n\n")  # requests before the bad line may be answered
        else:
            assert replies == complete
        assert observer.ask(REAL_REQUEST) == "DUNNO"
    finally:
        observer.close()
    assert process.process is not None
    assert process.process.poll() is None


def test_malformed_request_gets_no_reply_at_all(daemon: tuple[Service, int]) -> None:
    _, port = daemon
    replies, closed = _exchange(port, b"request=smtpd_access_policy\nthis line is bad\n\n", 1)
    assert (replies, closed) == (0, True)
