"""ChunkedWriter: the BodyWriter of streaming responses (framing, flow state, coalescing).

A socket send costs more than everything else a streamed event costs, so:
- the response head goes out with the first frames, and the last chunk with the last ones;
- a busy stream's frames are gathered into one chunk per ``coalesce`` seconds.  A quiet
  stream is not delayed: its first frames, and any frame after a quiet spell of
  ``coalesce`` seconds, are written at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from oxiserve.http.wire import LAST_CHUNK

_IMMEDIATE_FRAMES = 2  # the first frames of a stream (role chunk, first token) never wait
_MAX_GATHER = 16 * 1024  # bytes gathered before writing anyway (bounds one write's size)


class ChunkedWriter:
    __slots__ = (
        "_chunked", "_coalesce", "_head", "_immediate", "_loop", "_lost", "_on_pause",
        "_on_resume", "_paused", "_pending", "_pending_size", "_timer", "_transport", "sent",
    )  # fmt: skip

    def __init__(
        self,
        transport: asyncio.Transport,
        loop: asyncio.AbstractEventLoop,
        coalesce: float,
        *,
        paused: bool = False,
        head: bytes = b"",
        chunked: bool = True,
    ) -> None:
        self._transport = transport
        self._loop = loop
        self._coalesce = coalesce
        self._head = head  # written with the first bytes of the body
        self._chunked = chunked  # False: HTTP/1.0, the body ends when the connection closes
        self._immediate = _IMMEDIATE_FRAMES
        self._pending: list[bytes] | None = None  # not None: a gathering window is open
        self._pending_size = 0
        self._timer: asyncio.TimerHandle | None = None
        self._paused = paused
        self._lost: asyncio.Future[None] | None = None
        self._on_pause: Callable[[], None] | None = None
        self._on_resume: Callable[[], None] | None = None
        self.sent = 0

    @property
    def paused(self) -> bool:
        return self._paused

    @property
    def closed(self) -> bool:
        return self._transport.is_closing()

    def write(self, data: bytes) -> None:
        if not data:
            return
        self.sent += len(data)
        pending = self._pending
        if pending is not None:
            pending.append(data)
            self._pending_size += len(data)
            if self._pending_size > _MAX_GATHER and not self._paused:
                self._write_pending()
            return
        self._send(data)
        if self._immediate:
            self._immediate -= 1
        elif self._coalesce > 0:
            self._pending = []
            self._timer = self._loop.call_later(self._coalesce, self._flush)

    def _send(self, data: bytes, last: bool = False) -> None:
        if self._chunked:
            framed = b"%x\r\n%b\r\n" % (len(data), data) if data else b""
            if last:
                framed += LAST_CHUNK
        else:
            framed = data
        if self._head:
            framed, self._head = self._head + framed, b""
        if framed and not self._transport.is_closing():
            self._transport.write(framed)

    def _flush(self) -> None:
        self._timer = None
        if self._paused:
            return  # resume writes what is gathered (then the ring catches up)
        if not self._pending:  # a quiet window: the next frame goes out at once
            self._pending = None
            return
        self._write_pending()
        self._timer = self._loop.call_later(self._coalesce, self._flush)

    def _write_pending(self, last: bool = False) -> None:
        pending = self._pending
        data = b"" if not pending else pending[0] if len(pending) == 1 else b"".join(pending)
        if pending is not None:
            self._pending = []
            self._pending_size = 0
        if data or last:
            self._send(data, last)

    def finish(self, *, body: bool = True) -> None:
        """End the response: what is gathered, then the last chunk (just the head if no body)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if body:
            self._write_pending(last=True)
        elif self._head and not self._transport.is_closing():
            self._transport.write(self._head)
            self._head = b""
        self._pending = None

    def set_flow_listener(
        self, on_pause: Callable[[], None] | None, on_resume: Callable[[], None] | None
    ) -> None:
        self._on_pause, self._on_resume = on_pause, on_resume

    async def wait_closed(self) -> None:
        if self._transport.is_closing():
            return
        if self._lost is None:
            self._lost = self._loop.create_future()
        await asyncio.shield(self._lost)

    def flow(self, *, paused: bool) -> None:
        self._paused = paused
        if not paused and self._pending is not None:
            # Gathered frames come before anything the resumed subscriber catches up.
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._write_pending()
            self._pending = None
        listener = self._on_pause if paused else self._on_resume
        if listener is not None:
            listener()

    def lost(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._pending = None
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(None)
