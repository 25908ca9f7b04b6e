"""One asyncio.Protocol per client connection: h11 parsing, limits, timeouts, flow control.

A fresh ``h11.Connection`` parses each request (bytes left over from the
previous one are carried across), so h11 is used only for what it is best at:
parsing.  Responses are written with hand-built heads (``wire.py``).

Life of a connection, one request at a time (pipelined requests wait their turn)::

    IDLE --first byte--> HEADERS --Request--> BODY --EndOfMessage--> HANDLING
      ^                                                                  |
      +------------------------- response written, keep-alive ----------+
    any phase --error/timeout/close--> CLOSED
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

import h11

from oxiserve.errors import APIError, MethodNotAllowed, NotFound, ServerError, error_for_status
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
from oxiserve.http.messages import AnyResponse, Request, Response, StreamResponse
from oxiserve.http.router import Match, MethodMismatch
from oxiserve.http.writer import PIECE, ChunkedWriter

if TYPE_CHECKING:
    from oxiserve.http.context import ServerContext

log = logging.getLogger("oxiserve.http")
access_log = logging.getLogger("oxiserve.access")

_BACKLOG_LIMIT = 256 * 1024  # pipelined bytes buffered while a request is handled


class Phase(enum.Enum):
    IDLE = "idle"  # waiting for the first byte of a request
    HEADERS = "headers"
    BODY = "body"
    HANDLING = "handling"  # handler running or response being written
    LINGER = "linger"  # error sent; discarding input briefly so the client reads it
    CLOSED = "closed"


class Connection(asyncio.Protocol):
    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx
        self.transport: asyncio.Transport | None = None
        self.phase = Phase.IDLE
        self.deadline = ctx.loop.time() + ctx.config.header_timeout
        self._parser = ctx.new_parser()
        self._backlog = bytearray()
        self._reading_paused = False
        self._head: h11.Request | None = None
        self._body: list[bytes] = []
        self._body_size = 0
        self._keep_alive = True
        self._started = 0.0
        self._request: Request | None = None
        self._task: asyncio.Task[None] | None = None
        self._writer: ChunkedWriter | None = None
        self._write_paused = False
        self._status = 0
        self._sent = 0
        self._in_parse = False
        self._stalled = False  # the client is not reading our answers: parse nothing more
        self._paused_at = 0.0
        self._fields: dict[str, str] = {}
        self._line = b""  # the start of a request until its first line is complete and valid
        self._line_ok = False

    # -- asyncio.Protocol --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Used through the documented Transport methods only: uvloop's transports implement
        # them without subclassing asyncio.Transport.
        self.transport = transport = cast(asyncio.Transport, transport)
        if not self.ctx.admit(self):
            self._reject_now(503, "The server has too many open connections; retry later.")
            self._close()
            return
        transport.set_write_buffer_limits(high=self.ctx.config.write_buffer_limit)

    def data_received(self, data: bytes) -> None:
        phase = self.phase
        if phase is Phase.HANDLING or self._stalled:
            self._backlog += data
            if len(self._backlog) > _BACKLOG_LIMIT and not self._reading_paused:
                self._reading_paused = True
                assert self.transport is not None
                self.transport.pause_reading()
            return
        if phase is Phase.LINGER or phase is Phase.CLOSED:
            return
        if phase is Phase.IDLE:
            self.phase = Phase.HEADERS
            self.deadline = self.ctx.loop.time() + self.ctx.config.header_timeout
        if self._feed(data):
            self._parse()

    def _feed(self, data: bytes) -> bool:
        """Hand bytes to h11 (True: there is something to parse).

        Until a request's first line is complete it is kept here: empty lines before it are
        dropped (RFC 9112 section 2.2), and a line h11 would wait on forever (an HTTP/0.9
        ``GET /``) is answered at once.
        """
        if self._line_ok:
            self._parser.receive_data(data)
            return True
        start = (self._line + data).lstrip(b"\r\n")
        limit = self.ctx.config.max_header_bytes
        try:
            complete = check_request_line(start[:limit])
        except Rejected as exc:
            self._reject_now(exc.status, exc.message)
            return False
        if not complete and len(start) <= limit:
            self._line = start
            return False
        self._line, self._line_ok = b"", True  # h11 judges the rest (and an overlong line)
        self._parser.receive_data(start)
        return True

    def eof_received(self) -> bool:
        # A client that closes its side while we work on its request has given up on it
        # (HTTP clients do not half-close to wait for an answer): stop working for it.
        # Requests answered synchronously were answered before this was called.
        if self._task is not None and not self._task.done():
            self._task.cancel()
        if self.phase in (Phase.HEADERS, Phase.BODY):
            self._parser.receive_data(b"")
            self._parse()
        self._close()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.phase = Phase.CLOSED
        self.ctx.release(self)
        if self._request is not None:
            # The client left before its answer was complete (nginx's 499), streamed or not.
            if self._writer is not None:  # what reached the transport, not what waited
                self._sent = self._writer.sent - self._writer.queued
            self._log_access(499)
            self._request = None
        if self._writer is not None:
            self._writer.lost()
        if self._task is not None and not self._task.done():
            self._task.cancel()

    def pause_writing(self) -> None:
        self._write_paused = True
        self._paused_at = self.ctx.loop.time()
        if self._writer is not None:
            self._writer.flow(paused=True)

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._writer is not None:
            self._writer.flow(paused=False)
        if self._stalled and self.phase is Phase.IDLE:
            self._stalled = False
            pending, self._backlog = bytes(self._backlog), bytearray()
            self._continue(pending)

    # -- parsing ---------------------------------------------------------------------

    def _parse(self) -> None:
        self._in_parse = True
        try:
            while self.phase is Phase.HEADERS or self.phase is Phase.BODY:
                event = self._parser.next_event()
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
        config = self.ctx.config
        fields = self._fields = read_fields(head, config)
        check_framing(head, fields, config)
        self._head = head
        self._started = self.ctx.loop.time()
        self._keep_alive = wants_keep_alive(head, fields)
        self.phase = Phase.BODY
        self.deadline = self._started + config.body_timeout
        if self._parser.they_are_waiting_for_100_continue and self.transport is not None:
            self.transport.write(wire.CONTINUE)

    def _on_body(self, data: bytes | bytearray) -> None:
        self._body_size += len(data)
        if self._body_size > self.ctx.config.max_body_bytes:
            raise Rejected(
                413, f"Request body too large (limit {self.ctx.config.max_body_bytes} bytes)."
            )
        self._body.append(bytes(data))

    def _on_end(self, end: h11.EndOfMessage) -> None:
        check_trailers(end)
        head = self._head
        assert head is not None
        self.phase = Phase.HANDLING
        target = origin_form(head.target).decode("latin-1")
        path, _, query = target.partition("?")
        headers = self._fields
        request_id = client_request_id(headers) or self.ctx.new_id()
        body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        self._body = []
        self._body_size = 0
        request = Request(
            head.method.decode("ascii"), path, query, headers, body, request_id,
            head.http_version.decode("ascii"),
        )  # fmt: skip
        self._request = request
        self._dispatch(request)

    # -- dispatch and responses --------------------------------------------------------

    def _dispatch(self, request: Request) -> None:
        if request.path == "*":  # OPTIONS * (the only method check_framing lets through)
            self._send(Response(b"", headers=(("allow", self.ctx.allow_all),)))
            return
        route = self.ctx.router.match(request.method, request.path)
        if self.ctx.cors is not None and request.method == "OPTIONS" and route is not None:
            methods = route.allow if isinstance(route, MethodMismatch) else ("OPTIONS",)
            preflight = self.ctx.cors.preflight(request, methods)
            if preflight is not None:
                self._send(preflight)
                return
        if isinstance(route, Match):
            request.params = route.params
            if route.endpoint.is_async:
                self._task = self.ctx.loop.create_task(self._run(route.endpoint.handler, request))
                return
            try:
                response = route.endpoint.handler(request)
            except Exception as exc:
                response = self._error_response(exc)
            if type(response) is Response:
                self._send(response)
            else:
                self._task = self.ctx.loop.create_task(self._run(lambda _r: response, request))
        elif route is None:
            self._send(_error(NotFound(f"No route for {request.method} {request.path}.")))
        else:
            allow = ", ".join(route.allow)
            error = MethodNotAllowed(f"Method {request.method} not allowed; allowed: {allow}.")
            error.headers = (("allow", allow),)
            self._send(_error(error))

    async def _run(self, handler: Callable[[Request], object], request: Request) -> None:
        try:
            response = handler(request)
            if not isinstance(response, Response | StreamResponse):
                response = await response  # type: ignore[misc]
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            response = self._error_response(exc)
        if isinstance(response, Response):
            self._send(response)
        else:
            await self._stream(response)

    def _error_response(self, exc: Exception) -> Response:
        if isinstance(exc, APIError):
            return _error(exc)
        request = self._request
        log.exception(
            "unhandled error in %s %s (request %s)",
            request and request.method, request and request.path, request and request.request_id,
        )  # fmt: skip
        return _error(ServerError("The server had an error while processing your request."))

    def _send(self, response: Response) -> None:
        transport, request = self.transport, self._request
        if transport is None or request is None or self.phase is Phase.CLOSED:
            return
        close = not self._keep_alive or self.ctx.closing
        body = response.body
        headers = response.headers
        if self.ctx.cors is not None:
            headers += self.ctx.cors.headers(request)
        head = wire.response_head(
            response.status, response.content_type, request.request_id,
            content_length=len(body), headers=headers, close=close,
        )  # fmt: skip
        self._status = response.status
        self._sent = 0 if request.method == "HEAD" else len(body)
        if request.method == "HEAD":
            transport.write(head)
        elif len(body) <= PIECE:
            transport.write(head + body)
        else:  # a large body: out in pieces as the client reads (memory stays bounded)
            writer = self._new_writer(head, chunked=False)
            writer.write(body)
            writer.finish()
            if writer.queued:
                self._task = self.ctx.loop.create_task(self._complete(writer, close))
                return
            self._writer = None
        self._finish_cycle(close)

    def _new_writer(self, head: bytes, *, chunked: bool) -> ChunkedWriter:
        assert self.transport is not None
        self._writer = ChunkedWriter(
            self.transport, self.ctx.loop, self.ctx.config.stream_coalesce_ms / 1000,
            paused=self._write_paused, head=head, chunked=chunked, budget=self.ctx.budget,
        )  # fmt: skip
        return self._writer

    async def _complete(self, writer: ChunkedWriter, close: bool) -> None:
        """Finish a response whose last pieces are still queued in ``writer``."""
        await writer.wait_flushed()
        self._writer = None
        if not self.closed:
            self._finish_cycle(close or self.ctx.closing)

    async def _stream(self, response: StreamResponse) -> None:
        transport, request = self.transport, self._request
        if transport is None or request is None or self.phase is Phase.CLOSED:
            return
        # HTTP/1.0 has no chunked encoding: the body ends when the connection closes.
        chunked = request.http_version == "1.1"
        close = not self._keep_alive or self.ctx.closing or not chunked
        headers = response.headers
        if self.ctx.cors is not None:
            headers += self.ctx.cors.headers(request)
        head = wire.response_head(
            response.status, response.content_type, request.request_id,
            content_length=None if chunked else -1, headers=headers, close=close,
        )  # fmt: skip
        self._status = response.status
        writer = self._new_writer(head, chunked=chunked)
        try:
            if request.method != "HEAD":
                await response.producer(writer)
            if not self.closed:  # the client may have left while we streamed
                writer.finish(body=request.method != "HEAD")
                await writer.wait_flushed()
        except Exception:
            # The head may be out: the only honest signal left is a broken body.
            log.exception("stream failed (request %s)", request.request_id)
            transport.abort()
            return
        finally:
            self._writer = None
            self._sent = writer.sent
        if not self.closed:
            # Shutdown may have begun while we streamed: then this connection ends here.
            self._finish_cycle(close or not self._keep_alive or self.ctx.closing)

    def _log_access(self, status: int) -> None:
        request = self._request
        if request is not None and self.ctx.access_log:
            access_log.info(
                '%s %s %d %d %.1fms id=%s', request.method, request.path, status,
                self._sent, (self.ctx.loop.time() - self._started) * 1000, request.request_id,
            )  # fmt: skip

    def _finish_cycle(self, close: bool) -> None:
        self._log_access(self._status)
        self._request = None
        self._fields = {}
        self._task = None
        leftover, _ = self._parser.trailing_data
        pending = leftover + bytes(self._backlog) if self._backlog else leftover
        if close:
            self._close()
            return
        self._backlog = bytearray()
        self.phase = Phase.IDLE
        self.deadline = self.ctx.loop.time() + self.ctx.config.keepalive_timeout
        if self._write_paused:
            # The client is not reading what we send: answer nothing more until it does,
            # so pipelined requests cannot pile responses up in our write buffer.
            self._stalled = True
            self._backlog += pending
            return
        self._continue(pending)

    def _continue(self, pending: bytes) -> None:
        """Start the next request cycle with the bytes already received."""
        self._parser = self.ctx.new_parser()
        self._line, self._line_ok = b"", False
        if self._reading_paused and self.transport is not None:
            self._reading_paused = False
            self.transport.resume_reading()
        if not pending:
            self.phase = Phase.IDLE
            self.deadline = self.ctx.loop.time() + self.ctx.config.keepalive_timeout
            return
        # Pipelined bytes: parse them now.  Inside _parse, its loop picks them up
        # (no recursion, however many requests arrived in one packet).
        self.phase = Phase.HEADERS
        self.deadline = self.ctx.loop.time() + self.ctx.config.header_timeout
        if self._feed(pending) and not self._in_parse:
            self._parse()

    # -- errors, timeouts, closing -------------------------------------------------------

    def _reject_now(self, status: int, message: str) -> None:
        """Answer a protocol-level error and close; nothing after it is parsed."""
        transport = self.transport
        if transport is None or self.phase is Phase.CLOSED:
            return
        error = error_for_status(status, message, code=error_code(status))
        body = error.encode()
        request_id = client_request_id(self._fields) or self.ctx.new_id()
        transport.write(
            wire.response_head(status, "application/json", request_id,
                               content_length=len(body), close=True) + body
        )  # fmt: skip
        self._status, self._sent = status, len(body)
        log.info("rejected connection request: %d %s", status, message)
        # Linger: stop reading requests, but keep draining input for a moment so the
        # client is not reset before it reads the error.
        self.phase = Phase.LINGER
        self.deadline = self.ctx.loop.time() + 1.0
        # The client may be gone already (a reset while this was written): nothing to raise.
        with contextlib.suppress(OSError, RuntimeError):
            if transport.can_write_eof():
                transport.write_eof()

    def check_timeout(self, now: float) -> None:
        """Called by the server's sweep; closes connections past their deadline."""
        phase = self.phase
        if self._write_paused and now - self._paused_at > self.ctx.config.write_timeout:
            log.info("dropping a client that read nothing for %.0fs", now - self._paused_at)
            self.phase = Phase.CLOSED
            self.abort()
            return
        if phase is Phase.HANDLING or phase is Phase.CLOSED or now < self.deadline:
            return
        if self._stalled:
            return  # unanswered requests are waiting for the client to read: write_timeout rules
        if phase is Phase.HEADERS or phase is Phase.BODY:
            self._reject_now(408, "Timed out reading the request.")
            self.phase = Phase.CLOSED
        self._close()

    def shutdown(self) -> None:
        """Server shutdown: idle connections close now, busy ones after their response."""
        if self.phase is not Phase.HANDLING:
            self._close()
        else:
            self._keep_alive = False

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def _close(self) -> None:
        self.phase = Phase.CLOSED
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    @property
    def closed(self) -> bool:
        return self.phase is Phase.CLOSED

    @property
    def buffered(self) -> int:
        return self.transport.get_write_buffer_size() if self.transport else 0


def _error(error: APIError) -> Response:
    return Response(error.encode(), error.status, "application/json", error.headers)


__all__ = ["AnyResponse", "ChunkedWriter", "Connection", "Phase"]
