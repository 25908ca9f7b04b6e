"""The deprecated ``functions`` / ``function_call`` of chat completions, as OpenAI still answers
them: ``message.function_call`` (no tool_calls) and finish_reason "function_call"."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import orjson
import pytest

from oxiserve import Server
from tests.test_chat import MODEL, USER, raw_post, sse_data

WEATHER: Any = {
    "name": "get_weather",
    "description": "Weather in a city",
    "parameters": {
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "unit": {"type": "string", "enum": ["c", "f"]},
        },
        "required": ["city", "unit"],
    },
}
PING: Any = {"name": "ping"}
FORCE_WEATHER: Any = {"name": "get_weather"}


async def test_forced_function_call_non_stream(client: openai.AsyncOpenAI) -> None:
    result = await client.chat.completions.create(
        model=MODEL, messages=USER, functions=[PING, WEATHER], function_call=FORCE_WEATHER
    )
    choice = result.choices[0]
    assert choice.finish_reason == "function_call"
    assert choice.message.tool_calls is None
    assert choice.message.content is None
    call = choice.message.function_call
    assert call is not None
    assert call.name == "get_weather"
    arguments = json.loads(call.arguments)
    assert arguments["unit"] in ("c", "f")
    assert isinstance(arguments["city"], str)


async def test_forced_function_call_stream(client: openai.AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model=MODEL, messages=USER, functions=[WEATHER], function_call=FORCE_WEATHER, stream=True
    )
    names, pieces, finishes = [], [], []
    async for chunk in stream:
        delta = chunk.choices[0].delta
        assert delta.tool_calls is None
        if delta.function_call is not None:
            if delta.function_call.name:
                names.append(delta.function_call.name)
            if delta.function_call.arguments:
                pieces.append(delta.function_call.arguments)
        finishes.append(chunk.choices[0].finish_reason)
    assert names == ["get_weather"]
    assert len(pieces) > 1
    assert json.loads("".join(pieces))["unit"] in ("c", "f")
    assert [f for f in finishes if f] == ["function_call"]


async def test_raw_http_function_call_and_history(server: Server) -> None:
    history: Any = [
        *USER,
        {"role": "assistant", "content": None,
         "function_call": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}},
        {"role": "function", "name": "get_weather", "content": '{"temp": 3}'},
    ]  # fmt: skip
    body = {"model": MODEL, "messages": history, "functions": [WEATHER],
            "function_call": FORCE_WEATHER}  # fmt: skip
    async with httpx.AsyncClient(base_url=server.url) as http:
        response = await http.post("/v1/chat/completions", json=body)
        assert response.status_code == 200
        choice = response.json()["choices"][0]
        assert choice["finish_reason"] == "function_call"
        assert "tool_calls" not in choice["message"]
        assert choice["message"]["function_call"]["name"] == "get_weather"
        streamed = await http.post("/v1/chat/completions", json=body | {"stream": True})
    chunks = [orjson.loads(d) for d in sse_data(streamed.content) if d != b"[DONE]"]
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert deltas[1] == {"function_call": {"name": "get_weather", "arguments": ""}}
    assert all(set(d) == {"function_call"} for d in deltas[1:-1])
    assert chunks[-1]["choices"][0]["finish_reason"] == "function_call"


async def test_function_call_none_and_auto(client: openai.AsyncOpenAI) -> None:
    none = await client.chat.completions.create(
        model=MODEL, messages=USER, functions=[WEATHER], function_call="none"
    )
    assert none.choices[0].message.function_call is None
    assert none.choices[0].finish_reason == "stop"
    calls = 0
    for i in range(40):
        auto = await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": f"question {i}"}],
            functions=[WEATHER],  # function_call defaults to "auto" with functions
        )  # fmt: skip
        choice = auto.choices[0]
        called = choice.message.function_call is not None
        assert choice.finish_reason == ("function_call" if called else "stop")
        calls += called
    assert 0 < calls < 40


async def test_function_call_none_leaves_tools_alone(client: openai.AsyncOpenAI) -> None:
    result = await client.chat.completions.create(
        model=MODEL, messages=USER, tools=[{"type": "function", "function": WEATHER}],
        tool_choice="required", function_call="none",
    )  # fmt: skip
    choice = result.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls is not None
    assert choice.message.function_call is None


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"functions": [WEATHER], "tools": [{"type": "function", "function": WEATHER}]},
         "functions"),
        ({"function_call": "auto"}, "function_call"),
        ({"functions": [WEATHER], "tool_choice": "auto"}, "tool_choice"),
        ({"functions": [WEATHER], "function_call": {"name": "nope"}}, "function_call"),
        ({"functions": [WEATHER], "function_call": "required"}, "function_call"),
        ({"functions": ["get_weather"]}, "functions[0]"),
        ({"functions": [PING, {"description": "no name"}]}, "functions[1].name"),
        ({"functions": [{"name": "has space"}]}, "functions[0].name"),
        ({"functions": [{"name": "f", "parameters": "{}"}]}, "functions[0].parameters"),
        ({"functions": [{"name": "f", "description": 3}]}, "functions[0].description"),
        ({"functions": [PING] * 129}, "functions"),
        ({"functions": "ping"}, "functions"),
    ],
)  # fmt: skip
async def test_invalid_functions_are_400_naming_the_param(
    server: Server, extra: dict[str, Any], param: str
) -> None:
    status, payload = await raw_post(
        server, "/v1/chat/completions", {"model": MODEL, "messages": USER, **extra}
    )
    assert status == 400
    assert orjson.loads(payload)["error"]["param"] == param


@pytest.mark.parametrize(
    ("message", "param"),
    [
        ({"role": "function", "content": "3"}, "messages[1].name"),
        ({"role": "assistant", "content": None, "function_call": "get_weather"},
         "messages[1].function_call"),
        ({"role": "assistant", "content": None, "function_call": {"name": "f"}},
         "messages[1].function_call.arguments"),
    ],
)  # fmt: skip
async def test_invalid_function_history_is_400(
    server: Server, message: dict[str, Any], param: str
) -> None:
    body = {"model": MODEL, "messages": [*USER, message]}
    status, payload = await raw_post(server, "/v1/chat/completions", body)
    assert status == 400
    assert orjson.loads(payload)["error"]["param"] == param
