"""A topic's subscriber: a cursor read by ``receive``, or pushed to a sink while attached (live).

Only ``Topic.subscribe()`` makes one (``Subscriber(topic)`` raises ``TypeError``, as trio's
``NoPublicConstructor`` endpoints do): the topic counts its subscribers, and a subscriber it did
not count would drive the count below zero when closed.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

from oxiserve.broadcast.errors import EndOfTopic, WouldBlock
from oxiserve.broadcast.fanout import Sink, wait, wake
from oxiserve.broadcast.recovery import Lagged

if TYPE_CHECKING:
    from oxiserve.broadcast.topic import Topic

__all__ = ["NoPublicConstructor", "Subscriber"]

_T = TypeVar("_T")


class NoPublicConstructor(type):
    """Metaclass: ``Class(...)`` raises ``TypeError``; its owner makes one by ``Class._create``."""

    def __call__(cls, *args: Any, **kwargs: Any) -> NoReturn:
        raise TypeError(f"{cls.__module__}.{cls.__qualname__} has no public constructor")

    def _create(cls: type[_T], *args: Any, **kwargs: Any) -> _T:
        return super().__call__(*args, **kwargs)  # type: ignore[misc, no-any-return]


class Subscriber(metaclass=NoPublicConstructor):
    """A cursor into a Topic, read by ``receive`` or pushed to a sink while attached (live)."""

    __slots__ = ("_closed", "_cursor", "_delivered", "_done_waiters", "_live", "_topic")

    def __init__(self, topic: Topic) -> None:
        self._topic = topic
        self._cursor = 0
        self._delivered: dict[int, int] = {}  # text length delivered per key (stale while live)
        self._live = False
        self._closed = False
        self._done_waiters: list[asyncio.Future[None]] = []

    @property
    def cursor(self) -> int:
        """Sequence number of the next frame this subscriber gets (follows the head while live)."""
        return self._topic._seq if self._live else self._cursor

    @property
    def live(self) -> bool:
        return self._live

    def receive_nowait(self) -> list[bytes] | Lagged:
        """Every frame from the cursor to the head, or ``Lagged`` if the ring overran the cursor.

        Raises ``WouldBlock`` if there is nothing new, ``EndOfTopic`` once the topic is closed and
        drained, or once this subscriber is closed.  A late joiner whose start was overrun gets
        ``Lagged`` here too: its recovery frames are its snapshot of the stream so far.
        """
        if self._live:
            raise RuntimeError("receive on an attached subscriber; detach() first")
        return self._take()

    async def receive(self) -> list[bytes] | Lagged:
        """Like ``receive_nowait``, but wait while there is nothing new."""
        while True:
            try:
                return self.receive_nowait()
            except WouldBlock:
                await wait(self._topic._waiters)

    def attach(self, sink: Sink) -> None:
        """Go live: the backlog in one ``sink`` call, then ``publish`` calls ``sink`` per frame.

        Ignored on a closed subscriber, so a flow-control callback racing with close needs no guard.
        """
        if self._closed:
            return
        if self._live:
            raise RuntimeError("subscriber is already attached")
        try:
            backlog = self._take()
        except (WouldBlock, EndOfTopic):
            backlog = []
        # Live before the backlog is written: if writing it pauses the transport, the sink's
        # detach() finds the subscriber live, with its cursor already at the head.
        self._live = True
        self._topic._go_live(self, sink)
        frames = backlog.frames if isinstance(backlog, Lagged) else backlog
        if frames:
            sink(b"".join(frames))
        if self._done_waiters:
            wake(self._done_waiters)

    def detach(self) -> None:
        """Leave live mode (e.g. on ``pause_writing``); frames wait in the ring until ``attach``."""
        if not self._live:
            return
        topic = self._topic
        self._live = False
        self._cursor = topic._seq
        self._delivered = dict(topic._log.lengths)  # set here so live frames cost nothing per event
        topic._leave_live(self)

    async def wait_done(self) -> None:
        """Return once the topic is closed and this subscriber has every frame (or is closed)."""
        topic = self._topic
        while not (self._closed or (topic._closed and (self._live or self._cursor == topic._seq))):
            # Never on topic._waiters: a live stream's handler sits here, and must not be woken
            # by every publish.
            await wait(self._done_waiters if topic._closed else topic._close_waiters)

    def close(self) -> None:
        """Unsubscribe. Idempotent; later receives raise ``EndOfTopic``."""
        if self._closed:
            return
        self.detach()
        self._closed = True
        wake(self._done_waiters)
        self._topic._unsubscribed()

    def _take(self) -> list[bytes] | Lagged:
        if self._closed:
            raise EndOfTopic
        topic = self._topic
        cursor, head = self._cursor, topic._seq
        if cursor == head:
            raise EndOfTopic if topic._closed else WouldBlock
        result: list[bytes] | Lagged
        if topic._ring.holds(cursor, head):
            result = topic._ring.since(cursor, head, self._delivered)
        else:
            result = Lagged(head - cursor, topic._log.recover(cursor, self._delivered))
            topic._note_lag(head - cursor)
            self._delivered = dict(topic._log.lengths)
        self._cursor = head
        if self._done_waiters:
            wake(self._done_waiters)
        return result
