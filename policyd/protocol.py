"""Postfix's SMTP access policy protocol, sans I/O: bytes in, requests out; action in, bytes out.

The protocol (Postfix SMTPD_POLICY_README, "Protocol description"): a request is a series of
``name=value`` lines ending with an empty line; the reply is ``action=...`` and an empty line;
the client may send many requests over one connection. Nothing here touches a socket, so the
parser is tested directly with every fragmentation of a request.
"""

from __future__ import annotations

from dataclasses import dataclass

# SMTPD_POLICY_README sets no sizes; these are ours (docs/interface.md). Postfix's attributes are
# short (a sender address is at most a few hundred bytes; line_length_limit is 2048 by default),
# so a longer line, request or attribute count means a broken or hostile client, not mail.
MAX_LINE_BYTES = 4 * 1024  # one "name=value" line, without its newline
MAX_REQUEST_BYTES = 64 * 1024  # one whole request, newlines included
MAX_ATTRIBUTES = 256  # lines in one request (Postfix 3.7 sends about 30)


class ProtocolError(Exception):
    """The peer broke the protocol: the connection must be closed without a reply."""


@dataclass(slots=True)
class PolicyRequest:
    """One request: its attributes as Postfix sent them (last one wins on a repeat)."""

    attributes: dict[str, str]

    def get(self, name: str, default: str = "") -> str:
        return self.attributes.get(name, default)

    @property
    def protocol_state(self) -> str:
        return self.attributes.get("protocol_state", "").upper()

    @property
    def client_address(self) -> str:
        return self.attributes.get("client_address", "")

    @property
    def recipient_count(self) -> int:
        """Recipients accepted so far (at DATA: of the message); 0 when absent or not a number."""
        text = self.attributes.get("recipient_count", "")
        # Postfix writes ASCII digits. str.isdigit() also takes "²" and "①" (which int() then
        # refuses) and "١٢" (which int() reads as 12): neither is a number Postfix sent.
        return int(text) if text.isascii() and text.isdigit() and len(text) <= 9 else 0


class RequestParser:
    """Accumulates bytes from one connection and yields complete requests.

    Holds at most one partial request (bounded by MAX_REQUEST_BYTES); raises ProtocolError as
    soon as the input can no longer be a valid request, without waiting for its end.
    """

    __slots__ = ("_attributes", "_buffer", "_lines", "_size")

    def __init__(self) -> None:
        self._buffer = bytearray()  # bytes after the last complete line
        self._attributes: dict[str, str] = {}
        self._lines = 0
        self._size = 0  # bytes of the current request's complete lines

    @property
    def pending(self) -> bool:
        """Whether part of a request has arrived (its end has not)."""
        return bool(self._buffer) or self._lines > 0

    def feed(self, data: bytes) -> list[PolicyRequest]:
        """Take the next bytes; return the requests they complete (often none, often one)."""
        buffer = self._buffer
        buffer += data
        requests: list[PolicyRequest] = []
        if not self._lines and b"\r" not in buffer:
            # Postfix writes each request whole: take complete requests in bulk first.
            start = self._feed_whole(buffer, requests)
            if start:
                del buffer[:start]
        return self._feed_lines(buffer, requests)

    def _feed_whole(self, buffer: bytearray, requests: list[PolicyRequest]) -> int:
        """Parse the complete requests at the start of ``buffer`` with a few C-level calls each
        (one decode, one split, one dict) instead of a Python loop per line; return the bytes
        consumed. A request this fast path cannot vouch for (longer than a line may be, a line
        without ``name=``) is left to :meth:`_feed_lines`, which names the problem exactly.

        The result is the same as line by line: ``\n`` and ``=`` are ASCII, which UTF-8 never
        uses inside a multi-byte sequence, so decoding the whole request and then splitting it
        gives the same text, "replace" characters included, as splitting and then decoding.
        """
        start = 0
        while True:
            if buffer.startswith(b"\n", start):
                end = start  # a request with no attributes
            else:
                end = buffer.find(b"\n\n", start)
                if end < 0:
                    return start
                end += 1  # the empty line that ends the request
            # No line of a request this short can be over MAX_LINE_BYTES, nor the request over
            # MAX_REQUEST_BYTES; a longer one goes through the exact line-by-line checks.
            if end + 1 - start > MAX_LINE_BYTES:
                return start
            if end == start:
                attributes: dict[str, str] = {}
            else:
                text = buffer[start : end - 1].decode("utf-8", "replace")
                if text.startswith("=") or "\n=" in text or text.count("\n") >= MAX_ATTRIBUTES:
                    return start
                try:
                    attributes = dict(line.split("=", 1) for line in text.split("\n"))
                except ValueError:  # a line without "="
                    return start
            requests.append(PolicyRequest(attributes))
            start = end + 1

    def _feed_lines(self, buffer: bytearray, requests: list[PolicyRequest]) -> list[PolicyRequest]:
        """Line by line: fragments, CRLF, oversized or malformed input (raises ProtocolError as
        soon as the input can no longer be a valid request, without waiting for its end)."""
        start = 0
        while True:
            end = buffer.find(b"\n", start)
            if end < 0:
                break
            line = bytes(buffer[start:end])
            self._size += end + 1 - start
            start = end + 1
            if line.endswith(b"\r"):  # tolerated for operators typing into telnet/nc
                line = line[:-1]
            if len(line) > MAX_LINE_BYTES:
                raise ProtocolError(f"line longer than {MAX_LINE_BYTES} bytes")
            if self._size > MAX_REQUEST_BYTES:
                raise ProtocolError(f"request longer than {MAX_REQUEST_BYTES} bytes")
            if not line:
                requests.append(PolicyRequest(self._attributes))
                self._attributes = {}
                self._lines = 0
                self._size = 0
                continue
            name, sep, value = line.partition(b"=")
            if not sep or not name:
                raise ProtocolError("line without name=value")
            self._lines += 1
            if self._lines > MAX_ATTRIBUTES:
                raise ProtocolError(f"more than {MAX_ATTRIBUTES} attributes")
            self._attributes[name.decode("utf-8", "replace")] = value.decode("utf-8", "replace")
        if start:
            del buffer[:start]
        if len(buffer) > MAX_LINE_BYTES + 1:  # +1: the "\r" a CRLF line may still bring
            raise ProtocolError(f"line longer than {MAX_LINE_BYTES} bytes")
        if self._size + len(buffer) > MAX_REQUEST_BYTES:
            raise ProtocolError(f"request longer than {MAX_REQUEST_BYTES} bytes")
        return requests


def encode_reply(action: str) -> bytes:
    """The reply for ``action``. A line break can never get in: it would end the reply early
    and smuggle a second one, so CR, LF and NUL become spaces."""
    if "\n" in action or "\r" in action or "\0" in action:
        action = action.replace("\r", " ").replace("\n", " ").replace("\0", " ")
    return b"action=" + action.encode("utf-8", "replace") + b"\n\n"


def encode_request(attributes: dict[str, str]) -> bytes:
    """A request as Postfix writes it (used by ``smtp-whitelist query`` and the tests)."""
    lines = [f"{name}={value}\n" for name, value in attributes.items()]
    return ("".join(lines) + "\n").encode("utf-8")


def parse_reply(data: bytes) -> str | None:
    """The action of a complete reply, or None if ``data`` is not one yet."""
    if not data.endswith(b"\n\n"):
        return None
    first = data.split(b"\n", 1)[0].decode("utf-8", "replace")
    name, _, value = first.partition("=")
    return value if name == "action" else None
