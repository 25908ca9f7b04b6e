"""One asyncio.Protocol per client connection: h11 parsing, limits, timeouts, flow control.

A fresh ``h11.Connection`` parses each request (bytes left over from the
previous one are carried across), so h11 is used only for what it is best at:
parsing.  Responses are written with hand-built heads (``wire.py``) by the request's
:class:`~oxiserve.http.cycle.Cycle`, which holds everything about that one request.

One request at a time (pipelined requests wait their turn).  The phases and their
moves are data (``phases.TABLE``); this is its rendering (``phases.diagram()``, and a
test keeps the two equal).  A new connection's first IDLE is timed by header_timeout
(it has not earned keep-alive yet)::

    IDLE (deadline: keepalive_timeout)
        --first byte--> HEADERS
        --refused at once (503)--> LINGER
        --close--> CLOSED
    HEADERS (deadline: header_timeout)
        --request head--> BODY
        --a whole request, its head memoized--> HANDLING
        --refused--> LINGER
        --close--> CLOSED
    BODY (deadline: body_timeout)
        --end of message--> HANDLING
        --refused--> LINGER
        --close--> CLOSED
    HANDLING (deadline: none)
        --answered, keep-alive--> IDLE
        --answered, pipelined bytes waiting--> HEADERS
        --answered, but the client is not reading--> STALLED
        --close--> CLOSED
    STALLED (deadline: none)
        --client reads again--> IDLE
        --client reads again, bytes waiting--> HEADERS
        --close--> CLOSED
    LINGER (deadline: 1.0 s)
        --linger over--> CLOSED
    CLOSED (deadline: none)
        --closed again--> CLOSED

``close`` is an error, a timeout, shutdown or the client leaving; write_timeout (a client
reading nothing of what we send) is watched in every phase.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from typing import cast

import h11

from oxiserve.http import wire
from oxiserve.http.checks import (
    Rejected,
    check_framing,
    check_request_line,
    check_trailers,
    client_request_id,
    error_code,
    origin_form,
    read_fields,
    wants_keep_alive,
)
from oxiserve.http.contracts import Host
from oxiserve.http.cycle import Cycle, error
from oxiserve.http.heads import Head, Probe, probe
from oxiserve.http.messages import AnyResponse, Request, Response
from oxiserve.http.phases import Phase, PhaseError
from oxiserve.http.router import Match, MethodMismatch
from oxiserve.http.writer import ChunkedWriter

log = logging.getLogger("oxiserve.http")

_BACKLOG_LIMIT = 256 * 1024  # pipelined bytes buffered while a request is handled


class Connection(asyncio.Protocol):
    def __init__(self, ctx: Host) -> None:
        self.ctx = ctx
        self.transport: asyncio.Transport | None = None
        self.peer = ""  # the client's address, for the app's per-client checks
        self._moves = ctx.phase_moves
        self._clock = ctx.loop.time
        self.phase = Phase.IDLE
        self.deadline = self._clock() + ctx.config.header_timeout
        self._parser: h11.Connection | None = None  # made when a request needs parsing
        self._cycle = Cycle()
        self._backlog = bytearray()
        self._reading_paused = False
        self._write_paused = False
        self._paused_at = 0.0
        self._in_parse = False

    def _enter(self, phase: Phase) -> None:
        """Move to ``phase`` and start its deadline; a move the table lacks is a bug."""
        try:
            seconds = self._moves[self.phase][phase]
        except KeyError:
            raise PhaseError(self.phase, phase) from None
        self.phase = phase
        self.deadline = math.inf if seconds is None else self._clock() + seconds

    # -- asyncio.Protocol --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Used through the documented Transport methods only: uvloop's transports implement
        # them without subclassing asyncio.Transport.
        self.transport = transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and peer:
            self.peer = str(peer[0])
        if not self.ctx.admit(self):
            self._reject_now(503, "The server has too many open connections; retry later.")
            self._close()
            return
        transport.set_write_buffer_limits(high=self.ctx.config.write_buffer_limit)

    def data_received(self, data: bytes) -> None:
        phase = self.phase
        if phase is Phase.HANDLING or phase is Phase.STALLED:
            self._backlog += data
            if len(self._backlog) > _BACKLOG_LIMIT and not self._reading_paused:
                self._reading_paused = True
                assert self.transport is not None
                self.transport.pause_reading()
            return
        if phase is Phase.LINGER or phase is Phase.CLOSED:
            return
        if phase is Phase.IDLE:
            self._enter(Phase.HEADERS)
        if self._feed(data):
            self._parse()

    def _feed(self, data: bytes) -> bool:
        """Hand bytes to h11 (True: there is something to parse).

        Until a request's first line is complete it is kept here: empty lines before it are
        dropped (RFC 9112 section 2.2), and a line h11 would wait on forever (an HTTP/0.9
        ``GET /``) is answered at once.
        """
        cycle = self._cycle
        if cycle.line_ok:
            self._parser_for().receive_data(data)
            return True
        if not cycle.line and self._recall(cycle, data):
            return True
        start = (cycle.line + data).lstrip(b"\r\n")
        limit = self.ctx.config.max_header_bytes
        try:
            complete = check_request_line(start[:limit])
        except Rejected as exc:
            self._reject_now(exc.status, exc.message)
            return False
        if not complete and len(start) <= limit:
            cycle.line = start
            return False
        cycle.line, cycle.line_ok = b"", True  # h11 judges the rest (and an overlong line)
        self._parser_for().receive_data(start)
        return True

    def _parser_for(self) -> h11.Connection:
        parser = self._parser
        if parser is None:
            parser = self._parser = self.ctx.new_parser()
        return parser

    def _recall(self, cycle: Cycle, data: bytes) -> bool:
        """Whether ``data`` starts with a whole request whose head is memoized (``heads``):
        then ``_parse`` takes it without h11.  Otherwise, when it holds a whole request, the
        probe stays with the cycle so that h11's parse of it can be memoized."""
        memo = self.ctx.heads
        found = probe(data, memo.max_head)
        if found is None or len(data) < found.end:
            return False
        cycle.probe, cycle.after = found, len(data) - found.end
        head = memo.get(found.key)
        if head is None or found.length > self.ctx.config.max_body_bytes:
            return False
        cycle.recalled, cycle.data = head, data
        return True

    def eof_received(self) -> bool:
        # A client that closes its side while we work on its request has given up on it
        # (HTTP clients do not half-close to wait for an answer): stop working for it.
        # Requests answered synchronously were answered before this was called.
        task = self._cycle.task
        if task is not None and not task.done():
            task.cancel()
        if self.phase is Phase.HEADERS or self.phase is Phase.BODY:
            self._parser_for().receive_data(b"")
            self._parse()
        self._close()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._enter(Phase.CLOSED)
        self.ctx.release(self)
        cycle = self._cycle
        if cycle.request is not None:
            # The client left before its answer was complete (nginx's 499), streamed or not.
            if cycle.writer is not None:  # what reached the transport, not what waited
                cycle.sent = cycle.writer.sent - cycle.writer.queued
            cycle.log_access(self.ctx, 499)
            cycle.request = None
        if cycle.writer is not None:
            cycle.writer.lost()
        if cycle.task is not None and not cycle.task.done():
            cycle.task.cancel()

    def pause_writing(self) -> None:
        self._write_paused = True
        self._paused_at = self.ctx.loop.time()
        if self._cycle.writer is not None:
            self._cycle.writer.flow(paused=True)

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._cycle.writer is not None:
            self._cycle.writer.flow(paused=False)
        if self.phase is Phase.STALLED:
            pending, self._backlog = bytes(self._backlog), bytearray()
            self._continue(pending)

    # -- parsing ---------------------------------------------------------------------

    def _parse(self) -> None:
        self._in_parse = True
        try:
            while self.phase is Phase.HEADERS or self.phase is Phase.BODY:
                recalled = self._cycle.recalled
                if recalled is not None:
                    self._take(self._cycle, recalled)
                    continue
                event = self._parser_for().next_event()
                kind = type(event)
                if kind is h11.Request:
                    self._on_head(event)  # type: ignore[arg-type]
                elif kind is h11.Data:
                    self._on_body(event.data)  # type: ignore[union-attr]
                elif kind is h11.EndOfMessage:
                    self._on_end(event)  # type: ignore[arg-type]
                elif kind is h11.ConnectionClosed:
                    self._close()
                else:  # NEED_DATA (PAUSED cannot happen: we stop at EndOfMessage)
                    return
        except h11.RemoteProtocolError as exc:
            self._reject_now(exc.error_status_hint, f"Malformed HTTP request: {str(exc)[:200]}")
        except Rejected as exc:
            self._reject_now(exc.status, exc.message)
        finally:
            self._in_parse = False

    def _on_head(self, head: h11.Request) -> None:
        config, cycle = self.ctx.config, self._cycle
        fields = cycle.fields = read_fields(head, config)
        check_framing(head, fields, config)
        cycle.head = head
        cycle.keep_alive = wants_keep_alive(head, fields)
        self._enter(Phase.BODY)
        cycle.started = self.deadline - config.body_timeout  # when BODY began: one clock read
        if self._parser_for().they_are_waiting_for_100_continue and self.transport is not None:
            self.transport.write(wire.CONTINUE)

    def _on_body(self, data: bytes | bytearray) -> None:
        cycle = self._cycle
        cycle.body_size += len(data)
        if cycle.body_size > self.ctx.config.max_body_bytes:
            raise Rejected(
                413, f"Request body too large (limit {self.ctx.config.max_body_bytes} bytes)."
            )
        cycle.body.append(bytes(data))

    def _on_end(self, end: h11.EndOfMessage) -> None:
        check_trailers(end)
        cycle = self._cycle
        head = cycle.head
        assert head is not None
        self._enter(Phase.HANDLING)
        target = origin_form(head.target).decode("latin-1")
        path, _, query = target.partition("?")
        headers = cycle.fields
        request_id = client_request_id(headers) or self.ctx.new_id()
        pieces = cycle.body
        body = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        request = cycle.request = Request(
            head.method.decode("ascii"), path, query, headers, body, request_id,
            head.http_version.decode("ascii"), client=self.peer,
        )  # fmt: skip
        if cycle.probe is not None:
            self._memoize(cycle, cycle.probe, request)
        self._dispatch(cycle, request)

    def _memoize(self, cycle: Cycle, found: Probe, request: Request) -> None:
        """Keep what h11 and the checks made of this head, if h11 read exactly the head and
        body ``found`` describes (see ``heads``)."""
        fields = cycle.fields
        assert self._parser is not None
        leftover, _ = self._parser.trailing_data
        if (
            len(leftover) != cycle.after
            or cycle.body_size != max(found.length, 0)
            or fields.get("content-length") != (found.digits or None)
            or "transfer-encoding" in fields
            or "expect" in fields
        ):
            return
        # The memo keeps a copy of the fields: the handler gets ``fields`` itself.
        self.ctx.heads.put(found.key, Head(
            request.method, request.path, request.query_string, request.http_version,
            dict(fields), cycle.keep_alive, client_request_id(fields),
        ))  # fmt: skip

    def _take(self, cycle: Cycle, head: Head) -> None:
        """A request whose head h11 parsed before, all of it in ``cycle.data``."""
        found, data = cycle.probe, cycle.data
        assert found is not None
        cycle.recalled, cycle.data = None, b""
        fields = dict(head.fields)
        if found.length >= 0:
            fields["content-length"] = found.digits
        end = found.end
        cycle.fields, cycle.keep_alive, cycle.rest = fields, head.keep_alive, data[end:]
        self._enter(Phase.HANDLING)
        cycle.started = self._clock()
        request = cycle.request = Request(
            head.method, head.path, head.query, fields, data[found.head_end : end],
            head.request_id or self.ctx.new_id(), head.http_version, client=self.peer,
        )  # fmt: skip
        self._dispatch(cycle, request)

    # -- dispatch ----------------------------------------------------------------------

    def _dispatch(self, cycle: Cycle, request: Request) -> None:
        ctx = self.ctx
        if request.path == "*":  # OPTIONS * (the only method check_framing lets through)
            cycle.send(self, Response(b"", headers=(("allow", ctx.allow_all),)))
            return
        root = ctx.config.root_path
        if (
            root
            and request.path.startswith(root)
            and request.path[len(root) : len(root) + 1] in ("/", "")
        ):  # served under a prefix: route what follows it
            request.path = request.path[len(root) :] or "/"
        route = ctx.router.match(request.method, request.path)
        if ctx.cors is not None and request.method == "OPTIONS" and route is not None:
            methods = route.allow if isinstance(route, MethodMismatch) else ("OPTIONS",)
            preflight = ctx.cors.preflight(request, methods)
            if preflight is not None:
                cycle.send(self, preflight)
                return
        if isinstance(route, Match):
            request.params = route.params
            endpoint = route.endpoint
            if endpoint.is_async:
                cycle.task = ctx.loop.create_task(cycle.run(self, endpoint.handler, request))
                return
            try:
                response: AnyResponse = endpoint.handler(request)  # type: ignore[assignment]
            except Exception as exc:
                response = cycle.error_response(ctx, exc)
            if type(response) is Response:
                cycle.send(self, response)
            else:
                cycle.task = ctx.loop.create_task(cycle.run(self, lambda _r: response, request))
        elif route is None:
            message = f"No route for {request.method} {request.path}."
            cycle.send(self, error(ctx, 404, message, "not_found"))
        else:
            allow = ", ".join(route.allow)
            message = f"Method {request.method} not allowed; allowed: {allow}."
            cycle.send(self, error(ctx, 405, message, "method_not_allowed", (("allow", allow),)))

    # -- between requests --------------------------------------------------------------

    def finish_cycle(self, close: bool) -> None:
        """The response is out: log it, start a fresh cycle, go on with what is pending."""
        cycle = self._cycle
        cycle.log_access(self.ctx, cycle.status)
        self._cycle = Cycle()
        if cycle.rest is not None:  # taken from the memo: h11 saw none of it
            leftover = cycle.rest
        else:
            assert self._parser is not None
            leftover, _ = self._parser.trailing_data
        pending = leftover + bytes(self._backlog) if self._backlog else leftover
        if close:
            self._close()
            return
        self._backlog = bytearray()
        if self._write_paused:
            # The client is not reading what we send: answer nothing more until it does,
            # so pipelined requests cannot pile responses up in our write buffer.
            self._enter(Phase.STALLED)
            self._backlog += pending
            return
        self._continue(pending)

    def _continue(self, pending: bytes) -> None:
        """Start the next request with the bytes already received."""
        self._parser = None
        if self._reading_paused and self.transport is not None:
            self._reading_paused = False
            self.transport.resume_reading()
        if not pending:
            self._enter(Phase.IDLE)
            return
        # Pipelined bytes: parse them now.  Inside _parse, its loop picks them up
        # (no recursion, however many requests arrived in one packet).
        self._enter(Phase.HEADERS)
        if self._feed(pending) and not self._in_parse:
            self._parse()

    # -- errors, timeouts, closing -------------------------------------------------------

    def _reject_now(self, status: int, message: str) -> None:
        """Answer a protocol-level error and close; nothing after it is parsed."""
        transport = self.transport
        if transport is None or self.phase is Phase.CLOSED:
            return
        body = self.ctx.render_error(status, message, error_code(status))
        cycle = self._cycle
        request_id = client_request_id(cycle.fields) or self.ctx.new_id()
        transport.write(
            wire.response_head(status, "application/json", request_id,
                               content_length=len(body), close=True) + body
        )  # fmt: skip
        cycle.status, cycle.sent = status, len(body)
        log.info("rejected connection request: %d %s", status, message)
        # Linger: stop reading requests, but keep draining input for a moment so the
        # client is not reset before it reads the error.
        self._enter(Phase.LINGER)
        # The client may be gone already (a reset while this was written): nothing to raise.
        with contextlib.suppress(OSError, RuntimeError):
            if transport.can_write_eof():
                transport.write_eof()

    def check_timeout(self, now: float) -> None:
        """Called by the server's sweep; closes connections past their deadline."""
        if self._write_paused and now - self._paused_at > self.ctx.config.write_timeout:
            log.info("dropping a client that read nothing for %.0fs", now - self._paused_at)
            self._enter(Phase.CLOSED)
            self.abort()
            return
        # HANDLING, STALLED (write_timeout rules) and CLOSED have no deadline: math.inf.
        if now < self.deadline:
            return
        if self.phase is Phase.HEADERS or self.phase is Phase.BODY:
            self._reject_now(408, "Timed out reading the request.")
        self._close()

    def shutdown(self) -> None:
        """Server shutdown: idle connections close now, busy ones after their response."""
        if self.phase is not Phase.HANDLING:
            self._close()
        else:
            self._cycle.keep_alive = False

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def _close(self) -> None:
        self._enter(Phase.CLOSED)
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    @property
    def closed(self) -> bool:
        return self.phase is Phase.CLOSED

    @property
    def write_paused(self) -> bool:
        return self._write_paused

    @property
    def buffered(self) -> int:
        return self.transport.get_write_buffer_size() if self.transport else 0


__all__ = ["AnyResponse", "ChunkedWriter", "Connection", "Phase", "PhaseError"]
