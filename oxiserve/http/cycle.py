"""One request/response exchange: its state, and writing its response (uvicorn's cycle).

The connection makes a fresh :class:`Cycle` for every request and drops it when the
response is out, so nothing of one request leaks into the next.  The cycle keeps no
reference to its connection (no reference loop): the methods that need it are handed
the connection as an :class:`Owner`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from collections.abc import Callable
from typing import Protocol

import h11
import orjson

from oxiserve.http import wire
from oxiserve.http.contracts import Host
from oxiserve.http.heads import Head, Probe
from oxiserve.http.messages import (
    Headers,
    HTTPError,
    Request,
    ResetConnection,
    Response,
    StreamResponse,
)
from oxiserve.http.phases import Phase
from oxiserve.http.writer import PIECE, ChunkedWriter

log = logging.getLogger("oxiserve.http")
access_log = logging.getLogger("oxiserve.access")


class Owner(Protocol):
    """What a cycle needs from the connection it runs on."""

    ctx: Host
    transport: asyncio.Transport | None
    phase: Phase

    @property
    def closed(self) -> bool: ...

    @property
    def write_paused(self) -> bool: ...

    def finish_cycle(self, close: bool) -> None: ...


class Cycle:
    """Per-request state: from the first byte of a request until its response is written."""

    __slots__ = (
        "after", "body", "body_size", "data", "fields", "head", "keep_alive", "line", "line_ok",
        "probe", "recalled", "request", "rest", "sent", "started", "status", "task", "writer",
    )  # fmt: skip

    def __init__(self) -> None:
        self.line = b""  # the start of the request until its first line is complete and valid
        self.line_ok = False
        self.head: h11.Request | None = None
        self.fields: dict[str, str] = {}
        self.body: list[bytes] = []
        self.body_size = 0
        self.keep_alive = True
        self.started = 0.0
        self.request: Request | None = None
        self.task: asyncio.Task[None] | None = None
        self.writer: ChunkedWriter | None = None
        self.status = 0
        self.sent = 0
        # A request whose head may be memoized (``heads``): where it ends, how many bytes
        # came after it; if its head was memoized already, that and the bytes it is in; the
        # bytes after it once taken.
        self.probe: Probe | None = None
        self.after = 0
        self.recalled: Head | None = None
        self.data = b""
        self.rest: bytes | None = None

    # -- handlers ----------------------------------------------------------------------

    async def run(
        self, conn: Owner, handler: Callable[[Request], object], request: Request
    ) -> None:
        try:
            response = handler(request)
            if not isinstance(response, Response | StreamResponse):
                response = await response  # type: ignore[misc]
        except asyncio.CancelledError:
            raise
        except ResetConnection:
            if conn.transport is not None:
                reset(conn.transport)
            return
        except Exception as exc:
            response = self.error_response(conn.ctx, exc)
        if isinstance(response, Response):
            self.send(conn, response)
        else:
            await self.stream(conn, response)

    def error_response(self, ctx: Host, exc: Exception) -> Response:
        """A handler's exception as the app renders it; anything unexpected is a logged 500."""
        answer = ctx.error_response(exc)
        if answer is not None:
            status, body, headers = answer
            return Response(body, status, "application/json", headers)
        if isinstance(exc, HTTPError):
            return error(ctx, exc.status, exc.message, exc.code)
        request = self.request
        log.exception(
            "unhandled error in %s %s (request %s)",
            request and request.method, request and request.path, request and request.request_id,
        )  # fmt: skip
        return error(ctx, 500, "The server had an error while processing your request.",
                     "internal_error")  # fmt: skip

    # -- responses ---------------------------------------------------------------------

    def send(self, conn: Owner, response: Response) -> None:
        transport, request, ctx = conn.transport, self.request, conn.ctx
        if transport is None or request is None or conn.phase is Phase.CLOSED:
            return
        close = not self.keep_alive or ctx.closing
        body = response.body
        headers = response.headers
        if ctx.cors is not None:
            headers += ctx.cors.headers(request)
        if ctx.extra_headers:
            headers += ctx.extra_headers
        head = wire.response_head(
            response.status, response.content_type, request.request_id,
            content_length=len(body), headers=headers, close=close,
        )  # fmt: skip
        self.status = response.status
        self.sent = 0 if request.method == "HEAD" else len(body)
        if request.method == "HEAD":
            transport.write(head)
        elif len(body) <= PIECE:
            transport.write(head + body)
        else:  # a large body: out in pieces as the client reads (memory stays bounded)
            writer = self.new_writer(conn, head, chunked=False)
            writer.write(body)
            writer.finish()
            if writer.queued:
                self.task = ctx.loop.create_task(self._complete(conn, writer, close))
                return
            self.writer = None
        conn.finish_cycle(close)

    def new_writer(self, conn: Owner, head: bytes, *, chunked: bool) -> ChunkedWriter:
        assert conn.transport is not None
        ctx = conn.ctx
        self.writer = ChunkedWriter(
            conn.transport, ctx.loop, ctx.config.stream_coalesce_ms / 1000,
            paused=conn.write_paused, head=head, chunked=chunked, budget=ctx.budget,
        )  # fmt: skip
        return self.writer

    async def _complete(self, conn: Owner, writer: ChunkedWriter, close: bool) -> None:
        """Finish a response whose last pieces are still queued in ``writer``."""
        await writer.wait_flushed()
        self.writer = None
        if not conn.closed:
            conn.finish_cycle(close or conn.ctx.closing)

    async def stream(self, conn: Owner, response: StreamResponse) -> None:
        transport, request, ctx = conn.transport, self.request, conn.ctx
        if transport is None or request is None or conn.closed:
            return
        # HTTP/1.0 has no chunked encoding: the body ends when the connection closes.
        chunked = request.http_version == "1.1"
        close = not self.keep_alive or ctx.closing or not chunked
        headers = response.headers
        if ctx.cors is not None:
            headers += ctx.cors.headers(request)
        if ctx.extra_headers:
            headers += ctx.extra_headers
        head = wire.response_head(
            response.status, response.content_type, request.request_id,
            content_length=None if chunked else -1, headers=headers, close=close,
        )  # fmt: skip
        self.status = response.status
        writer = self.new_writer(conn, head, chunked=chunked)
        try:
            if request.method != "HEAD":
                await response.producer(writer)
            if not conn.closed:  # the client may have left while we streamed
                writer.finish(body=request.method != "HEAD")
                await writer.wait_flushed()
        except ResetConnection:
            writer.flush_gathered()  # what was said goes out first, then the reset
            reset(transport)
            return
        except Exception:
            # The head may be out: the only honest signal left is a broken body.
            log.exception("stream failed (request %s)", request.request_id)
            transport.abort()
            return
        finally:
            self.writer = None
            self.sent = writer.sent
        if not conn.closed:
            # Shutdown may have begun while we streamed: then this connection ends here.
            conn.finish_cycle(close or not self.keep_alive or ctx.closing)

    def log_access(self, ctx: Host, status: int) -> None:
        request = self.request
        if request is None or not ctx.access_log:
            return
        ms = max(0.0, ctx.loop.time() - self.started) * 1000
        if ctx.config.access_log_format == "json":
            line: dict[str, object] = {
                "method": request.method, "path": request.path, "status": status,
                "bytes": self.sent, "ms": round(ms, 1), "request_id": request.request_id,
            }  # fmt: skip
            if request.identity:
                line["key"] = request.identity
            access_log.info("%s", orjson.dumps(line).decode())
            return
        access_log.info(
            "%s %s %d %d %.1fms id=%s%s", request.method, request.path, status, self.sent, ms,
            request.request_id, f" key={request.identity}" if request.identity else "",
        )  # fmt: skip


def error(
    ctx: Host, status: int, message: str, code: str | None, headers: Headers = ()
) -> Response:
    """An error response the http layer answers, in the body shape the app hands in."""
    return Response(ctx.render_error(status, message, code), status, "application/json", headers)


def reset(transport: asyncio.BaseTransport) -> None:
    """Close with a TCP reset (RST) once what is buffered is sent: SO_LINGER 0, then close."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.close()
