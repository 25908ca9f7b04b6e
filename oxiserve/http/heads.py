"""A memo of request heads h11 has accepted, so the same head is not parsed twice.

Load generators, SDKs and gateways send one head again and again, differing at most in
Content-Length; h11 costs ~30 µs per small request, more than the rest of a ``GET /health``
put together.  Every head is parsed and checked by h11 and ``checks`` the first time; what
that parse concluded (method, target, fields, keep-alive, the client's request id) is kept
under the head's bytes with the Content-Length digits cut out, and a request whose head is
byte for byte one seen before (digits aside) and whose whole body has arrived reuses it.

What makes that exact rather than approximate:

* A head is memoized only when h11 consumed precisely the bytes :func:`probe` took for the
  head and body (the connection checks the leftover length and the body size), it has at
  most one ``Content-Length`` field, whose value h11 read as the very digits :func:`probe`
  found, and no ``Transfer-Encoding`` or ``Expect``.
* The key keeps the offset of the cut digits, so two heads share a key only when every
  byte other than those digits is equal.  Digits contain no line break, so h11 would split
  the new head into the same lines, and it reads digits as digits: the same parse.
* Heads above half the header limit are not memoized, so other digits can never take a
  memoized head over the limit; a declared body over the body limit is not taken either.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_LENGTH_FIELD = b"\r\ncontent-length:"
_DIGITS = re.compile(rb"[ \t]*([0-9]{1,18})[ \t]*\r\n")

Key = bytes | tuple[int, bytes]


@dataclass(frozen=True, slots=True)
class Head:
    """What parsing and checking one head concluded (``fields`` holds the Content-Length
    value of the request it came from; a request taking it sets its own)."""

    method: str
    path: str
    query: str
    http_version: str
    fields: dict[str, str]
    keep_alive: bool
    request_id: str | None  # the client's, when it is one we echo


@dataclass(frozen=True, slots=True)
class Probe:
    """Where the first request in some bytes would end, and its memo key."""

    key: Key
    head_end: int  # the head is ``data[:head_end]``
    length: int  # its Content-Length, -1 without one
    digits: str  # that Content-Length as written

    @property
    def end(self) -> int:
        """Where the body ends (the next request's first byte)."""
        return self.head_end + max(self.length, 0)


def probe(data: bytes, max_head: int) -> Probe | None:
    """The key of the head at the start of ``data``; None when there is no complete head of at
    most ``max_head`` bytes or it cannot be memoized (two Content-Length fields, one that is
    not plain digits, leading empty lines)."""
    if data[:1] in (b"\r", b"\n", b""):
        return None
    end = data.find(b"\r\n\r\n", 0, max_head)
    if end < 0:
        return None
    end += 4
    head = data[:end]
    lower = head.lower()
    at = lower.find(_LENGTH_FIELD)
    if at < 0:
        return Probe(head, end, -1, "")
    if lower.find(_LENGTH_FIELD, at + 1) >= 0:
        return None
    digits = _DIGITS.match(head, at + len(_LENGTH_FIELD))
    if digits is None:
        return None
    start, stop = digits.span(1)
    value = digits.group(1)
    return Probe((start, head[:start] + head[stop:]), end, int(value), value.decode("ascii"))


class HeadMemo:
    """The heads of one server, at most ``entries`` (the oldest goes first)."""

    __slots__ = ("_entries", "_size", "max_head")

    def __init__(self, max_header_bytes: int, entries: int = 512) -> None:
        self.max_head = max_header_bytes // 2
        self._size = entries
        self._entries: dict[Key, Head] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Key) -> Head | None:
        return self._entries.get(key)

    def put(self, key: Key, head: Head) -> None:
        entries = self._entries
        if key not in entries and len(entries) >= self._size:
            del entries[next(iter(entries))]
        entries[key] = head
