"""WriteBudget: a bound on the bytes waiting in all of a server's transport buffers together.

Each connection's own write buffer is bounded by its high-water mark, but 1,024 slow
readers of large bodies would still add up.  Large writes go out in pieces
(``writer.PIECE``), each only while the whole server's buffered total is under
``--max-buffered-bytes``; a writer over budget waits, and is called back once enough
has drained (checked every few milliseconds while anyone waits).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

_POLL = 0.005  # seconds between looks at the total while writers wait


class WriteBudget:
    __slots__ = ("_limit", "_loop", "_timer", "_total", "_waiters")

    def __init__(
        self, limit: int, total: Callable[[], int], loop: asyncio.AbstractEventLoop
    ) -> None:
        self._limit = limit  # 0: no server-wide bound
        self._total = total  # bytes buffered now, over every connection
        self._loop = loop
        self._waiters: list[Callable[[], None]] = []
        self._timer: asyncio.TimerHandle | None = None

    def allows(self, size: int) -> bool:
        """Whether ``size`` more bytes may be buffered now."""
        return not self._limit or self._total() + size <= self._limit

    def wait(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once the total is under the limit again."""
        self._waiters.append(callback)
        if self._timer is None:
            self._timer = self._loop.call_later(_POLL, self._poll)

    def cancel(self, callback: Callable[[], None]) -> None:
        if callback in self._waiters:
            self._waiters.remove(callback)

    def _poll(self) -> None:
        self._timer = None
        if not self._waiters:
            return
        if self._total() >= self._limit:
            self._timer = self._loop.call_later(_POLL, self._poll)
            return
        waiters, self._waiters = self._waiters, []
        for callback in waiters:  # each re-checks allows() and may wait again
            callback()
        if self._waiters and self._timer is None:
            self._timer = self._loop.call_later(_POLL, self._poll)

    @property
    def waiting(self) -> int:
        return len(self._waiters)
