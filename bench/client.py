"""A minimal, low-overhead HTTP/1.1 client over asyncio streams (keep-alive, chunked, SSE).

The load generator must cost far less per event than the servers it measures, so this is
deliberately small: requests are pre-built bytes, the response head is parsed by hand, chunked
bodies are decoded incrementally from whole socket reads, and SSE frames are split on blank
lines without any per-line work in the common case.

    conn = HTTPConnection("127.0.0.1", 8000)
    await conn.connect()
    conn.send(build_request("GET", "/health", "127.0.0.1:8000"))
    head = await conn.read_head()
    body = await conn.read_body(head)
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from enum import Enum, auto

READ_SIZE = 1 << 16
MAX_HEAD_BYTES = 64 * 1024
MAX_CHUNK_LINE = 4096
_HEX = re.compile(rb"[0-9A-Fa-f]{1,16}")
_NO_BODY_STATUS = frozenset({204, 304})


class ProtocolError(Exception):
    """The server sent bytes that are not valid HTTP/1.1."""


def build_request(
    method: str,
    path: str,
    host: str,
    body: bytes = b"",
    headers: Iterable[tuple[str, str]] = (),
) -> bytes:
    """Encode one keep-alive request (built once, sent many times)."""
    lines = [f"{method} {path} HTTP/1.1", f"host: {host}"]
    lines += [f"{name}: {value}" for name, value in headers]
    if body or method in ("POST", "PUT", "PATCH"):
        lines.append(f"content-length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


@dataclass(frozen=True, slots=True)
class ResponseHead:
    """Status line and headers of one response (header names lower-cased)."""

    status: int
    reason: str
    headers: dict[str, str]
    keep_alive: bool
    chunked: bool
    content_length: int | None


def parse_head(block: bytes) -> ResponseHead:
    """Parse a response head (status line + headers, without the final blank line)."""
    lines = block.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise ProtocolError(f"bad status line: {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise ProtocolError(f"bad header line: {line[:80]!r}")
        key = name.lower()
        value = value.strip()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    connection = headers.get("connection", "").lower()
    http10 = parts[0] == "HTTP/1.0"
    keep_alive = "keep-alive" in connection if http10 else "close" not in connection
    chunked = headers.get("transfer-encoding", "").lower().endswith("chunked")
    length: int | None = None
    if not chunked and "content-length" in headers:
        raw = headers["content-length"]
        if not raw.isdigit():
            raise ProtocolError(f"bad content-length: {raw!r}")
        length = int(raw)
    reason = parts[2] if len(parts) > 2 else ""
    return ResponseHead(int(parts[1]), reason, headers, keep_alive, chunked, length)


class _Chunk(Enum):
    SIZE = auto()
    DATA = auto()
    DATA_END = auto()
    TRAILER = auto()
    DONE = auto()


class ChunkedDecoder:
    """Incremental decoder of a chunked body: feed raw bytes, get the body bytes they complete.

    ``done`` turns true after the last chunk and its trailers; bytes fed beyond that are kept
    in ``leftover`` (they belong to the next response).  A chunk that arrived whole (the usual
    case) is taken in one step; the states only matter for chunks split across reads.
    """

    __slots__ = ("_buf", "_remaining", "_state", "leftover")

    def __init__(self) -> None:
        self._buf = b""
        self._state = _Chunk.SIZE
        self._remaining = 0
        self.leftover = b""

    @property
    def done(self) -> bool:
        return self._state is _Chunk.DONE

    def feed(self, data: bytes) -> bytes:
        if self._state is _Chunk.DONE:
            self.leftover += data
            return b""
        buf = self._buf + data if self._buf else data
        out: list[bytes] = []
        pos = self._step(buf, out)
        if self.done:
            self.leftover = buf[pos:]
            self._buf = b""
        else:
            self._buf = buf[pos:]
        return out[0] if len(out) == 1 else b"".join(out)

    def _step(self, buf: bytes, out: list[bytes]) -> int:
        pos = 0
        end = len(buf)
        while True:
            state = self._state
            if state is _Chunk.SIZE:
                nl = buf.find(b"\r\n", pos)
                if nl < 0:
                    if end - pos > MAX_CHUNK_LINE:
                        raise ProtocolError("chunk size line too long")
                    return pos
                size = _chunk_size(buf[pos:nl])
                pos = nl + 2
                stop = pos + size
                if not size:
                    self._state = _Chunk.TRAILER
                elif stop + 2 <= end:  # the whole chunk is here
                    if buf[stop : stop + 2] != b"\r\n":
                        raise ProtocolError("chunk data not followed by CRLF")
                    out.append(buf[pos:stop])
                    pos = stop + 2
                else:
                    self._remaining = size
                    self._state = _Chunk.DATA
            elif state is _Chunk.DATA:
                if pos == end:
                    return pos
                take = min(end - pos, self._remaining)
                out.append(buf[pos : pos + take])
                pos += take
                self._remaining -= take
                if not self._remaining:
                    self._state = _Chunk.DATA_END
            elif state is _Chunk.DATA_END:
                if end - pos < 2:
                    return pos
                if buf[pos : pos + 2] != b"\r\n":
                    raise ProtocolError("chunk data not followed by CRLF")
                pos += 2
                self._state = _Chunk.SIZE
            elif state is _Chunk.TRAILER:
                nl = buf.find(b"\r\n", pos)
                if nl < 0:
                    if end - pos > MAX_CHUNK_LINE:
                        raise ProtocolError("trailer line too long")
                    return pos
                if nl == pos:
                    self._state = _Chunk.DONE
                pos = nl + 2
            else:
                return pos


def _chunk_size(line: bytes) -> int:
    """The size of a chunk-size line (chunk extensions ignored)."""
    if b";" in line:
        line = line.split(b";", 1)[0].rstrip(b" \t")
    # int() alone would also take "0x1f", "+1f", "1_f" and surrounding blanks
    if not _HEX.fullmatch(line):
        raise ProtocolError(f"bad chunk size: {line[:40]!r}")
    return int(line, 16)


class SSESplitter:
    """Splits a byte stream into SSE frames (the text between blank lines).

    CRLF line endings are normalised to LF first, so ``\\r\\n\\r\\n`` separates frames too.
    """

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, data: bytes) -> list[bytes]:
        buf = self._buf + data if self._buf else data
        if b"\r" in buf:
            buf = buf.replace(b"\r\n", b"\n")
        parts = buf.split(b"\n\n")
        self._buf = parts.pop()
        return [p for p in parts if p] if b"" in parts else parts

    @property
    def pending(self) -> bytes:
        """Bytes of an unfinished frame (non-empty at end of body means a truncated stream)."""
        return self._buf.strip(b"\n")


@dataclass(frozen=True, slots=True)
class SSEEvent:
    """One SSE frame: its ``event:`` name (None if absent) and the joined ``data:`` lines."""

    event: str | None
    data: bytes


def parse_frame(frame: bytes) -> SSEEvent | None:
    """Parse one SSE frame; None for frames without data (comments such as ``: ping``)."""
    if frame.startswith(b"data: ") and b"\n" not in frame:
        return SSEEvent(None, frame[6:])
    event: str | None = None
    data: list[bytes] = []
    for line in frame.split(b"\n"):
        if not line or line.startswith(b":"):
            continue
        name, _, value = line.partition(b":")
        if value.startswith(b" "):
            value = value[1:]
        if name == b"data":
            data.append(value)
        elif name == b"event":
            event = value.decode("utf-8", "replace")
    if not data:
        return None
    return SSEEvent(event, b"\n".join(data))


class HTTPConnection:
    """One keep-alive connection; requests are sent and answered strictly one at a time."""

    __slots__ = ("_buf", "_reader", "_writer", "host", "port", "reusable")

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._buf = b""
        self.reusable = False

    async def connect(self) -> None:
        self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        self._buf = b""
        self.reusable = True

    @property
    def connected(self) -> bool:
        return self._writer is not None and self.reusable

    async def ensure_connected(self) -> None:
        """Reconnect if the last exchange left the connection unusable."""
        if not self.connected:
            await self.close()
            await self.connect()

    async def close(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        self.reusable = False
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    def send(self, request: bytes) -> None:
        if self._writer is None:
            raise ConnectionError("not connected")
        self._writer.write(request)

    async def _read(self) -> bytes:
        assert self._reader is not None
        data = await self._reader.read(READ_SIZE)
        if not data:
            self.reusable = False
        return data

    async def read_head(self) -> ResponseHead:
        """Read the next final (non-1xx) response head."""
        while True:
            buf = self._buf
            end = buf.find(b"\r\n\r\n")
            while end < 0:
                if len(buf) > MAX_HEAD_BYTES:
                    raise ProtocolError("response head too large")
                data = await self._read()
                if not data:
                    raise ConnectionError("connection closed before the response head")
                buf += data
                end = buf.find(b"\r\n\r\n", max(0, len(buf) - len(data) - 3))
            head = parse_head(buf[:end])
            self._buf = buf[end + 4 :]
            if not 100 <= head.status < 200:
                if not head.keep_alive:
                    self.reusable = False
                return head

    async def iter_body(self, head: ResponseHead) -> AsyncIterator[bytes]:
        """Yield the body's bytes as they arrive (one block per socket read)."""
        if head.status in _NO_BODY_STATUS:
            return
        if head.chunked:
            async for block in self._iter_chunked():
                yield block
        elif head.content_length is not None:
            async for block in self._iter_sized(head.content_length):
                yield block
        else:
            self.reusable = False
            async for block in self._iter_until_close():
                yield block

    async def read_body(self, head: ResponseHead) -> bytes:
        length = head.content_length
        if length is not None and len(self._buf) >= length and head.status not in _NO_BODY_STATUS:
            body, self._buf = self._buf[:length], self._buf[length:]  # the usual small answer
            return body
        return b"".join([block async for block in self.iter_body(head)])

    async def _iter_chunked(self) -> AsyncIterator[bytes]:
        decoder = ChunkedDecoder()
        data, self._buf = self._buf, b""
        while True:
            if data:
                block = decoder.feed(data)
                if block:
                    yield block
                if decoder.done:
                    self._buf = decoder.leftover
                    return
            data = await self._read()
            if not data:
                raise ConnectionError("connection closed inside a chunked body")

    async def _iter_sized(self, length: int) -> AsyncIterator[bytes]:
        data, self._buf = self._buf, b""
        remaining = length
        while True:
            if data:
                block, extra = data[:remaining], data[remaining:]
                remaining -= len(block)
                yield block
                if not remaining:
                    self._buf = extra
                    return
            elif not remaining:
                return
            data = await self._read()
            if not data:
                raise ConnectionError("connection closed inside a body")

    async def _iter_until_close(self) -> AsyncIterator[bytes]:
        data, self._buf = self._buf, b""
        while True:
            if data:
                yield data
            data = await self._read()
            if not data:
                return
