"""POST /v1/chat/completions with the official openai SDK (sync and async) and raw HTTP."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import openai
import orjson
import pytest

from oxiserve import Server
from oxiserve.engine.sim import SimEngine
from oxiserve.http.writer import PIECE
from tests.conftest import (
    RawClient,
    running,
    shrink_server_send_buffer,
    wait_all_tasks_blocked,
    wait_until,
)

MODEL = "oxiserve-sim"
USER = [{"role": "user", "content": "Tell me something."}]


_clients: list[openai.AsyncOpenAI | openai.OpenAI] = []


def sdk(server: Server) -> openai.AsyncOpenAI:
    client = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="sk-test", max_retries=0)
    _clients.append(client)
    return client


def sync_sdk(server: Server) -> openai.OpenAI:
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="sk-test", max_retries=0)
    _clients.append(client)
    return client


@pytest.fixture(autouse=True)
async def _close_clients() -> AsyncIterator[None]:
    yield
    while _clients:
        client = _clients.pop()
        if isinstance(client, openai.AsyncOpenAI):
            await client.close()
        else:
            client.close()


@pytest.fixture
async def fixed() -> AsyncIterator[Server]:
    """A simulator that always answers the same sentence (for stop-sequence tests)."""
    async with running(sim_mode="fixed", sim_fixed_text="Hello world, this is the END of it.") as s:
        yield s


async def raw_post(server: Server, path: str, body: Any, headers: bytes = b"") -> tuple[int, bytes]:
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    client = await RawClient.connect(server)
    await client.send(
        b"POST %s HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n%s"
        b"Content-Length: %d\r\n\r\n%s" % (path.encode(), headers, len(data), data)
    )
    status, _, payload = await client.read_response()
    await client.close()
    return status, payload


def sse_data(payload: bytes) -> list[bytes]:
    return [line[6:] for line in payload.split(b"\n") if line.startswith(b"data: ")]


async def test_non_stream_async_sdk(server: Server) -> None:
    result = await sdk(server).chat.completions.create(model=MODEL, messages=USER, max_tokens=7)
    assert result.object == "chat.completion"
    assert result.choices[0].finish_reason == "length"
    assert result.choices[0].message.role == "assistant"
    assert result.usage is not None
    assert result.usage.completion_tokens == 7
    assert result.usage.total_tokens == result.usage.prompt_tokens + 7
    assert result._request_id is not None
    assert result._request_id.startswith("req_")


async def test_non_stream_sync_sdk_and_default_length(server: Server) -> None:
    result = await asyncio.to_thread(
        sync_sdk(server).chat.completions.create, model=MODEL, messages=USER
    )
    assert result.usage is not None
    assert result.usage.completion_tokens == 16


async def test_stream_async_sdk_with_usage(server: Server) -> None:
    stream = await sdk(server).chat.completions.create(
        model=MODEL, messages=USER, max_tokens=5, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = [chunk async for chunk in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    text_chunks = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(text_chunks) == 5
    assert chunks[-2].choices[0].finish_reason == "length"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 5
    assert len({c.id for c in chunks}) == 1


async def test_stream_text_equals_non_stream_text(server: Server) -> None:
    client = sdk(server)
    whole = await client.chat.completions.create(model=MODEL, messages=USER, max_tokens=30, seed=7)
    stream = await client.chat.completions.create(
        model=MODEL, messages=USER, max_tokens=30, seed=7, stream=True
    )
    pieces = [c.choices[0].delta.content or "" async for c in stream if c.choices]
    assert "".join(pieces) == whole.choices[0].message.content


async def test_stream_sync_sdk_closes_after_done(server: Server) -> None:
    def run() -> list[str]:
        stream = sync_sdk(server).chat.completions.create(
            model=MODEL, messages=USER, max_tokens=4, stream=True
        )
        return [c.choices[0].delta.content or "" for c in stream]

    pieces = await asyncio.to_thread(run)
    assert len([p for p in pieces if p]) == 4


async def test_raw_stream_wire_format(server: Server) -> None:
    body = {"model": MODEL, "messages": USER, "max_tokens": 3, "stream": True}
    client = await RawClient.connect(server)
    data = orjson.dumps(body)
    await client.send(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n%s"
        % (len(data), data)
    )
    status, headers, payload = await client.read_response()
    await client.close()
    assert status == 200
    assert headers["content-type"] == "text/event-stream"
    assert headers["cache-control"] == "no-cache"
    assert headers["x-accel-buffering"] == "no"
    assert headers["transfer-encoding"] == "chunked"
    assert not payload.startswith(b"\xef\xbb\xbf")
    assert b"id:" not in payload.replace(b'"id":', b"")
    assert b"retry:" not in payload
    frames = payload.split(b"\n\n")
    assert frames[-1] == b""
    assert all(f.startswith(b"data: ") and b"\n" not in f for f in frames[:-1])
    assert frames[-2] == b"data: [DONE]"


@pytest.mark.parametrize("stream", [False, True])
async def test_stop_sequence_split_across_tokens_never_leaks(fixed: Server, stream: bool) -> None:
    client = sdk(fixed)
    # " the" and " END" are separate tokens: the stop spans two of them.
    kwargs: dict[str, Any] = {"model": MODEL, "messages": USER, "stop": ["e END", "zzz"]}
    if stream:
        chunks = [c async for c in await client.chat.completions.create(stream=True, **kwargs)]
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        finish = [c.choices[0].finish_reason for c in chunks if c.choices][-1]
    else:
        result = await client.chat.completions.create(**kwargs)
        text, finish = result.choices[0].message.content or "", result.choices[0].finish_reason
    assert text == "Hello world, this is th"
    assert finish == "stop"


async def test_partial_stop_match_is_released_at_the_end(fixed: Server) -> None:
    result = await sdk(fixed).chat.completions.create(
        model=MODEL, messages=USER, stop="it.X", max_tokens=100
    )
    assert result.choices[0].message.content == "Hello world, this is the END of it."
    assert result.choices[0].finish_reason == "stop"


async def test_n_choices_each_with_its_index(server: Server) -> None:
    client = sdk(server)
    result = await client.chat.completions.create(model=MODEL, messages=USER, n=3, max_tokens=4)
    assert [c.index for c in result.choices] == [0, 1, 2]
    assert len({c.message.content for c in result.choices}) == 3
    assert result.usage is not None
    assert result.usage.completion_tokens == 12
    stream = await client.chat.completions.create(
        model=MODEL, messages=USER, n=3, max_tokens=4, stream=True
    )
    texts: dict[int, str] = {0: "", 1: "", 2: ""}
    finishes = {}
    async for chunk in stream:
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
            if choice.finish_reason:
                finishes[choice.index] = choice.finish_reason
    assert texts == {c.index: c.message.content for c in result.choices}
    assert finishes == {0: "length", 1: "length", 2: "length"}


async def test_unknown_model_is_404_not_found(server: Server) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        await sdk(server).chat.completions.create(model="gpt-nope", messages=USER)
    assert caught.value.code == "model_not_found"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": MODEL}, "messages"),
        ({"messages": USER}, "model"),
        ({"model": MODEL, "messages": []}, "messages"),
        ({"model": MODEL, "messages": "hi"}, "messages"),
        ({"model": MODEL, "messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
        ({"model": MODEL, "messages": [{"role": "user"}]}, "messages[0].content"),
        ({"model": MODEL, "messages": [{"role": ["user"], "content": "x"}]}, "messages[0].role"),
        ({"model": MODEL, "messages": [{"role": {}, "content": "x"}]}, "messages[0].role"),
        ({"model": MODEL, "messages": [{"role": "user", "content": 7}]}, "messages[0].content"),
        ({"model": MODEL, "messages": [{"role": "tool", "content": "x"}]},
         "messages[0].tool_call_id"),
        ({"model": MODEL, "messages": USER, "max_tokens": "ten"}, "max_tokens"),
        ({"model": MODEL, "messages": USER, "max_tokens": 0}, "max_tokens"),
        ({"model": MODEL, "messages": USER, "max_tokens": 10**9}, "max_tokens"),
        ({"model": MODEL, "messages": USER, "max_completion_tokens": 1e30},
         "max_completion_tokens"),
        ({"model": MODEL, "messages": USER, "stop": "x" * 1025}, "stop"),
        ({"model": MODEL, "messages": USER, "n": 9}, "n"),
        ({"model": MODEL, "messages": USER, "temperature": 3}, "temperature"),
        ({"model": MODEL, "messages": USER, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"model": MODEL, "messages": USER, "stream": "yes"}, "stream"),
        ({"model": MODEL, "messages": USER, "stream_options": {"include_usage": True}},
         "stream_options"),
        ({"model": MODEL, "messages": USER, "tool_choice": "required"}, "tool_choice"),
        ({"model": MODEL, "messages": USER, "response_format": {"type": "xml"}},
         "response_format.type"),
        ({"model": MODEL, "messages": USER, "top_logprobs": 3}, "top_logprobs"),
    ],
)  # fmt: skip
async def test_invalid_bodies_are_400_naming_the_param(
    server: Server, body: dict[str, Any], param: str
) -> None:
    status, payload = await raw_post(server, "/v1/chat/completions", body)
    assert status == 400
    error = orjson.loads(payload)["error"]
    assert error["param"] == param
    assert error["type"] == "invalid_request_error"


@pytest.mark.parametrize("body", [b"{not json", b"", b"[1, 2]", b'"text"', b"\xff\xfe"])
async def test_unparseable_bodies_are_400(server: Server, body: bytes) -> None:
    status, payload = await raw_post(server, "/v1/chat/completions", body)
    assert status == 400
    assert orjson.loads(payload)["error"]["message"]


async def test_content_parts_and_tool_history_are_accepted(server: Server) -> None:
    messages: Any = [
        {"role": "developer", "content": [{"type": "text", "text": "Be brief."}]},
        {"role": "user", "content": [{"type": "text", "text": "Weather?"},
                                     {"type": "image_url", "image_url": {"url": "data:,"}}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "weather", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]  # fmt: skip
    result = await sdk(server).chat.completions.create(model=MODEL, messages=messages, max_tokens=3)
    assert result.choices[0].finish_reason == "length"


@pytest.mark.parametrize(
    ("status", "error_class"),
    [
        (400, openai.BadRequestError),
        (401, openai.AuthenticationError),
        (404, openai.NotFoundError),
        (429, openai.RateLimitError),
        (500, openai.InternalServerError),
        (503, openai.InternalServerError),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
async def test_engine_errors_before_first_token_map_to_sdk_exceptions(
    server: Server, status: int, error_class: type[Exception], stream: bool
) -> None:
    with pytest.raises(error_class) as caught:
        await sdk(server).chat.completions.create(
            model=MODEL, messages=USER, stream=stream,
            extra_headers={"x-sim-error": str(status)},
        )  # fmt: skip
    assert isinstance(caught.value, openai.APIStatusError)
    assert caught.value.status_code == status


async def test_retry_after_on_429(server: Server) -> None:
    client = await RawClient.connect(server)
    data = orjson.dumps({"model": MODEL, "messages": USER})
    await client.send(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nx-sim-error: 429\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(data), data)
    )
    status, headers, _ = await client.read_response()
    await client.close()
    assert status == 429
    assert headers["retry-after"] == "1"  # the simulator's retry_after for a 429


async def test_error_mid_stream_goes_into_the_stream(server: Server) -> None:
    status, payload = await raw_post(
        server, "/v1/chat/completions",
        {"model": MODEL, "messages": USER, "stream": True, "max_tokens": 10},
        b"x-sim-error: 503\r\nx-sim-error-at: 3\r\n",
    )  # fmt: skip
    assert status == 200
    frames = sse_data(payload)
    assert b"[DONE]" not in frames
    error = orjson.loads(frames[-1])["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert sum(1 for f in frames if b'"content":"' in f and b'"content":""' not in f) == 3
    stream = await sdk(server).chat.completions.create(
        model=MODEL, messages=USER, stream=True, max_tokens=10,
        extra_headers={"x-sim-error": "503", "x-sim-error-at": "3"},
    )  # fmt: skip

    async def drain() -> None:
        async for _ in stream:
            pass

    with pytest.raises(openai.APIError):
        await drain()


async def test_slow_first_token_starts_the_stream_with_pings() -> None:
    async with running(sim_ttft_ms=400, sse_keepalive=0.1) as server:
        client = await RawClient.connect(server)
        data = orjson.dumps({"model": MODEL, "messages": USER, "stream": True, "max_tokens": 2})
        await client.send(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n%s"
            % (len(data), data)
        )
        status, _, payload = await client.read_response()
        await client.close()
    assert status == 200
    assert b": ping\n\n" in payload
    assert payload.index(b": ping") < payload.index(b'"role":"assistant"')
    assert payload.endswith(b"data: [DONE]\n\n")


async def test_client_disconnect_cancels_generation() -> None:
    async with running() as server:
        assert server.state is not None
        engine = server.state.engine
        assert isinstance(engine, SimEngine)
        client = await RawClient.connect(server)
        data = orjson.dumps(
            {"model": MODEL, "messages": USER, "stream": True, "max_tokens": 100_000}
        )
        await client.send(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n%s"
            % (len(data), data)
        )
        await asyncio.wait_for(client.reader.readuntil(b"data: "), 5)
        await wait_until(lambda: engine.tokens_produced > 100)
        client.writer.transport.abort()
        await wait_until(lambda: engine.active_generations == 0)
        produced = engine.tokens_produced
        await wait_all_tasks_blocked()  # whatever the disconnect left running has stopped
        assert engine.tokens_produced == produced < 100_000


async def test_slow_reader_keeps_server_memory_bounded_and_loses_nothing() -> None:
    async with running(write_buffer_limit=64 * 1024, stream_buffer=64) as server:
        body = {"model": MODEL, "messages": USER, "stream": True, "max_tokens": 60_000, "seed": 3}
        client = await RawClient.connect(server)
        data = orjson.dumps(body)
        client.writer.transport.pause_reading()  # read nothing for now
        await client.send(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n%s"
            % (len(data), data)
        )
        peak = 0
        assert server.state is not None
        engine = server.state.engine
        assert isinstance(engine, SimEngine)

        def finished_or_watch() -> bool:
            nonlocal peak
            peak = max(peak, server.context.buffered_bytes())
            return engine.active_generations == 0 and engine.tokens_produced >= 60_000

        await wait_until(finished_or_watch, timeout=30)
        # The write buffer limit plus one piece: a catch-up batch goes out in pieces of
        # PIECE bytes, each only while the transport is not paused.
        assert peak < 64 * 1024 + PIECE + 1024
        client.writer.transport.resume_reading()
        status, _, payload = await client.read_response(timeout=30)
        await client.close()
        frames = [orjson.loads(f) for f in sse_data(payload) if f != b"[DONE]"]
        streamed = "".join(f["choices"][0]["delta"].get("content") or "" for f in frames)
        whole = await sdk(server).chat.completions.create(**{**body, "stream": False})
        assert status == 200
        assert streamed == whole.choices[0].message.content
        assert len(frames) < 60_000  # the lag was caught up in few frames, not replayed


async def test_tool_call_required_non_stream_and_stream(server: Server) -> None:
    tools: Any = [
        {"type": "function", "function": {
            "name": "get_weather", "description": "Weather in a city",
            "parameters": {"type": "object", "properties": {
                "city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]},
                "days": {"type": "integer", "minimum": 1, "maximum": 7}},
                "required": ["city", "unit"]}}},
    ]  # fmt: skip
    client = sdk(server)
    result = await client.chat.completions.create(
        model=MODEL, messages=USER, tools=tools, tool_choice="required"
    )
    choice = result.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls is not None
    call = choice.message.tool_calls[0]
    assert call.type == "function"
    assert call.function.name == "get_weather"
    arguments = json.loads(call.function.arguments)
    assert isinstance(arguments["city"], str)
    assert arguments["unit"] in ("c", "f")
    assert 1 <= arguments.get("days", 1) <= 7
    stream = await client.chat.completions.create(
        model=MODEL, messages=USER, tools=tools, stream=True,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )  # fmt: skip
    pieces, names, ids, finish = [], [], [], None
    async for chunk in stream:
        for delta_call in chunk.choices[0].delta.tool_calls or []:
            assert delta_call.index == 0
            if delta_call.id:
                ids.append(delta_call.id)
            if delta_call.function and delta_call.function.name:
                names.append(delta_call.function.name)
            if delta_call.function and delta_call.function.arguments:
                pieces.append(delta_call.function.arguments)
        finish = chunk.choices[0].finish_reason or finish
    assert names == ["get_weather"]
    assert len(ids) == 1
    assert ids[0].startswith("call_")
    assert len(pieces) > 1
    assert json.loads("".join(pieces))["unit"] in ("c", "f")
    assert finish == "tool_calls"


async def test_logprobs_on_each_content_token(server: Server) -> None:
    client = sdk(server)
    result = await client.chat.completions.create(
        model=MODEL, messages=USER, max_tokens=4, logprobs=True, top_logprobs=2
    )
    logprobs = result.choices[0].logprobs
    assert logprobs is not None
    assert logprobs.content is not None
    assert len(logprobs.content) == 4
    assert "".join(t.token for t in logprobs.content) == result.choices[0].message.content
    for token in logprobs.content:
        assert token.logprob <= 0
        assert token.bytes == list(token.token.encode())
        assert len(token.top_logprobs) == 2
    stream = await client.chat.completions.create(
        model=MODEL, messages=USER, max_tokens=4, logprobs=True, stream=True
    )
    streamed = [
        c.choices[0].logprobs.content
        async for c in stream
        if c.choices and c.choices[0].logprobs and c.choices[0].logprobs.content
    ]
    assert sum(len(entries) for entries in streamed) == 4


async def test_a_forced_tool_named_like_a_mode_is_still_that_tool(server: Server) -> None:
    tools: Any = [
        {"type": "function", "function": {"name": "none", "parameters": {"type": "object"}}},
        {"type": "function", "function": {"name": "auto", "parameters": {"type": "object"}}},
    ]
    for name in ("none", "auto"):
        result = await sdk(server).chat.completions.create(
            model=MODEL, messages=USER, tools=tools,
            tool_choice={"type": "function", "function": {"name": name}},
        )  # fmt: skip
        calls = result.choices[0].message.tool_calls
        assert calls is not None
        assert [c.function.name for c in calls] == [name]


async def test_lagging_reader_gets_every_logprob_too() -> None:
    async with running(write_buffer_limit=16 * 1024, stream_buffer=16) as server:
        body = {"model": MODEL, "messages": USER, "stream": True, "max_tokens": 8000, "seed": 5,
                "logprobs": True, "top_logprobs": 1}  # fmt: skip
        client = await RawClient.connect(server)
        await shrink_server_send_buffer(server)
        client.writer.transport.pause_reading()
        data = orjson.dumps(body)
        await client.send(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n%s"
            % (len(data), data)
        )
        assert server.state is not None
        engine = server.state.engine
        assert isinstance(engine, SimEngine)
        await wait_until(lambda: engine.active_generations == 0 and engine.tokens_produced >= 8000)
        client.writer.transport.resume_reading()
        status, _, payload = await client.read_response(timeout=30)
        await client.close()
        frames = [orjson.loads(f) for f in sse_data(payload) if f != b"[DONE]"]
        assert len(frames) < 8000  # the reader lagged and was caught up
        streamed = [
            entry
            for f in frames
            if f["choices"] and f["choices"][0]["logprobs"]
            for entry in f["choices"][0]["logprobs"]["content"]
        ]
        whole = await sdk(server).chat.completions.create(**{**body, "stream": False})
        logprobs = whole.choices[0].logprobs
        assert logprobs is not None
        assert logprobs.content is not None
        assert status == 200
        assert [(e["token"], e["logprob"]) for e in streamed] == [
            (e.token, e.logprob) for e in logprobs.content
        ]
