"""Hostile and careless clients: small requests asking for huge work, clients that stop reading
or leave, and errors at awkward moments. The server must answer cleanly and stay healthy."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import orjson
import pytest

from oxiserve import Config, Server
from oxiserve.engine.base import EngineError, GenerationRequest, Usage
from oxiserve.engine.sim import SimEngine
from oxiserve.http.phases import Phase
from tests.conftest import (
    RawClient,
    in_flight,
    running,
    shrink_server_send_buffer,
    wait_until,
)
from tests.test_chat import MODEL, USER, raw_post, sse_data

SELF = {"$ref": "#"}


async def healthy(server: Server) -> bool:
    client = await RawClient.connect(server)
    await client.send(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
    status, _, _ = await client.read_response(timeout=2)
    await client.close()
    return status == 200


def sim(server: Server) -> SimEngine:
    assert server.state is not None
    engine = server.state.engine
    assert isinstance(engine, SimEngine)
    return engine


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "object", "required": ["l", "r"], "properties": {"l": SELF, "r": SELF}},
        {"type": "object", "properties": {f"p{i}": SELF for i in range(40)}},
        {"type": "array", "minItems": 1_000_000_000},
        {"type": "object", "minProperties": 2_000_000},
        {"type": "string", "minLength": 50_000_000},
        {"type": "number", "multipleOf": 1e-320},
        {"type": "integer", "minimum": 1e308, "multipleOf": 1e300},
        {"allOf": 5},
        {"anyOf": [1, {"properties": 5}]},
    ],
)
async def test_tool_schemas_that_cannot_be_simulated_are_400(
    server: Server, schema: dict[str, Any]
) -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": schema}}]
    body = {"model": MODEL, "messages": USER, "tools": tools, "tool_choice": "required"}
    status, payload = await asyncio.wait_for(raw_post(server, "/v1/chat/completions", body), 5)
    assert status == 400
    assert orjson.loads(payload)["error"]["code"] in ("invalid_tool_schema", "invalid_type")
    assert await healthy(server)
    assert sim(server).active_generations == 0


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions",
         {"model": MODEL, "messages": USER, "max_tokens": 131072, "logprobs": True,
          "top_logprobs": 20}),
        ("/v1/chat/completions", {"model": MODEL, "messages": USER, "max_tokens": 131072, "n": 8}),
        ("/v1/completions",
         {"model": MODEL, "prompt": ["p"] * 16, "n": 8, "max_tokens": 131072}),
        ("/v1/embeddings", {"model": MODEL, "input": ["x"] * 512, "dimensions": 8192}),
        ("/v1/embeddings", {"model": MODEL, "input": "x", "dimensions": 65536}),
    ],
)  # fmt: skip
async def test_small_requests_asking_for_huge_work_are_refused(
    server: Server, path: str, body: dict[str, Any]
) -> None:
    status, payload = await raw_post(server, path, body)
    assert status == 400
    assert orjson.loads(payload)["error"]["param"] in ("max_tokens", "input", "dimensions")


class _LateFailure:
    """A token stream that fails after a while, before its first token."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.usage = Usage()
        self.finish_reason = None
        self.tool_calls: list[Any] = []
        self.logprobs: list[Any] = []

    def __aiter__(self) -> _LateFailure:
        return self

    async def __anext__(self) -> str:
        await asyncio.sleep(self.delay)  # the engine is slow, then fails
        raise EngineError("the engine fell over", status=503, code="engine_overloaded")

    async def aclose(self) -> None:
        pass


class SlowFailingEngine(SimEngine):
    def generate(self, request: GenerationRequest) -> Any:
        return _LateFailure(0.3)


async def test_error_after_the_head_went_out_is_an_error_frame() -> None:
    engine = SlowFailingEngine(Config())
    async with running(sse_keepalive=0.05, engine=engine) as server:
        status, payload = await raw_post(
            server, "/v1/chat/completions", {"model": MODEL, "messages": USER, "stream": True}
        )
    assert status == 200
    assert payload.startswith(b": ping\n\n")
    frames = sse_data(payload)
    assert orjson.loads(frames[-1])["error"]["code"] == "engine_overloaded"
    assert b"[DONE]" not in frames


async def test_without_pings_the_head_waits_for_the_first_token() -> None:
    engine = SlowFailingEngine(Config())
    async with running(sse_keepalive=0, engine=engine) as server:
        status, payload = await raw_post(
            server, "/v1/chat/completions", {"model": MODEL, "messages": USER, "stream": True}
        )
    assert status == 503
    assert orjson.loads(payload)["error"]["code"] == "engine_overloaded"


