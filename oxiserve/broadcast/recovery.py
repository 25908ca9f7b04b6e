"""The recovery log: text per key and control frames, to rebuild what a lagging reader missed.

A reader the ring overran (or one joining late) cannot get the frames it missed, but it can get
their equivalent: the text it has not seen, as catch-up frames, around every control frame it
missed, in order.  So the log keeps, for the stream's lifetime, the text so far per key and
every control frame with a snapshot of the per-key text lengths when it was published.

    log = RecoveryLog(encode_text=lambda key, text: f"T{key}:{text}|".encode())
    log.add_text(0, "Hel")                 # -> 3, key 0's length after it
    log.add_control(1, b"C|")              # published as frame 1, after "Hel"
    log.add_text(0, "lo")
    log.recover(0, {})                     # [b"T0:Hel|", b"C|", b"T0:lo|"]
    log.recover(2, {0: 4})                 # [b"T0:o|"]: only what is missing

``Topic`` inlines ``add_text`` on its per-token path through ``lengths`` and ``pieces`` (the
dicts are never rebound).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["CatchUpEncoder", "Lagged", "RecoveryLog", "TextEncoder"]

TextEncoder = Callable[[int, str], bytes]
CatchUpEncoder = Callable[[int, str, int], bytes]  # (key, missed text, its start offset)


@dataclass(frozen=True, slots=True)
class Lagged:
    """The ring overran the cursor: send ``frames`` instead of the ``missed`` frames."""

    missed: int
    frames: list[bytes]


class RecoveryLog:
    """Accumulated text per key and every control frame, with the text lengths it followed."""

    __slots__ = (
        "_control_lengths",
        "_control_seqs",
        "_controls",
        "_encode_catch_up",
        "_encode_text",
        "lengths",
        "pieces",
    )

    def __init__(
        self, encode_text: TextEncoder | None = None, encode_catch_up: CatchUpEncoder | None = None
    ) -> None:
        self._encode_text = encode_text
        # Catch-up frames may need more than the text (e.g. per-token logprobs): this encoder
        # also gets where the missed text starts in the key's accumulated text.
        self._encode_catch_up = encode_catch_up
        self.lengths: dict[int, int] = {}  # text length per key, O(1)
        self.pieces: dict[int, list[str]] = {}  # text per key, joined lazily by text()
        self._control_seqs: list[int] = []
        self._controls: list[bytes] = []
        self._control_lengths: list[dict[int, int]] = []

    def add_text(self, key: int, text: str) -> int:
        """Append ``text`` to ``key``'s text; return its length after it."""
        try:
            end = self.lengths[key] + len(text)
        except KeyError:
            end = self.open_key(key) + len(text)
        self.lengths[key] = end
        self.pieces[key].append(text)
        return end

    def open_key(self, key: int) -> int:
        """Start an empty text for ``key``; return its length (0)."""
        if key < 0:
            raise ValueError(f"text key must be >= 0, got {key}")
        self.lengths[key] = 0
        self.pieces[key] = []
        return 0

    def add_control(self, seq: int, frame: bytes, lengths: dict[int, int] | None = None) -> None:
        """Keep control ``frame``, published with sequence number ``seq``, after the text so far
        (or after ``lengths`` of it: a log rebuilt elsewhere knows where each came)."""
        self._control_seqs.append(seq)
        self._controls.append(frame)
        self._control_lengths.append(dict(self.lengths if lengths is None else lengths))

    def controls(self) -> list[tuple[int, bytes, dict[int, int]]]:
        """Every control frame kept: (its sequence number, the frame, the text lengths before)."""
        return list(zip(self._control_seqs, self._controls, self._control_lengths, strict=True))

    def length(self, key: int = 0) -> int:
        return self.lengths.get(key, 0)

    def text(self, key: int = 0) -> str:
        pieces = self.pieces.get(key)
        if not pieces:
            return ""
        if len(pieces) > 1:
            pieces[:] = ["".join(pieces)]  # join once; later calls only join the new pieces
        return pieces[0]

    def recover(self, cursor: int, delivered: dict[int, int]) -> list[bytes]:
        """Frames equivalent to ``cursor..head`` for a reader that has ``delivered`` text per key:
        catch-up text before each control frame from ``cursor`` on, then the text after them."""
        frames: list[bytes] = []
        have = dict(delivered)
        first = bisect_left(self._control_seqs, cursor)
        for frame, lengths in zip(
            self._controls[first:], self._control_lengths[first:], strict=True
        ):
            self._catch_up(frames, have, lengths)
            frames.append(frame)
        self._catch_up(frames, have, self.lengths)
        return frames

    def _catch_up(self, out: list[bytes], have: dict[int, int], lengths: dict[int, int]) -> None:
        for key, length in lengths.items():
            done = have.get(key, 0)
            if length > done:
                missed = self.text(key)[done:length]
                if self._encode_catch_up is not None:
                    out.append(self._encode_catch_up(key, missed, done))
                elif self._encode_text is not None:
                    out.append(self._encode_text(key, missed))
                else:
                    raise RuntimeError("lag recovery needs a Topic with encode_text")
                have[key] = length
