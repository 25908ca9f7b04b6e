"""A real model held to a schema: forced tool calls and JSON response formats on the oxillama
engine, through the clients that rely on them (the official SDK's parse helpers, instructor).

The model has random weights: whatever it would write, guided decoding must make it valid.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Literal

import instructor
import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

from oxiserve import Server
from oxiserve.engine.tiny_gguf import build_random
from tests.conftest import running

CHAT: Any = [{"role": "user", "content": "Book me a table."}]


class Place(BaseModel):
    city: str = Field(max_length=8)
    floor: int = Field(ge=0, le=3)


class Booking(BaseModel):
    """Bounded everywhere (a random model never ends a free string by itself)."""

    guests: int = Field(ge=1, le=12)
    kind: Literal["lunch", "dinner"]
    vegan: bool
    place: Place
    notes: list[str] = Field(max_length=2, default_factory=list)
    rating: float | None = Field(default=None, ge=0, le=5)


SCHEMA = Booking.model_json_schema()  # with $defs and a $ref: rebased inside the call
BOOK = {"type": "function",
        "function": {"name": "book", "description": "Book", "parameters": SCHEMA}}  # fmt: skip
CANCEL = {"type": "function", "function": {"name": "cancel", "parameters": {
    "type": "object", "properties": {"id": {"type": "integer", "minimum": 1, "maximum": 99}},
    "required": ["id"], "additionalProperties": False}}}  # fmt: skip


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("gguf") / "random.gguf"
    build_random(str(path))
    return path


@pytest.fixture
async def server(model: Path) -> AsyncIterator[Server]:
    async with running(engine="oxillama", model=str(model), threads=1) as server:
        yield server


def sdk(server: Server) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)


def valid(arguments: str, schema: dict[str, Any]) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(arguments)
    jsonschema.Draft202012Validator(schema).validate(value)
    return value


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_a_named_tool_is_called_with_arguments_valid_for_its_schema(
    server: Server, seed: int
) -> None:
    async with sdk(server) as client:
        reply = await client.chat.completions.create(
            model="random", messages=CHAT, tools=[BOOK, CANCEL], seed=seed, max_tokens=400,
            tool_choice={"type": "function", "function": {"name": "book"}},
        )  # fmt: skip
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls or []
    assert call.function.name == "book"
    Booking.model_validate(valid(call.function.arguments, SCHEMA))
    assert reply.usage is not None
    assert reply.usage.completion_tokens > 5


async def test_required_calls_one_of_the_tools_validly(server: Server) -> None:
    schemas = {"book": SCHEMA, "cancel": CANCEL["function"]["parameters"]}  # type: ignore[index]
    names = set()
    async with sdk(server) as client:
        for seed in range(4):
            reply = await client.chat.completions.create(
                model="random", messages=CHAT, tools=[BOOK, CANCEL], tool_choice="required",
                seed=seed, temperature=1.0, max_tokens=400,
            )  # fmt: skip
            (call,) = reply.choices[0].message.tool_calls or []
            valid(call.function.arguments, schemas[call.function.name])
            names.add(call.function.name)
    assert names <= {"book", "cancel"}


async def test_an_unknown_named_tool_is_a_400(server: Server) -> None:
    async with sdk(server) as client:
        with pytest.raises(openai.BadRequestError) as caught:
            await client.chat.completions.create(
                model="random", messages=CHAT, tools=[CANCEL],
                tool_choice={"type": "function", "function": {"name": "book"}},
            )  # fmt: skip
    assert caught.value.status_code == 400


async def test_the_sdks_parse_helper_gets_a_valid_model(server: Server) -> None:
    async with sdk(server) as client:
        reply = await client.chat.completions.parse(
            model="random", messages=CHAT, response_format=Booking, max_tokens=400
        )
    message = reply.choices[0].message
    assert reply.choices[0].finish_reason == "stop"
    assert isinstance(message.parsed, Booking)
    assert message.content is not None
    assert Booking.model_validate_json(message.content) == message.parsed


async def test_a_streamed_json_answer_joins_to_a_valid_instance(server: Server) -> None:
    fmt: Any = {"type": "json_schema",
                "json_schema": {"name": "booking", "schema": SCHEMA, "strict": False}}  # fmt: skip
    async with sdk(server) as client:
        stream = await client.chat.completions.create(
            model="random", messages=CHAT, response_format=fmt, stream=True, max_tokens=400
        )
        pieces, finish = [], None
        async for chunk in stream:
            if chunk.choices:
                pieces.append(chunk.choices[0].delta.content or "")
                finish = chunk.choices[0].finish_reason or finish
    assert finish == "stop"
    assert len([p for p in pieces if p]) > 3  # it streamed as it was made
    valid("".join(pieces), SCHEMA)


async def test_json_object_mode_answers_an_object(server: Server) -> None:
    async with sdk(server) as client:
        reply = await client.chat.completions.create(
            model="random", messages=[{"role": "user", "content": "Reply in JSON."}],
            response_format={"type": "json_object"}, max_tokens=60,
        )  # fmt: skip
    content = reply.choices[0].message.content or ""
    assert content.startswith("{")
    if reply.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(content), dict)
    else:  # a random model may write one free string until the limit: a prefix of an object
        assert reply.choices[0].finish_reason == "length"


async def test_too_few_tokens_for_the_instance_give_length(server: Server) -> None:
    async with sdk(server) as client:
        reply = await client.chat.completions.create(
            model="random", messages=CHAT, max_tokens=4,
            response_format={"type": "json_schema", "json_schema": {"name": "b", "schema": SCHEMA}},
        )  # fmt: skip
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage is not None
    assert reply.usage.completion_tokens <= 4


async def test_instructor_gets_a_valid_model_first_time(server: Server) -> None:
    for mode in (instructor.Mode.TOOLS, instructor.Mode.JSON_SCHEMA):
        async with sdk(server) as raw:
            client = instructor.from_openai(raw, mode=mode)
            booking = await client.chat.completions.create(
                model="random", messages=CHAT, response_model=Booking, max_retries=0,
                max_tokens=400,
            )  # fmt: skip
        assert isinstance(booking, Booking)


async def test_a_responses_json_schema_answer_is_valid(server: Server) -> None:
    async with sdk(server) as client:
        response = await client.responses.create(
            model="random", input="Book a table.", max_output_tokens=400,
            text={"format": {"type": "json_schema", "name": "booking", "schema": SCHEMA}},
        )  # fmt: skip
    assert response.status == "completed"
    valid(response.output_text, SCHEMA)


def nested_deeply(levels: int) -> dict[str, Any]:
    deep: dict[str, Any] = {"type": "object"}
    for _ in range(levels):
        deep = {"type": "object", "properties": {"x": deep}}
    return deep


@pytest.mark.parametrize(
    "schema",
    [nested_deeply(400), {"allOf": 5}, {"anyOf": [1, {"properties": 5}]},
     {"type": "object", "required": 5}],
    ids=["nested-400-deep", "allOf-5", "properties-5", "required-5"],
)  # fmt: skip
async def test_a_schema_too_deep_or_malformed_is_a_400_and_the_engine_serves_on(
    server: Server, schema: dict[str, Any]
) -> None:
    tool = {"type": "function", "function": {"name": "bad", "parameters": schema}}
    async with sdk(server) as client:
        with pytest.raises(openai.BadRequestError):
            await client.chat.completions.create(
                model="random",
                messages=CHAT,
                tools=[tool],
                tool_choice="required",  # type: ignore[list-item]
            )
        reply = await client.chat.completions.create(model="random", messages=CHAT, max_tokens=4)
    assert reply.choices[0].finish_reason == "length"
