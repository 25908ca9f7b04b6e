"""WriteBudget: a bound on the bytes waiting in all of a server's transport buffers together.

Each connection's own write buffer is bounded by its high-water mark, but 1,024 slow
readers of large bodies would still add up.  Large writes go out in pieces
(``writer.PIECE``), each only while the whole server's buffered total is under
``--max-buffered-bytes``; a writer over budget waits, first come first served, and is
called back once enough has drained.

Summing every connection's buffer costs a call per connection, so the total is measured
at most once per ``_POLL`` seconds; in between, each piece let through is added to the
last measurement (a reservation), so the estimate errs on the side of the bound.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

_POLL = 0.005  # seconds between measurements of the total (and looks while writers wait)


class WriteBudget:
    __slots__ = (
        "_estimate", "_limit", "_loop", "_measured_at", "_refused", "_timer", "_total", "_waiters",
    )  # fmt: skip

    def __init__(
        self, limit: int, total: Callable[[], int], loop: asyncio.AbstractEventLoop
    ) -> None:
        self._limit = limit  # 0: no server-wide bound
        self._total = total  # bytes buffered now, over every connection
        self._loop = loop
        self._estimate = 0
        self._measured_at = -1.0
        self._refused = False
        self._waiters: deque[Callable[[], None]] = deque()
        self._timer: asyncio.TimerHandle | None = None

    def allows(self, size: int) -> bool:
        """Whether ``size`` more bytes may be buffered now; if so they are counted as written."""
        if not self._limit:
            return True
        now = self._loop.time()
        if now - self._measured_at >= _POLL:
            self._measure(now)
        # Someone must always be able to go: a limit below one piece would otherwise stall all.
        if self._estimate and self._estimate + size > self._limit:
            self._refused = True
            return False
        self._estimate += size
        return True

    def wait(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once there is room again (callbacks in the order they waited)."""
        self._waiters.append(callback)
        if self._timer is None:
            self._timer = self._loop.call_later(_POLL, self._poll)

    def cancel(self, callback: Callable[[], None]) -> None:
        if callback in self._waiters:
            self._waiters.remove(callback)

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def _measure(self, now: float) -> None:
        self._estimate = self._total()
        self._measured_at = now

    def _poll(self) -> None:
        self._timer = None
        self._measure(self._loop.time())
        # Only as many as the room admits: each callback's allows() takes its share; the first
        # one refused waits again at the back, and the others keep their places.
        waiters = self._waiters
        for _ in range(len(waiters)):
            if not waiters:
                break
            self._refused = False
            waiters.popleft()()
            if self._refused:
                waiters.appendleft(waiters.pop())  # it waited again: first in line, as before
                break
        if waiters and self._timer is None:
            self._timer = self._loop.call_later(_POLL, self._poll)
