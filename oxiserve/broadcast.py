"""One broadcast topic per stream: a ring of pre-encoded frames, fanned out to sinks and cursors.

A producer publishes each frame once, as ``bytes`` (an SSE frame); any number of subscribers read
it.  Caught-up subscribers are *live*: ``publish`` calls their sink (a ``transport.write``)
directly, with no task switch.  A subscriber paused by flow control, or joining late, reads from
the ring by cursor, one batch per wake-up.  If the ring overran its cursor it gets ``Lagged``:
recovery frames carrying exactly the text it missed, around every control frame it missed, in
order.  Nothing is lost, nothing is sent twice.

    topic = Topic(capacity=256, encode_text=lambda key, text: encode_delta(key, text))
    sub = topic.subscribe()                # created before generation: cursor 0, no race
    sub.attach(transport.write)            # pause_writing: detach(); resume_writing: attach()
    topic.publish(role_chunk)              # control frame: kept for recovery, never lost
    topic.publish_text("Hel")              # text frame for choice 0, encoded once
    topic.close(b"data: [DONE]\\n\\n")
    await sub.wait_done()

Sinks are called from inside ``publish``.  They must not raise (asyncio's ``transport.write``
does not); they may call ``detach``/``attach``/``close`` on any subscriber, as ``pause_writing``
does.  Every control frame is kept for the topic's lifetime (with a snapshot of the per-key
text lengths), so publish a handful per stream, not one per token: tokens go to ``publish_text``.
"""

from __future__ import annotations

import asyncio
import contextlib
from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

__all__ = [
    "CatchUpEncoder",
    "ClosedTopic",
    "EndOfTopic",
    "Lagged",
    "Sink",
    "Subscriber",
    "TextEncoder",
    "Topic",
    "TopicStatistics",
    "WouldBlock",
]

Sink = Callable[[bytes], None]
TextEncoder = Callable[[int, str], bytes]
CatchUpEncoder = Callable[[int, str, int], bytes]  # (key, missed text, its start offset)

_T = TypeVar("_T")
_CONTROL = -1  # the ring's key for a control frame


class WouldBlock(Exception):
    """``receive_nowait`` found nothing new and the topic is still open."""


class EndOfTopic(Exception):
    """The topic is closed and this subscriber has every frame (or the subscriber is closed)."""


class ClosedTopic(Exception):
    """A frame was published after ``Topic.close``."""


@dataclass(frozen=True, slots=True)
class Lagged:
    """The ring overran the cursor: send ``frames`` instead of the ``missed`` frames."""

    missed: int
    frames: list[bytes]


@dataclass(frozen=True, slots=True)
class TopicStatistics:
    published: int
    subscribers: int  # open subscribers
    lagged: int  # lag events, late joiners' snapshots included
    max_lag: int  # largest Lagged.missed


def _wake(waiters: list[asyncio.Future[None]]) -> None:
    for waiter in waiters:
        if not waiter.done():
            waiter.set_result(None)
    waiters.clear()


async def _wait(waiters: list[asyncio.Future[None]]) -> None:
    waiter = asyncio.get_running_loop().create_future()
    waiters.append(waiter)
    try:
        await waiter
    finally:
        # Cancelled before being woken: do not leave a dead future in the list.
        with contextlib.suppress(ValueError):
            waiters.remove(waiter)


def _ring_slice(ring: list[_T], start: int, stop: int) -> list[_T]:
    if start < stop:
        return ring[start:stop]
    return ring[start:] + ring[:stop]  # wraps around (start == stop: the whole ring)


