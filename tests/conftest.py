"""Shared fixtures: real servers on 127.0.0.1:0 and a raw-socket client."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import openai
import pytest

from oxiserve import Config, Server

TIMEOUT = 5.0

# The SDK and SSE wire tests run on both event loops users serve with (uvloop's transports
# are not asyncio.Transport subclasses; a server that assumes so breaks on them).
BOTH_LOOPS_MODULES = frozenset(
    {"test_chat", "test_completions_embeddings", "test_http_connection", "test_http_hardening",
     "test_loops", "test_memory_bounds", "test_disconnects", "test_structured_output"}
)  # fmt: skip


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    module = getattr(item, "module", None)
    if module is None or module.__name__.rpartition(".")[2] not in BOTH_LOOPS_MODULES:
        return {"asyncio": asyncio.new_event_loop}
    import uvloop

    return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


@asynccontextmanager
async def running(**overrides: Any) -> AsyncIterator[Server]:
    """A Server on a free loopback port, stopped (gracefully) afterwards."""
    overrides.setdefault("port", 0)
    overrides.setdefault("access_log", False)
    engine = overrides.pop("engine", None)
    server = Server(Config(**overrides), engine=engine)
    await server.start()
    try:
        yield server
    finally:
        await server.stop(timeout=2.0)


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    async with running() as s:
        yield s


@pytest.fixture
async def client(server: Server) -> AsyncIterator[openai.AsyncOpenAI]:
    """The official SDK, as users hold it, pointed at the ``server`` fixture (no retries)."""
    sdk = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="sk-test", max_retries=0)
    yield sdk
    await sdk.close()


class RawClient:
    """A raw TCP connection for feeding exact bytes and reading exact responses."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, server: Server) -> RawClient:
        reader, writer = await asyncio.open_connection(server.host, server.port)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def read_response(self, timeout: float = TIMEOUT) -> tuple[int, dict[str, str], bytes]:
        """One HTTP/1.1 response (content-length or chunked body)."""
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), timeout)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        if "content-length" in headers:
            body = await asyncio.wait_for(
                self.reader.readexactly(int(headers["content-length"])), timeout
            )
        elif headers.get("transfer-encoding") == "chunked":
            body = await asyncio.wait_for(read_chunked(self.reader), timeout)
        else:
            body = b""
        return status, headers, body

    async def read_all(self, timeout: float = TIMEOUT) -> bytes:
        """Everything until the server closes the connection."""
        return await asyncio.wait_for(self.reader.read(), timeout)

    async def closed_by_server(self, timeout: float = TIMEOUT) -> bool:
        try:
            rest = await asyncio.wait_for(self.reader.read(), timeout)
        except ConnectionResetError:
            return True
        return rest == b"" or self.reader.at_eof()

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()


async def read_chunked(reader: asyncio.StreamReader) -> bytes:
    body = bytearray()
    while True:
        size_line = await reader.readuntil(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            await reader.readuntil(b"\r\n")
            return bytes(body)
        body += await reader.readexactly(size)
        await reader.readexactly(2)


@pytest.fixture
async def raw(server: Server) -> AsyncIterator[Callable[[], Any]]:
    clients: list[RawClient] = []

    async def connect() -> RawClient:
        client = await RawClient.connect(server)
        clients.append(client)
        return client

    yield connect
    for client in clients:
        await client.close()


def mask_volatile(data: bytes) -> bytes:
    """Response bytes with the date header masked (for byte-exact comparisons)."""
    return re.sub(rb"date: [^\r]*", b"date: X", data)


async def wait_until(predicate: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    """Resolve once ``predicate()`` holds (checked every few ms), or raise TimeoutError."""
    loop = asyncio.get_running_loop()
    done = loop.create_future()

    def check() -> None:
        if done.done():
            return
        if predicate():
            done.set_result(None)
        else:
            loop.call_later(0.005, check)

    check()
    await asyncio.wait_for(done, timeout)


def in_flight(server: Server) -> bool:
    from oxiserve.http.connection import Phase

    return any(conn.phase is Phase.HANDLING for conn in server.context.connections)


async def shrink_server_send_buffer(server: Server, size: int = 4096) -> None:
    """Give the server's (only) connection a small kernel send buffer, so a client that does
    not read makes the server's own buffering (and the stream's ring) fill, not the kernel's."""
    import socket

    await wait_until(lambda: len(server.context.connections) == 1)
    (conn,) = server.context.connections
    assert conn.transport is not None
    conn.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)
