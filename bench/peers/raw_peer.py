"""Peer: a naive raw asyncio.Protocol with a hand-rolled HTTP/1.1 parser, one
``transport.write`` per streamed event (the pure-Python speed limit for this work).

    python -m bench.peers.raw_peer --port 0 [--burst] [--loop asyncio|uvloop]
"""

from __future__ import annotations

import asyncio
import socket
from typing import cast

from bench.peers.common import (
    HEALTH_BODY,
    ChatRequest,
    announce,
    chat_completion,
    listening_socket,
    loop_factory,
    parse_args,
    run_on,
    sse_frames,
)

_HEALTH = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (
    len(HEALTH_BODY),
    HEALTH_BODY,
)
_NOT_FOUND = b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n"
_BAD = b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"
_STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
    b"transfer-encoding: chunked\r\n\r\n"
)
_JSON_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"


class RawHTTP(asyncio.Protocol):
    """One connection: parse requests one at a time; keep-alive; streams in a task."""

    def __init__(self, burst: bool) -> None:
        self.burst = burst
        self.buf = b""
        self.transport: asyncio.Transport | None = None
        self.task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCP transport has Transport's methods but not its class: cast, not assert
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.task is not None:
            self.task.cancel()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.task is None:
            self.process()

    def process(self) -> None:
        while self.task is None and self.transport is not None:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end].split(b"\r\n")
            method, _, rest = head[0].partition(b" ")
            path = rest.partition(b" ")[0]
            length = 0
            for line in head[1:]:
                name, _, value = line.partition(b":")
                if name.lower() == b"content-length":
                    length = int(value)
            body_end = end + 4 + length
            if len(self.buf) < body_end:
                return
            body, self.buf = self.buf[end + 4 : body_end], self.buf[body_end:]
            self.dispatch(method, path, body)

    def dispatch(self, method: bytes, path: bytes, body: bytes) -> None:
        assert self.transport is not None
        if method == b"GET" and path == b"/health":
            self.transport.write(_HEALTH)
        elif method == b"POST" and path == b"/v1/chat/completions":
            try:
                request = ChatRequest.parse(body)
            except ValueError:
                self.transport.write(_BAD)
                self.transport.close()
                return
            self.task = asyncio.create_task(self.respond(request))
        else:
            self.transport.write(_NOT_FOUND)

    async def respond(self, request: ChatRequest) -> None:
        transport = self.transport
        assert transport is not None
        if request.stream:
            transport.write(_STREAM_HEAD)
            async for frame in sse_frames(request, self.burst):
                transport.write(b"%x\r\n%s\r\n" % (len(frame), frame))
            transport.write(b"0\r\n\r\n")
        else:
            body = await chat_completion(request, self.burst)
            transport.write(_JSON_HEAD % len(body) + body)
        self.task = None
        self.process()


async def serve(burst: bool, sock: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: RawHTTP(burst), sock=sock)
    announce("raw-peer", sock)
    async with server:
        await server.serve_forever()


def main() -> None:
    args = parse_args(__doc__ or "")
    run_on(loop_factory(args.loop), serve(args.burst, listening_socket(args.host, args.port)))


if __name__ == "__main__":
    main()
