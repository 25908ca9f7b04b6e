"""Clients that vanish: the timeout sweep survives them, and every aborted request is logged."""

from __future__ import annotations

import asyncio
import errno
import logging
import socket

import orjson
import pytest

from oxiserve import Config
from oxiserve.api import build_router
from oxiserve.api.state import AppState
from oxiserve.engine.sim import SimEngine
from oxiserve.errors import error_response, render_error
from oxiserve.http.connection import Connection, Phase
from oxiserve.http.context import ServerContext
from tests.conftest import RawClient, in_flight, running, wait_until

MODEL = "oxiserve-sim"


class DyingTransport(asyncio.Transport):
    """A transport whose peer is gone: write_eof fails as the kernel's ENOTCONN does."""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.closed = False
        self.aborted = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += data

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        raise OSError(errno.ENOTCONN, "Transport endpoint is not connected")

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = self.closed = True

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0


def _context(**overrides: object) -> ServerContext:
    config = Config(**overrides)  # type: ignore[arg-type]
    loop = asyncio.get_running_loop()
    router = build_router(AppState(config, SimEngine(config)))
    return ServerContext(
        config, router, loop, render_error=render_error, error_response=error_response
    )


async def test_a_408_to_a_vanished_client_neither_raises_nor_stops_the_sweep() -> None:
    ctx = _context(header_timeout=0.05)
    dying, alive = Connection(ctx), Connection(ctx)
    dying_transport, alive_transport = DyingTransport(), DyingTransport()
    dying.connection_made(dying_transport)
    alive.connection_made(alive_transport)
    dying.data_received(b"GET /health HTTP/1.1\r\nHost: x\r\n")
    alive.data_received(b"GET /health HTTP/1.1\r\n")
    ctx.start_sweeping()
    try:
        await wait_until(lambda: alive.closed and dying.closed, timeout=2)
    finally:
        ctx.stop_sweeping()
    assert dying_transport.written.startswith(b"HTTP/1.1 408")
    assert alive_transport.written.startswith(b"HTTP/1.1 408")


async def test_the_sweep_goes_on_when_one_connections_check_fails(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ctx = _context(header_timeout=0.05)

    class Broken(Connection):
        def check_timeout(self, now: float) -> None:
            raise RuntimeError("boom")

    broken, slow = Broken(ctx), Connection(ctx)
    broken_transport, slow_transport = DyingTransport(), DyingTransport()
    broken.connection_made(broken_transport)
    slow.connection_made(slow_transport)
    slow.data_received(b"GET /health HTTP/1.1\r\n")
    with caplog.at_level(logging.ERROR, logger="oxiserve.http"):
        ctx.start_sweeping()
        try:
            await wait_until(lambda: slow.closed, timeout=2)
        finally:
            ctx.stop_sweeping()
    assert slow_transport.written.startswith(b"HTTP/1.1 408")
    assert broken_transport.aborted  # the failing connection is dropped, not left in limbo
    assert broken not in ctx.connections
    assert caplog.text.count("timeout check failed") >= 1


async def test_clients_that_leave_as_their_408s_arrive_do_not_disable_timeouts() -> None:
    async with running(header_timeout=0.3) as server:
        clients = [await RawClient.connect(server) for _ in range(50)]
        for client in clients:
            client.writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        await asyncio.gather(*(c.writer.drain() for c in clients))
        first = asyncio.wait(
            [asyncio.ensure_future(c.reader.read(1)) for c in clients],
            return_when=asyncio.FIRST_COMPLETED,
            timeout=5,
        )
        await first
        for client in clients:  # gone the moment the first 408 arrives: resets all round
            client.writer.transport.abort()
        for client in clients:
            await client.close()
        late = await RawClient.connect(server)
        await late.send(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # half a request
        status, _, _ = await late.read_response(timeout=5)
        assert status == 408
        await late.close()


async def test_resets_at_the_connection_limit_log_no_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with running(max_connections=1) as server:
        holder = await RawClient.connect(server)
        await wait_until(lambda: len(server.context.connections) == 1)
        with caplog.at_level(logging.WARNING):
            for _ in range(20):
                sock = socket.create_connection((server.host, server.port))
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00" * 2)
                sock.close()  # RST at once
            await holder.send(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            status, _, _ = await holder.read_response()
        assert status == 200
        assert "Traceback" not in caplog.text
        await holder.close()


def _chat(**extra: object) -> bytes:
    data = orjson.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], **extra})
    return b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n%s" % (
        len(data),
        data,
    )


@pytest.mark.parametrize("stream", [False, True])
async def test_a_request_whose_client_left_is_logged_as_499(
    caplog: pytest.LogCaptureFixture, stream: bool
) -> None:
    caplog.set_level(logging.INFO, logger="oxiserve.access")  # before the server reads it
    async with running(access_log=True, sim_itl_ms=5) as server:
        client = await RawClient.connect(server)
        await client.send(_chat(stream=stream, max_tokens=2000, user="x"))
        if stream:
            await client.reader.readuntil(b"data: ")  # the stream is under way
        else:
            await wait_until(lambda: in_flight(server))
        client.writer.transport.abort()
        await wait_until(lambda: not server.context.connections)
        await client.close()
        (line,) = [r.getMessage() for r in caplog.records if r.name == "oxiserve.access"]
        method, path, status, sent, duration, _ = line.split(" ")
        assert (method, path, status) == ("POST", "/v1/chat/completions", "499")
        assert (int(sent) > 0) is stream  # bytes of the stream that went out before the end
        assert duration.endswith("ms")


async def test_a_connection_over_the_limit_gets_its_503_though_the_peer_is_gone() -> None:
    # Rejected at the limit: answered, closed, never registered, and write_eof failing is fine.
    ctx = _context(max_connections=0)
    conn = Connection(ctx)
    transport = DyingTransport()
    conn.connection_made(transport)
    assert conn.phase is Phase.CLOSED
    assert transport.closed
    assert transport.written.startswith(b"HTTP/1.1 503")
    assert conn not in ctx.connections
