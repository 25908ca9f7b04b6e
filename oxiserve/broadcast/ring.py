"""The ring of pre-encoded frames: a stream's last frames, by sequence number.

    ring = FrameRing(4)                    # rounded up to a power of two
    ring.put(0, b"C0|")                    # frame 0, a control frame: key CONTROL
    ring.put(1, b"T0:a|", key=0, end=1)    # frame 1, text: key 0's text is 1 long after it
    ring.holds(0, head=2)                  # True: frames 0..2 are all still in the ring
    ring.since(0, 2, delivered := {})      # [b"C0|", b"T0:a|"]; delivered == {0: 1}

Three parallel lists indexed by ``seq & mask``, so a put allocates nothing.  The sequence
number is the topic's (its state record holds it, as every reader needs it); the ring only
stores slots.  ``Topic`` writes the lists directly on its per-token path (they are never
rebound, only written); everything else goes through the methods.
"""

from __future__ import annotations

from typing import TypeVar

__all__ = ["CONTROL", "FrameRing"]

_T = TypeVar("_T")
CONTROL = -1  # the key of a control frame (text keys are >= 0)


def _window(ring: list[_T], start: int, stop: int) -> list[_T]:
    if start < stop:
        return ring[start:stop]
    return ring[start:] + ring[:stop]  # wraps around (start == stop: the whole ring)


class FrameRing:
    """The last ``capacity`` frames; a text frame also has its key and the key's length after it."""

    __slots__ = ("ends", "floor", "frames", "keys", "mask")

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        size = max(2, 1 << (capacity - 1).bit_length())
        self.mask = size - 1
        self.frames: list[bytes] = [b""] * size
        self.keys: list[int] = [CONTROL] * size
        self.ends: list[int] = [0] * size  # a text frame's key's accumulated length after it
        self.floor = 0  # the first frame ever put (a topic resumed elsewhere starts above 0)

    @property
    def capacity(self) -> int:
        return self.mask + 1

    def put(self, seq: int, frame: bytes, key: int = CONTROL, end: int = 0) -> None:
        """Store frame ``seq``, overwriting frame ``seq - capacity``."""
        i = seq & self.mask
        self.frames[i] = frame
        self.keys[i] = key
        self.ends[i] = end

    def holds(self, cursor: int, head: int) -> bool:
        """Whether frames ``cursor..head`` (``head`` the next to be put) are all still held."""
        return head - cursor <= self.mask + 1 and cursor >= self.floor

    def since(self, cursor: int, head: int, delivered: dict[int, int]) -> list[bytes]:
        """Frames ``cursor..head`` (``holds`` must be true); advances ``delivered``, the text
        length delivered per key, past the text frames among them."""
        if cursor == head:
            return []
        start = cursor & self.mask
        stop = head & self.mask
        keys, ends = _window(self.keys, start, stop), _window(self.ends, start, stop)
        for key, end in zip(keys, ends, strict=True):
            if key != CONTROL:
                delivered[key] = end
        return _window(self.frames, start, stop)
