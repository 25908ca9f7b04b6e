"""Stop sequences over a token stream: never leak a stop, even split across tokens.

matcher = StopMatcher(("END",))
matcher.feed("hello E")   # -> "hello "  ("E" is held back: it may start "END")
matcher.feed("ND more")   # -> ""  and matcher.stopped is True
"""

from __future__ import annotations


class StopMatcher:
    """Feeds text pieces; returns the text that is safe to emit."""

    __slots__ = ("_held", "_longest", "_stops", "stopped")

    def __init__(self, stops: tuple[str, ...]) -> None:
        self._stops = tuple(s for s in stops if s)
        self._longest = max((len(s) for s in self._stops), default=0)
        self._held = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        if self.stopped:
            return ""
        buffer = self._held + text
        cut = self._first_stop(buffer)
        if cut != -1:
            # A longer stop may still begin before this one: wait for it to complete or not
            # (with stops "a" and "NaN", "Na" may yet be the start of "NaN").
            for start in range(max(0, len(buffer) - self._longest + 1), cut):
                if self._may_start(buffer[start:]):
                    self._held = buffer[start:]
                    return buffer[:start]
            self.stopped = True
            self._held = ""
            return buffer[:cut]
        keep = self._partial_suffix(buffer)
        self._held = buffer[len(buffer) - keep :] if keep else ""
        return buffer[: len(buffer) - keep]

    def flush(self) -> str:
        """At the end of generation: what was held back, up to a stop it holds whole."""
        held, self._held = self._held, ""
        if self.stopped:
            return ""
        cut = self._first_stop(held)
        if cut == -1:
            return held
        self.stopped = True
        return held[:cut]

    def _first_stop(self, buffer: str) -> int:
        """Where the first whole stop in ``buffer`` begins (-1: none)."""
        cut = -1
        for stop in self._stops:
            at = buffer.find(stop)
            if at != -1 and (cut == -1 or at < cut):
                cut = at
        return cut

    def _may_start(self, tail: str) -> bool:
        """Whether ``tail`` is a proper prefix of some stop (more text may complete it)."""
        return any(len(stop) > len(tail) and stop.startswith(tail) for stop in self._stops)

    def _partial_suffix(self, buffer: str) -> int:
        """Length of the longest suffix of ``buffer`` that is a proper prefix of a stop."""
        for size in range(min(self._longest - 1, len(buffer)), 0, -1):
            tail = buffer[-size:]
            if any(stop.startswith(tail) for stop in self._stops):
                return size
        return 0
