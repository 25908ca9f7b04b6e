"""Memory and loop time stay bounded: large bodies go out under flow control, the server-wide
write budget holds across connections, and work proportional to a body is refused or sliced."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Mapping, Sequence

import orjson
import pytest

from oxiserve import Server
from oxiserve.engine.sim import SimEngine
from oxiserve.http.writer import PIECE
from tests.conftest import (
    RawClient,
    read_chunked,
    running,
    shrink_server_send_buffer,
    wait_all_tasks_blocked,
    wait_until,
)

MODEL = "oxiserve-sim"


def _post(path: str, body: object) -> bytes:
    data = orjson.dumps(body)
    return b"POST %s HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n%s" % (
        path.encode(),
        len(data),
        data,
    )


class CountingEngine(SimEngine):
    """The simulator, counting the inputs it has embedded so far."""

    embedded = 0

    async def embed(
        self,
        model: str,
        inputs: Sequence[str],
        dimensions: int | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> list[list[float]]:
        self.embedded += len(inputs)
        return await super().embed(model, inputs, dimensions, headers)


def _not_reading(server_port: int) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connecting
    sock.connect(("127.0.0.1", server_port))
    sock.setblocking(False)
    return sock


async def settled_buffer(server: Server) -> int:
    """What the server buffers once nothing moves any more: its clients read nothing, so the
    buffers only grow until every writer waits; the settled size is the peak."""
    await wait_all_tasks_blocked()
    return server.context.buffered_bytes()


BIG_EMBEDDINGS = {"model": MODEL, "input": [f"text {i}" for i in range(256)], "dimensions": 8192}


async def test_a_large_embeddings_answer_is_made_as_the_client_reads_it() -> None:
    from oxiserve import Config

    limit = 64 * 1024
    engine = CountingEngine(Config())
    async with running(engine=engine, write_buffer_limit=limit) as server:
        sock = _not_reading(server.port)
        loop = asyncio.get_running_loop()
        await loop.sock_sendall(sock, _post("/v1/embeddings", BIG_EMBEDDINGS))
        await wait_until(lambda: engine.embedded > 0)
        peak = await settled_buffer(server)  # the client reads nothing: everything stops
        made_while_stalled = engine.embedded
        # ~45 MB of JSON: the server made a few slices, not the whole answer, and holds
        # at most the buffer limit plus one piece for this client.
        assert made_while_stalled < 64
        assert peak <= limit + 2 * PIECE
        reader, writer = await asyncio.open_connection(sock=sock)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 200")
        assert b"transfer-encoding: chunked" in head
        body = orjson.loads(await asyncio.wait_for(read_chunked(reader), 30))
        writer.close()
    assert [item["index"] for item in body["data"]] == list(range(256))
    assert all(len(item["embedding"]) == 8192 for item in body["data"])
    assert body["usage"]["prompt_tokens"] > 256
    assert engine.embedded == 256


async def test_sliced_embeddings_equal_the_unsliced_ones() -> None:
    async with running() as server:
        client = await RawClient.connect(server)
        many = {"model": MODEL, "input": [f"text {i}" for i in range(300)], "dimensions": 512}
        await client.send(_post("/v1/embeddings", many))
        status, headers, sliced = await client.read_response(timeout=30)
        assert (status, headers["transfer-encoding"]) == (200, "chunked")
        few = {**many, "input": many["input"][250:]}  # type: ignore[index]
        await client.send(_post("/v1/embeddings", few))
        status, headers, whole = await client.read_response()
        assert "content-length" in headers
        await client.close()
    tail = orjson.loads(sliced)["data"][250:]
    assert [d["embedding"] for d in tail] == [d["embedding"] for d in orjson.loads(whole)["data"]]


async def test_the_server_wide_budget_bounds_what_all_slow_readers_hold() -> None:
    budget = 256 * 1024
    async with running(write_buffer_limit=1024 * 1024, max_buffered_bytes=budget) as server:
        loop = asyncio.get_running_loop()
        socks = [_not_reading(server.port) for _ in range(6)]
        try:
            for sock in socks:
                await loop.sock_sendall(sock, _post("/v1/embeddings", BIG_EMBEDDINGS))
            await wait_until(lambda: server.context.budget.waiting > 0)
            peak = await settled_buffer(server)
        finally:
            for sock in socks:
                sock.close()
        # six clients, each allowed 1 MiB by its own buffer limit, hold the budget together
        assert peak <= budget + 64 * 1024
        await wait_until(lambda: not server.context.connections)


async def test_a_large_json_body_waits_for_a_slow_reader_then_arrives_whole() -> None:
    async with running(write_buffer_limit=32 * 1024) as server:
        sock = _not_reading(server.port)
        loop = asyncio.get_running_loop()
        request = {"model": MODEL, "input": [f"x{i}" for i in range(80)], "dimensions": 800}
        await shrink_server_send_buffer(server)  # the kernel must not take it all at once
        await loop.sock_sendall(sock, _post("/v1/embeddings", request))  # ~1.4 MB, one slice
        await wait_until(lambda: server.context.buffered_bytes() > 0)
        assert await settled_buffer(server) <= 32 * 1024 + 2 * PIECE
        reader, writer = await asyncio.open_connection(sock=sock)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        length = int(head.split(b"content-length: ")[1].split(b"\r\n")[0])
        body = orjson.loads(await asyncio.wait_for(reader.readexactly(length), 10))
        writer.close()
    assert len(body["data"]) == 80


@pytest.mark.parametrize(
    ("request_input", "code"),
    [
        pytest.param([7] * 4_000_000, "context_length_exceeded", id="8MB-token-ids"),
        pytest.param([[1, 2]] * 2049, None, id="too-many-inputs"),
        pytest.param([list(range(8000))] * 40, "max_tokens_per_request", id="request-budget"),
        pytest.param(["word " * 9000], "context_length_exceeded", id="long-text"),
        pytest.param("x" * 1_000_000, "context_length_exceeded", id="huge-text"),
        pytest.param([1, -2], None, id="negative-id"),
        pytest.param([[1, True]], None, id="boolean-id"),
    ],
)
async def test_embedding_inputs_beyond_openais_limits_are_400(
    request_input: object, code: str | None
) -> None:
    async with running() as server:
        client = await RawClient.connect(server)
        await client.send(_post("/v1/embeddings", {"model": MODEL, "input": request_input}))
        status, _, body = await client.read_response(timeout=10)
        await client.close()
    assert status == 400
    error = orjson.loads(body)["error"]
    assert error["param"] == "input"
    if code is not None:
        assert error["code"] == code


async def test_echo_counts_the_prompts_it_repeats_in_the_budget() -> None:
    async with running(max_tokens_limit=4096) as server:
        client = await RawClient.connect(server)
        big = {"model": MODEL, "prompt": "word " * 1000, "echo": True, "n": 8, "stream": True}
        await client.send(_post("/v1/completions", big))
        status, _, body = await client.read_response()
        assert status == 400
        assert orjson.loads(body)["error"]["param"] == "echo"
        small = {**big, "n": 2, "stream": False, "max_tokens": 1}
        await client.send(_post("/v1/completions", small))
        status, _, body = await client.read_response()
        assert status == 200
        assert all(c["text"].startswith("word word") for c in orjson.loads(body)["choices"])
        await client.close()


async def test_several_prompts_each_count_once_in_usage() -> None:
    async with running() as server:
        client = await RawClient.connect(server)
        one = {"model": MODEL, "prompt": "alpha beta gamma", "max_tokens": 2, "n": 3}
        await client.send(_post("/v1/completions", one))
        _, _, body = await client.read_response()
        single = orjson.loads(body)["usage"]["prompt_tokens"]
        both = {**one, "prompt": ["alpha beta gamma", "alpha beta gamma"]}
        for stream in (False, True):
            extra = {"stream": True, "stream_options": {"include_usage": True}} if stream else {}
            await client.send(_post("/v1/completions", {**both, **extra}))
            _, _, body = await client.read_response()
            if stream:
                frames = [f for f in body.split(b"\n\n") if f.startswith(b"data: {")]
                usage = orjson.loads(frames[-1][6:])["usage"]
            else:
                usage = orjson.loads(body)["usage"]
            assert usage["prompt_tokens"] == 2 * single  # two prompts, not one, not six
            assert usage["completion_tokens"] == 2 * 3 * 2
        await client.close()


@pytest.mark.parametrize(
    ("prompt", "code"),
    [
        pytest.param([7] * 4_000_000, "context_length_exceeded", id="8MB-token-ids"),
        pytest.param([[1, 2], [7] * 200_000], "context_length_exceeded", id="one-long-array"),
        pytest.param(["a", [1, 2]], None, id="mixed"),
        pytest.param(["p"] * 17, None, id="too-many-prompts"),
        pytest.param([1, -2], None, id="negative-id"),
    ],
)
async def test_completion_prompts_beyond_the_limits_are_400(
    prompt: object, code: str | None
) -> None:
    async with running() as server:
        client = await RawClient.connect(server)
        await client.send(
            _post("/v1/completions", {"model": MODEL, "prompt": prompt, "max_tokens": 1})
        )
        status, _, body = await client.read_response(timeout=10)
        await client.close()
    assert status == 400
    error = orjson.loads(body)["error"]
    assert error["param"] == "prompt"
    if code is not None:
        assert error["code"] == code