class Topic:
    """The state of one stream: ring, accumulated text, control frames, live sinks, waiters."""

    __slots__ = (
        "_close_waiters",
        "_closed",
        "_control_frames",
        "_control_lengths",
        "_control_seqs",
        "_encode_catch_up",
        "_encode_text",
        "_ends",
        "_frames",
        "_keys",
        "_lag_events",
        "_lengths",
        "_live",
        "_mask",
        "_max_lag",
        "_pieces",
        "_seq",
        "_sinks",
        "_subscribers",
        "_waiters",
    )

    def __init__(
        self,
        capacity: int = 1024,
        encode_text: TextEncoder | None = None,
        encode_catch_up: CatchUpEncoder | None = None,
    ) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        size = max(2, 1 << (capacity - 1).bit_length())
        self._mask = size - 1
        # The ring, as three parallel lists indexed by seq & mask: no per-event allocation.
        self._frames: list[bytes] = [b""] * size
        self._keys: list[int] = [_CONTROL] * size
        self._ends: list[int] = [0] * size  # a text frame's key's accumulated length after it
        self._seq = 0
        self._closed = False
        self._encode_text = encode_text
        # Catch-up frames may need more than the text (e.g. per-token logprobs): this encoder
        # also gets where the missed text starts in the key's accumulated text.
        self._encode_catch_up = encode_catch_up
        self._pieces: dict[int, list[str]] = {}
        self._lengths: dict[int, int] = {}
        self._control_seqs: list[int] = []
        self._control_frames: list[bytes] = []
        self._control_lengths: list[dict[int, int]] = []
        # Tuples, replaced on attach/detach: a sink that detaches mid-publish cannot disturb the
        # loop that is calling it.
        self._sinks: tuple[Sink, ...] = ()
        self._live: tuple[Subscriber, ...] = ()
        self._waiters: list[asyncio.Future[None]] = []  # woken by every publish and by close
        self._close_waiters: list[asyncio.Future[None]] = []  # woken by close only
        self._subscribers = 0
        self._lag_events = 0
        self._max_lag = 0

    @property
    def capacity(self) -> int:
        return self._mask + 1

    @property
    def seq(self) -> int:
        """Frames published so far: the sequence number the next frame will get."""
        return self._seq

    @property
    def closed(self) -> bool:
        return self._closed

    def publish(self, frame: bytes) -> None:
        """Publish a control frame (lifecycle event, role/finish chunk, usage, ``[DONE]``)."""
        if self._closed:
            raise ClosedTopic("publish after close")
        seq = self._seq
        self._control_seqs.append(seq)
        self._control_frames.append(frame)
        self._control_lengths.append(dict(self._lengths))
        i = seq & self._mask
        self._frames[i] = frame
        self._keys[i] = _CONTROL
        self._ends[i] = 0
        self._seq = seq + 1
        for sink in self._sinks:
            sink(frame)
        if self._waiters:
            _wake(self._waiters)

    def publish_text(self, text: str, key: int = 0, frame: bytes | None = None) -> None:
        """Publish ``text`` for choice/stream ``key``; ``frame`` defaults to ``encode_text``'s."""
        if self._closed:
            raise ClosedTopic("publish after close")
        if frame is None:
            frame = self._encode(key, text)
        try:
            end = self._lengths[key] + len(text)
        except KeyError:
            end = self._new_key(key) + len(text)
        self._lengths[key] = end
        self._pieces[key].append(text)
        # The hot path: the ring writes are inlined, not shared with publish(), on purpose.
        seq = self._seq
        i = seq & self._mask
        self._frames[i] = frame
        self._keys[i] = key
        self._ends[i] = end
        self._seq = seq + 1
        for sink in self._sinks:
            sink(frame)
        if self._waiters:
            _wake(self._waiters)

    def close(self, frame: bytes | None = None) -> None:
        """Publish an optional final control frame, then end the topic. Idempotent."""
        if self._closed:
            return
        if frame is not None:
            self.publish(frame)
        self._closed = True
        _wake(self._waiters)
        _wake(self._close_waiters)

    def length(self, key: int = 0) -> int:
        """How many characters of text were published for ``key`` (O(1))."""
        return self._lengths.get(key, 0)

    def text(self, key: int = 0) -> str:
        """All text published so far for ``key``."""
        pieces = self._pieces.get(key)
        if not pieces:
            return ""
        if len(pieces) > 1:
            pieces[:] = ["".join(pieces)]  # join once; later calls only join the new pieces
        return pieces[0]

    def subscribe(self) -> Subscriber:
        """A new subscriber with its cursor at 0 (it sees the whole stream)."""
        self._subscribers += 1
        return Subscriber(self)

    async def wait_first(self) -> None:
        """Return once at least one frame was published or the topic was closed."""
        while self._seq == 0 and not self._closed:
            await _wait(self._waiters)

    def statistics(self) -> TopicStatistics:
        return TopicStatistics(self._seq, self._subscribers, self._lag_events, self._max_lag)

    def _encode(self, key: int, text: str) -> bytes:
        if self._encode_text is None:
            raise ValueError("publish_text needs a frame or a Topic with encode_text")
        return self._encode_text(key, text)

    def _new_key(self, key: int) -> int:
        if key < 0:
            raise ValueError(f"text key must be >= 0, got {key}")
        self._lengths[key] = 0
        self._pieces[key] = []
        return 0

    def _frames_since(self, cursor: int, delivered: dict[int, int]) -> list[bytes]:
        """Ring frames ``cursor..head`` (all still held); advances ``delivered`` past their text."""
        start = cursor & self._mask
        stop = self._seq & self._mask
        keys, ends = _ring_slice(self._keys, start, stop), _ring_slice(self._ends, start, stop)
        for key, end in zip(keys, ends, strict=True):
            if key != _CONTROL:
                delivered[key] = end
        return _ring_slice(self._frames, start, stop)

    def _recover(self, cursor: int, delivered: dict[int, int]) -> list[bytes]:
        """Frames equivalent to ``cursor..head``: catch-up text before each missed control frame."""
        frames: list[bytes] = []
        have = dict(delivered)
        first = bisect_left(self._control_seqs, cursor)
        for frame, lengths in zip(
            self._control_frames[first:], self._control_lengths[first:], strict=True
        ):
            self._catch_up(frames, have, lengths)
            frames.append(frame)
        self._catch_up(frames, have, self._lengths)
        return frames

    def _catch_up(self, out: list[bytes], have: dict[int, int], lengths: dict[int, int]) -> None:
        for key, length in lengths.items():
            done = have.get(key, 0)
            if length > done:
                if self._encode_catch_up is not None:
                    out.append(self._encode_catch_up(key, self.text(key)[done:length], done))
                    have[key] = length
                    continue
                if self._encode_text is None:
                    raise RuntimeError("lag recovery needs a Topic with encode_text")
                out.append(self._encode_text(key, self.text(key)[done:length]))
                have[key] = length

    def _note_lag(self, missed: int) -> None:
        self._lag_events += 1
        self._max_lag = max(self._max_lag, missed)

    def _add_live(self, sub: Subscriber, sink: Sink) -> None:
        self._live = (*self._live, sub)
        self._sinks = (*self._sinks, sink)

    def _remove_live(self, sub: Subscriber) -> None:
        i = self._live.index(sub)
        self._live = self._live[:i] + self._live[i + 1 :]
        self._sinks = self._sinks[:i] + self._sinks[i + 1 :]


