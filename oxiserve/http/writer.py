"""ChunkedWriter: the BodyWriter of streamed and large responses (framing, flow, coalescing).

A socket send costs more than everything else a streamed event costs, so:
- the response head goes out with the first frames, and the last chunk with the last ones;
- a busy stream's frames are gathered into one chunk per ``coalesce`` seconds.  A quiet
  stream is not delayed: its first frames, and any frame more than ``coalesce`` seconds
  after the one before, are written at once, and open no window (a stream paced slower
  than the window, as a GPU's 20 ms tokens are, costs no timer per token).

Memory stays bounded however large a write is: data over ``PIECE`` bytes (a large JSON
body, a stream's catch-up backlog, a long echo) is queued as views of the caller's bytes
and handed to the transport one piece at a time, only while the transport is not paused
and the server-wide :class:`~oxiserve.http.budget.WriteBudget` allows.  While pieces
wait the writer reports itself paused, so a stream's frames wait in its ring meanwhile.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

from oxiserve.http.budget import WriteBudget
from oxiserve.http.wire import LAST_CHUNK

_IMMEDIATE_FRAMES = 2  # the first frames of a stream (role chunk, first token) never wait
_MAX_GATHER = 16 * 1024  # bytes gathered before writing anyway (bounds one write's size)
PIECE = 64 * 1024  # larger writes go out in pieces of this size, under flow control


class ChunkedWriter:
    __slots__ = (
        "_blocked", "_budget", "_chunked", "_coalesce", "_head", "_immediate", "_last",
        "_loop", "_lost", "_on_pause", "_on_resume", "_paused", "_pending", "_pending_size",
        "_queue", "_timer", "_transport", "_waiters", "_waiting_budget", "sent",
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
        budget: WriteBudget | None = None,
    ) -> None:
        self._transport = transport
        self._loop = loop
        self._coalesce = coalesce
        self._head = head  # written with the first bytes of the body
        self._chunked = chunked  # False: the body is framed by content-length or by close
        self._immediate = _IMMEDIATE_FRAMES
        self._pending: list[bytes] | None = None  # not None: a gathering window is open
        self._pending_size = 0
        self._last = -1e9  # when the last frame went out at once
        self._timer: asyncio.TimerHandle | None = None
        self._paused = paused  # the transport's flow control
        self._blocked = paused  # what the stream is told: paused, or pieces still queued
        self._queue: deque[memoryview] = deque()
        self._budget = budget
        self._waiting_budget = False
        self._waiters: list[asyncio.Future[None]] = []
        self._lost = False
        self._on_pause: Callable[[], None] | None = None
        self._on_resume: Callable[[], None] | None = None
        self.sent = 0

    @property
    def paused(self) -> bool:
        return self._blocked

    @property
    def closed(self) -> bool:
        return self._lost or self._transport.is_closing()

    @property
    def queued(self) -> int:
        """Bytes accepted but not yet handed to the transport."""
        return sum(len(view) for view in self._queue)

    def write(self, data: bytes) -> None:
        if not data:
            return
        self.sent += len(data)
        pending = self._pending
        if pending is not None:
            pending.append(data)
            self._pending_size += len(data)
            if self._pending_size > _MAX_GATHER and not self._blocked:
                self._write_pending()
            return
        self._send(data)
        if self._coalesce <= 0:
            return
        now = self._loop.time()
        if self._immediate:
            self._immediate -= 1
        elif now - self._last < self._coalesce:  # frames come fast: gather the next ones
            self._pending = []
            self._timer = self._loop.call_later(self._coalesce, self._flush)
        self._last = now

    def _send(self, data: bytes, last: bool = False) -> None:
        if self._chunked:
            framed = b"%x\r\n%b\r\n" % (len(data), data) if data else b""
            if last:
                framed += LAST_CHUNK
        else:
            framed = data
        if self._head:
            framed, self._head = self._head + framed, b""
        if not framed or self.closed:
            return
        if self._queue or len(framed) > PIECE:
            self._queue.append(memoryview(framed))
            self._feed()
        else:
            self._transport.write(framed)

    def _feed(self) -> None:
        """Hand queued pieces to the transport while it and the server's budget take them."""
        self._waiting_budget = False
        queue, transport, budget = self._queue, self._transport, self._budget
        while queue and not self._paused and not self.closed:
            if budget is not None and not budget.allows(PIECE):
                self._waiting_budget = True
                budget.wait(self._feed)
                break
            view = queue[0]
            if len(view) > PIECE:
                queue[0] = view[PIECE:]
                view = view[:PIECE]
            else:
                queue.popleft()
            transport.write(view)
        self._update_flow()

    def _update_flow(self) -> None:
        blocked = self._paused or bool(self._queue)
        if not blocked and self._blocked and self._pending is not None:
            # Gathered frames come before anything a resumed subscriber catches up, whatever
            # ended the block (the transport, or room in the server's budget).
            self._release_gathered()
            blocked = self._paused or bool(self._queue)
        if blocked != self._blocked:
            self._blocked = blocked
            listener = self._on_pause if blocked else self._on_resume
            if listener is not None:
                listener()
        if self._waiters and (not blocked or not self._queue):
            self._wake()

    def _flush(self) -> None:
        self._timer = None
        if self._blocked:
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
        """End the response: what is gathered, then the last chunk (just the head if no body).
        Queued pieces may still be on their way: ``wait_flushed`` waits for them."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if body:
            self._write_pending(last=True)
        elif self._head and not self.closed:
            self._transport.write(self._head)
            self._head = b""
        self._pending = None

    async def wait_flushed(self) -> None:
        """Return once every queued piece is with the transport (or the client has gone)."""
        while self._queue and not self.closed:
            await self._wait()

    async def drain(self) -> None:
        """Return once more may be written without buffering beyond the bounds (or the
        client has gone): a producer of a large body awaits this between its pieces."""
        while self._blocked and not self.closed:
            await self._wait()

    async def wait_closed(self) -> None:
        while not self.closed:
            await self._wait()

    def set_flow_listener(
        self, on_pause: Callable[[], None] | None, on_resume: Callable[[], None] | None
    ) -> None:
        self._on_pause, self._on_resume = on_pause, on_resume

    def flow(self, *, paused: bool) -> None:
        """The transport paused or resumed writing."""
        self._paused = paused
        if not paused and self._queue and not self._waiting_budget:
            self._feed()
        else:
            self._update_flow()

    def flush_gathered(self) -> None:
        """Hand what the open gathering window holds to the transport now (before a reset)."""
        self._release_gathered()

    def _release_gathered(self) -> None:
        """Write what the open gathering window holds and close it."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        pending, self._pending = self._pending, None
        if pending:
            self._send(pending[0] if len(pending) == 1 else b"".join(pending))

    def lost(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._pending = None
        self._lost = True
        self._queue.clear()
        if self._waiting_budget and self._budget is not None:
            self._budget.cancel(self._feed)
            self._waiting_budget = False
        self._wake()

    async def _wait(self) -> None:
        waiter = self._loop.create_future()
        self._waiters.append(waiter)
        await waiter

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)
