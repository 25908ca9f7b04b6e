"""ChunkedWriter: the BodyWriter of streaming responses (chunk framing, flow state, coalescing).

A socket send costs more than everything else a streamed event costs, so a
busy stream's frames are gathered into one chunk per ``coalesce`` seconds.
A quiet stream is not delayed: its first frames, and any frame after a quiet
spell of ``coalesce`` seconds, are written at once.  Frames the client should
see together (one batch from the ring) arrive in one ``write`` call anyway.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

_IMMEDIATE_FRAMES = 2  # the first frames of a stream (role chunk, first token) never wait
_MAX_GATHER = 16 * 1024  # bytes gathered before writing anyway (bounds one write's size)


class ChunkedWriter:
    __slots__ = (
        "_coalesce", "_immediate", "_loop", "_lost", "_on_pause", "_on_resume", "_paused",
        "_pending", "_pending_size", "_timer", "_transport", "sent",
    )  # fmt: skip

    def __init__(
        self,
        transport: asyncio.Transport,
        loop: asyncio.AbstractEventLoop,
        coalesce: float,
        paused: bool,
    ) -> None:
        self._transport = transport
        self._loop = loop
        self._coalesce = coalesce
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
        self._transport.write(b"%x\r\n%b\r\n" % (len(data), data))
        if self._immediate:
            self._immediate -= 1
        elif self._coalesce > 0:
            self._pending = []
            self._timer = self._loop.call_later(self._coalesce, self._flush)

    def _flush(self) -> None:
        self._timer = None
        if self._paused:
            return  # resume writes what is gathered (then the ring catches up)
        if not self._pending:  # a quiet window: the next frame goes out at once
            self._pending = None
            return
        self._write_pending()
        self._timer = self._loop.call_later(self._coalesce, self._flush)

    def _write_pending(self) -> None:
        pending = self._pending
        if not pending:
            return
        data = pending[0] if len(pending) == 1 else b"".join(pending)
        self._pending = []
        self._pending_size = 0
        if not self._transport.is_closing():
            self._transport.write(b"%x\r\n%b\r\n" % (len(data), data))

    def finish(self) -> None:
        """Write what is gathered and stop gathering (end of the stream)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._write_pending()
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