async def test_client_closing_during_a_non_stream_request_stops_generation() -> None:
    async with running(
        sim_itl_ms=10, sim_max_running=1, sim_max_waiting=0, sim_queue_full_status=503
    ) as server:
        client = await RawClient.connect(server)
        data = orjson.dumps({"model": MODEL, "messages": USER, "max_tokens": 1000})
        await client.send(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n%s"
            % (len(data), data)
        )
        await wait_until(lambda: sim(server).active_generations == 1)
        client.writer.write_eof()  # the client gives up (FIN, not RST)
        await wait_until(lambda: sim(server).active_generations == 0, timeout=2)
        assert sim(server).tokens_produced < 1000
        assert await healthy(server)
        await client.close()


async def test_pipelining_client_that_never_reads_is_not_buffered_without_bound() -> None:
    async with running(write_buffer_limit=16 * 1024) as server:
        sock = socket.create_connection((server.host, server.port))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        request = b"GET /v1/models HTTP/1.1\r\nHost: t\r\n\r\n" * 1000
        peak = 0
        try:
            for _ in range(60):  # ~2.2 MB of requests, never reading an answer
                try:
                    await asyncio.wait_for(loop.sock_sendall(sock, request), 0.2)
                except TimeoutError:
                    break  # the server stopped reading: the kernel's buffers are full
                peak = max(peak, server.context.buffered_bytes())
            peak = max(peak, server.context.buffered_bytes())
        finally:
            sock.close()
        assert peak < 16 * 1024 + 64 * 1024


async def test_stream_to_a_client_that_reads_nothing_is_dropped_after_write_timeout() -> None:
    async with running(write_timeout=0.3, write_buffer_limit=8 * 1024) as server:
        sock = socket.create_connection((server.host, server.port))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
        data = orjson.dumps({"model": MODEL, "messages": USER, "stream": True, "max_tokens": 50000})
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n%s"
            % (len(data), data)
        )
        try:
            await wait_until(lambda: in_flight(server))
            await wait_until(lambda: not server.context.connections, timeout=5)
        finally:
            sock.close()
        assert await healthy(server)


async def test_http_1_0_stream_is_close_delimited_not_chunked(server: Server) -> None:
    client = await RawClient.connect(server)
    data = orjson.dumps({"model": MODEL, "messages": USER, "stream": True, "max_tokens": 3})
    await client.send(
        b"POST /v1/chat/completions HTTP/1.0\r\nContent-Length: %d\r\n\r\n%s" % (len(data), data)
    )
    everything = await client.read_all()
    await client.close()
    head, _, body = everything.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"transfer-encoding" not in head
    assert b"connection: close" in head
    assert body.startswith(b"data: {")
    assert body.endswith(b"data: [DONE]\n\n")


async def test_stalled_connection_outlives_the_keepalive_timeout() -> None:
    async with running(keepalive_timeout=0.2, write_buffer_limit=1024) as server:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connecting
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (server.host, server.port))
        client = RawClient(*await asyncio.open_connection(sock=sock))
        await shrink_server_send_buffer(server)
        (conn,) = server.context.connections
        client.writer.transport.pause_reading()
        count = 4000  # ~1.3 MB of answers: more than the kernel buffers hold
        await client.send(b"GET /v1/models HTTP/1.1\r\nHost: t\r\n\r\n" * count)
        await wait_until(lambda: conn.phase is Phase.STALLED)
        await asyncio.sleep(0.6)  # not reading for 3x the keep-alive timeout: the behaviour
        client.writer.transport.resume_reading()
        for _ in range(count):
            status, _, _ = await client.read_response()
            assert status == 200
        await client.close()


async def test_shutdown_does_not_wait_for_connections_whose_stream_ended() -> None:
    async with running(sim_itl_ms=5, shutdown_timeout=30) as server:
        client = await RawClient.connect(server)
        data = orjson.dumps({"model": MODEL, "messages": USER, "stream": True, "max_tokens": 40})
        await client.send(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n%s"
            % (len(data), data)
        )
        await wait_until(lambda: in_flight(server))
        loop = asyncio.get_running_loop()
        started = loop.time()
        stopping = asyncio.create_task(server.stop())
        status, headers, payload = await client.read_response()
        assert status == 200
        assert headers["transfer-encoding"] == "chunked"
        assert payload.endswith(b"data: [DONE]\n\n")
        await asyncio.wait_for(stopping, 10)
        assert loop.time() - started < 10  # not the 30 s shutdown timeout
        await client.close()
