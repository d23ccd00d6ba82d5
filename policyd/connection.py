"""One policy connection: read requests, answer them in order, enforce its limits and timers."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import TYPE_CHECKING, cast

from policyd.protocol import PolicyRequest, ProtocolError, RequestParser, encode_reply

if TYPE_CHECKING:
    from policyd.server import PolicyServer

log = logging.getLogger("policyd.server")

# Requests read ahead on one connection before we stop reading from it. Postfix sends one
# request and waits for the answer, so more than a few queued means a client that does not.
MAX_QUEUED_REQUESTS = 8
# Unsent reply bytes on one connection before we stop reading from it (a peer that does not
# read its answers must not make us buffer without bound).
WRITE_BUFFER_HIGH = 64 * 1024


class PolicyConnection(asyncio.Protocol):
    """One client connection: reads requests, answers each in order."""

    def __init__(self, server: PolicyServer) -> None:
        self.server = server
        self.parser = RequestParser()
        self.queue: deque[PolicyRequest] = deque()
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.deciding = False  # a decision is out (waiting for Redis); later ones queue
        self.timer: asyncio.TimerHandle | None = None
        self.timing_request = False  # the timer is REQUEST_TIMEOUT's, armed at a first byte
        self.reading_paused = False
        self.writing_paused = False
        self.closing = False

    # -- asyncio callbacks -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its interface.
        self.transport = transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "unix"
        if not self.server.admit(self):
            self.closing = True
            transport.abort()
            return
        transport.set_write_buffer_limits(high=WRITE_BUFFER_HIGH)
        self._arm_timer()

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        try:
            requests = self.parser.feed(data)
        except ProtocolError as error:
            # SMTPD_POLICY_README: in trouble, send no reply, log, and disconnect.
            log.warning("malformed policy request from %s: %s; closing", self.peer, error)
            self._close(abort=True)
            return
        if requests:
            self.queue.extend(requests)
            if len(self.queue) >= MAX_QUEUED_REQUESTS:
                self._pause_reading()
            if not self.deciding:
                self._answer_queued()
                return  # it arms the timer when done
        # REQUEST_TIMEOUT runs from a request's first byte: more bytes of the same request must
        # not restart it, or a client trickling one byte at a time would never time out.
        if requests or not self.timing_request:
            self._arm_timer()

    def eof_received(self) -> bool:
        # Half-close: answer what was asked, then close (return False closes after writes).
        if not self.deciding:
            return False
        self.closing = True
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        if self.timer is not None:
            self.timer.cancel()
        self.queue.clear()  # a decision out still completes (it may have counted), unanswered
        self.server.forget(self)

    def pause_writing(self) -> None:
        self.writing_paused = True
        self._pause_reading()

    def resume_writing(self) -> None:
        self.writing_paused = False
        self._resume_reading()

    # -- work ---------------------------------------------------------------------------------

    def _answer_queued(self) -> None:
        """Answer the queued requests in order, from here while each is answered at once, and
        from :meth:`_answered` once one had to wait for Redis (no task per request)."""
        answer = self.server.answer
        queue = self.queue
        while queue:
            if self.transport is None or self.transport.is_closing():
                return  # closed meanwhile: nobody to answer
            request = queue.popleft()
            if len(queue) < MAX_QUEUED_REQUESTS // 2:
                self._resume_reading()
            self.deciding = True
            try:
                action = answer(request, self._answered)
            except Exception:
                # A bug, not a protocol or store problem: no reply (Postfix retries and then
                # applies its default action), and the traceback goes to the log only.
                log.exception("policy decision failed for %s; closing", self.peer)
                self._close(abort=True)
                return
            if action is None:
                return  # waiting for Redis: _answered goes on
            self.deciding = False
            self._write(action)
        self._idle()

    def _answered(self, action: str | None) -> None:
        """A decision that waited for Redis is made: answer it, then what queued meanwhile."""
        self.deciding = False
        if action is None:  # the decision failed, logged: no reply
            self._close(abort=True)
            return
        if self.transport is None or self.transport.is_closing():
            return
        self._write(action)
        self._answer_queued()

    def _write(self, action: str) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(encode_reply(action))

    def _idle(self) -> None:
        """Nothing left to answer: close if asked to, else wait for the next request."""
        if self.closing or self.server.draining:
            self._close(abort=False)
        else:
            self._arm_timer()

    def _arm_timer(self) -> None:
        """One timer: REQUEST_TIMEOUT while a request is arriving, IDLE_TIMEOUT between them."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.timing_request = False
        if self.deciding or self.closing:
            return  # a decision is in flight: its own timeout (STORE_TIMEOUT) bounds it
        limits = self.server.limits
        if self.parser.pending:
            delay, why = limits.request_timeout, "request not completed"
            self.timing_request = True
        else:
            delay, why = limits.idle_timeout, "idle"
        self.timer = asyncio.get_running_loop().call_later(delay, self._expire, why, delay)

    def _expire(self, why: str, delay: float) -> None:
        self.timer = None
        self.timing_request = False
        if why == "idle":
            log.debug("closing idle policy connection from %s after %.0fs", self.peer, delay)
        else:
            log.warning("policy client %s: %s within %.0fs; closing", self.peer, why, delay)
        self._close(abort=True)

    def _pause_reading(self) -> None:
        if not self.reading_paused and self.transport is not None:
            self.reading_paused = True
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if self.reading_paused and not self.writing_paused and self.transport is not None:
            self.reading_paused = False
            self.transport.resume_reading()

    def _close(self, *, abort: bool) -> None:
        self.closing = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.transport is not None and not self.transport.is_closing():
            if abort:
                self.transport.abort()
            else:
                self.transport.close()

    def shutdown(self) -> None:
        """Server stopping: close now if nothing is in flight, else after the answers."""
        if not self.deciding:
            self._close(abort=False)