class Subscriber:
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
                await _wait(self._topic._waiters)

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
        self._topic._add_live(self, sink)
        frames = backlog.frames if isinstance(backlog, Lagged) else backlog
        if frames:
            sink(b"".join(frames))
        if self._done_waiters:
            _wake(self._done_waiters)

    def detach(self) -> None:
        """Leave live mode (e.g. on ``pause_writing``); frames wait in the ring until ``attach``."""
        if not self._live:
            return
        topic = self._topic
        self._live = False
        self._cursor = topic._seq
        self._delivered = dict(topic._lengths)  # set here so live frames cost nothing per event
        topic._remove_live(self)

    async def wait_done(self) -> None:
        """Return once the topic is closed and this subscriber has every frame (or is closed)."""
        topic = self._topic
        while not (self._closed or (topic._closed and (self._live or self._cursor == topic._seq))):
            # Never on topic._waiters: a live stream's handler sits here, and must not be woken
            # by every publish.
            await _wait(self._done_waiters if topic._closed else topic._close_waiters)

    def close(self) -> None:
        """Unsubscribe. Idempotent; later receives raise ``EndOfTopic``."""
        if self._closed:
            return
        self.detach()
        self._closed = True
        topic = self._topic
        topic._subscribers -= 1
        _wake(self._done_waiters)
        # Our own receive()/wait_done() may be waiting on these; the others just re-check.
        _wake(topic._waiters)
        _wake(topic._close_waiters)

    def _take(self) -> list[bytes] | Lagged:
        if self._closed:
            raise EndOfTopic
        topic = self._topic
        cursor = self._cursor
        head = topic._seq
        if cursor == head:
            raise EndOfTopic if topic._closed else WouldBlock
        result: list[bytes] | Lagged
        if head - cursor > topic._mask + 1:
            result = Lagged(head - cursor, topic._recover(cursor, self._delivered))
            topic._note_lag(head - cursor)
            self._delivered = dict(topic._lengths)
        else:
            result = topic._frames_since(cursor, self._delivered)
        self._cursor = head
        if self._done_waiters:
            _wake(self._done_waiters)
        return result
