"""Structured output (response_format) and finish reasons, with the openai SDK and raw HTTP."""

from __future__ import annotations

import enum
import json
from typing import Any, Literal

import jsonschema
import openai
import orjson
import pytest
from openai.lib._pydantic import to_strict_json_schema
from pydantic import BaseModel, Field

from oxiserve import Server
from oxiserve.api.chat_request import prompt_schema, strict_problem
from oxiserve.engine.base import ChatMessage
from tests.conftest import running
from tests.test_chat import MODEL, USER, raw_post, sse_data

# Every shape pydantic models use: $defs/$ref, enums, nullable anyOf, lists, nested objects,
# numeric and string bounds; strict: every property required, no other allowed, so
# validating against it checks that each property is there and no other is.
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "minLength": 2},
        "population": {"type": "integer", "minimum": 1, "maximum": 10_000_000},
        "kind": {"type": "string", "enum": ["capital", "town", "village"]},
        "mayor": {"anyOf": [{"$ref": "#/$defs/Person"}, {"type": "null"}]},
        "districts": {"type": "array", "items": {"$ref": "#/$defs/District"}},
        "founded": {"type": "string", "format": "date"},
    },
    "required": ["city", "population", "kind", "mayor", "districts", "founded"],
    "additionalProperties": False,
    "$defs": {
        "Person": {
            "type": "object",
            "properties": {"name": {"type": "string"}, "age": {"type": ["integer", "null"]}},
            "required": ["name", "age"],
            "additionalProperties": False,
        },
        "District": {
            "type": "object",
            "properties": {"name": {"type": "string"}, "area_km2": {"type": "number"}},
            "required": ["name", "area_km2"],
            "additionalProperties": False,
        },
    },
}
JSON_SCHEMA_FORMAT: Any = {
    "type": "json_schema",
    "json_schema": {"name": "city_facts", "schema": SCHEMA, "strict": True},
}


class Kind(enum.Enum):
    CAPITAL = "capital"
    TOWN = "town"


class Address(BaseModel):
    street: str
    number: int = Field(ge=1, le=999)


class City(BaseModel):
    name: str
    population: int = Field(ge=0)
    kind: Kind
    size: Literal["small", "large"]
    mayor: str | None = None
    addresses: list[Address]
    capital_of: Address | None


# --- json_schema --------------------------------------------------------------------------------


async def test_json_schema_answer_is_valid_non_stream_and_stream(
    client: openai.AsyncOpenAI,
) -> None:
    for seed in range(5):
        result = await client.chat.completions.create(
            model=MODEL, messages=USER, response_format=JSON_SCHEMA_FORMAT, seed=seed
        )
        choice = result.choices[0]
        assert choice.finish_reason == "stop"
        assert choice.message.content is not None
        jsonschema.validate(json.loads(choice.message.content), SCHEMA)
        stream = await client.chat.completions.create(
            model=MODEL, messages=USER, response_format=JSON_SCHEMA_FORMAT, seed=seed,
            stream=True, stream_options={"include_usage": True},
        )  # fmt: skip
        chunks = [chunk async for chunk in stream]
        pieces = [c.choices[0].delta.content for c in chunks if c.choices]
        pieces = [p for p in pieces if p]
        assert len(pieces) > 1  # in pieces, like any text
        assert "".join(pieces) == choice.message.content
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
        usage = chunks[-1].usage
        assert usage is not None
        assert usage.completion_tokens == len(pieces)


async def test_json_schema_overrides_every_sim_mode() -> None:
    for mode in ("lorem", "echo", "fixed"):
        async with running(sim_mode=mode) as server:
            status, payload = await raw_post(
                server, "/v1/chat/completions",
                {"model": MODEL, "messages": USER, "response_format": JSON_SCHEMA_FORMAT},
            )  # fmt: skip
        assert status == 200
        content = orjson.loads(payload)["choices"][0]["message"]["content"]
        jsonschema.validate(json.loads(content), SCHEMA)


async def assert_parse_validates(client: openai.AsyncOpenAI, model: type[BaseModel]) -> None:
    """parse() gives an instance of ``model`` for several seeds, its content valid against the
    strict schema (closed objects, every property required)."""
    strict = to_strict_json_schema(model)
    for seed in range(5):
        result = await client.chat.completions.parse(
            model=MODEL, messages=USER, response_format=model, seed=seed
        )
        message = result.choices[0].message
        assert isinstance(message.parsed, model)
        assert message.content is not None
        jsonschema.validate(json.loads(message.content), strict)


async def test_parse_helper_returns_a_validated_strict_model(client: openai.AsyncOpenAI) -> None:
    await assert_parse_validates(client, City)


class TreeNode(BaseModel):
    label: str
    children: list[TreeNode]
    next: TreeNode | None  # strict: required, so only null can end the recursion


async def test_a_recursive_strict_model_ends_its_recursion_with_null(
    client: openai.AsyncOpenAI,
) -> None:
    await assert_parse_validates(client, TreeNode)


async def test_stream_helper_returns_a_validated_model(client: openai.AsyncOpenAI) -> None:
    async with client.chat.completions.stream(
        model=MODEL, messages=USER, response_format=City
    ) as stream:
        deltas = [event.delta async for event in stream if event.type == "content.delta"]
        final = await stream.get_final_completion()
    parsed = final.choices[0].message.parsed
    assert isinstance(parsed, City)
    assert len(deltas) > 1
    assert "".join(deltas) == final.choices[0].message.content


class Weather(BaseModel):
    city: str
    days: int = Field(ge=1, le=7)


async def test_strict_tools_still_parse_with_both_helpers(client: openai.AsyncOpenAI) -> None:
    tools = [openai.pydantic_function_tool(Weather)]
    result = await client.chat.completions.parse(
        model=MODEL, messages=USER, tools=tools, tool_choice="required"
    )
    assert result.choices[0].finish_reason == "tool_calls"
    [call] = result.choices[0].message.tool_calls or []
    assert isinstance(call.function.parsed_arguments, Weather)
    async with client.chat.completions.stream(
        model=MODEL, messages=USER, tools=tools, tool_choice="required"
    ) as stream:
        final = await stream.get_final_completion()
    [streamed] = final.choices[0].message.tool_calls or []
    assert streamed.function.parsed_arguments == call.function.parsed_arguments


async def test_json_cut_by_max_tokens_is_length(client: openai.AsyncOpenAI) -> None:
    whole = await client.chat.completions.create(
        model=MODEL, messages=USER, response_format=JSON_SCHEMA_FORMAT
    )
    assert whole.usage is not None
    cut_at = whole.usage.completion_tokens - 1
    cut = await client.chat.completions.create(
        model=MODEL, messages=USER, response_format=JSON_SCHEMA_FORMAT, max_tokens=cut_at
    )
    assert cut.choices[0].finish_reason == "length"
    assert cut.usage is not None
    assert cut.usage.completion_tokens == cut_at
    content = cut.choices[0].message.content or ""
    assert (whole.choices[0].message.content or "").startswith(content)
    with pytest.raises(json.JSONDecodeError):
        json.loads(content)
    with pytest.raises(openai.LengthFinishReasonError):
        await client.chat.completions.parse(
            model=MODEL, messages=USER, response_format=City, max_completion_tokens=2
        )


@pytest.mark.parametrize(
    ("fmt", "param"),
    [
        ({"type": "json_schema"}, "response_format.json_schema"),
        ({"type": "json_schema", "json_schema": {"schema": SCHEMA}},
         "response_format.json_schema.name"),
        ({"type": "json_schema", "json_schema": {"name": "a b"}},
         "response_format.json_schema.name"),
        ({"type": "json_schema", "json_schema": {"name": "x", "schema": []}},
         "response_format.json_schema.schema"),
        ({"type": "json_schema", "json_schema": {"name": "x", "strict": "yes"}},
         "response_format.json_schema.strict"),
        ({"type": "json_schema", "json_schema": {"name": "x", "strict": True, "schema": {
            "type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}}},
         "response_format"),
    ],
)  # fmt: skip
async def test_invalid_json_schema_formats_are_400(
    server: Server, fmt: dict[str, Any], param: str
) -> None:
    body = {"model": MODEL, "messages": USER, "response_format": fmt}
    status, payload = await raw_post(server, "/v1/chat/completions", body)
    assert status == 400
    assert orjson.loads(payload)["error"]["param"] == param


def test_strict_problems_are_named_like_openai_names_them() -> None:
    assert strict_problem(SCHEMA) is None
    assert strict_problem(to_strict_json_schema(City)) is None
    open_nested = json.loads(json.dumps(SCHEMA))
    del open_nested["$defs"]["Person"]["additionalProperties"]
    assert strict_problem(open_nested) == (
        "In context=('$defs', 'Person'), 'additionalProperties' is required to be supplied "
        "and to be false."
    )
    optional = json.loads(json.dumps(SCHEMA))
    optional["required"].remove("founded")
    assert strict_problem(optional) == (
        "In context=(), 'required' is required to be supplied and to be an array including "
        "every key in properties. Missing 'founded'."
    )


async def test_unsatisfiable_schema_is_a_400(server: Server) -> None:
    schema = {"type": "object", "properties": {"xs": {"type": "array", "minItems": 10_000}}}
    fmt = {"type": "json_schema", "json_schema": {"name": "big", "schema": schema}}
    body = {"model": MODEL, "messages": USER, "response_format": fmt}
    status, payload = await raw_post(server, "/v1/chat/completions", body)
    assert status == 400
    assert orjson.loads(payload)["error"]["code"] == "invalid_response_format"


@pytest.mark.parametrize("n", [1, 8])
async def test_schemas_that_ask_for_huge_work_are_400_for_answers_and_tools(
    server: Server, n: int
) -> None:
    huge_const = {"type": "object", "properties": {"a": {"const": "x " * 1_000_000}}}
    many = {"type": "object", "allOf": [{"properties": {f"p{i}": {}}} for i in range(40_000)]}
    for schema in (huge_const, many):
        fmt = {"type": "json_schema", "json_schema": {"name": "big", "schema": schema}}
        body = {"model": MODEL, "messages": USER, "response_format": fmt, "n": n}
        status, payload = await raw_post(server, "/v1/chat/completions", body)
        assert status == 400
        assert orjson.loads(payload)["error"]["code"] == "invalid_response_format"
        tool = {"type": "function", "function": {"name": "f", "parameters": schema}}
        body = {"model": MODEL, "messages": USER, "tools": [tool], "tool_choice": "required"}
        status, payload = await raw_post(server, "/v1/chat/completions", {**body, "n": n})
        assert status == 400
        assert orjson.loads(payload)["error"]["code"] == "invalid_tool_schema"


# --- json_object and schemas written into the prompt ------------------------------------------


async def test_json_object_answer_is_an_object(client: openai.AsyncOpenAI) -> None:
    result = await client.chat.completions.create(
        model=MODEL, messages=USER, response_format={"type": "json_object"}
    )
    assert result.choices[0].finish_reason == "stop"
    value = json.loads(result.choices[0].message.content or "")
    assert isinstance(value, dict)
    assert value


async def test_json_object_follows_a_schema_in_the_prompt(client: openai.AsyncOpenAI) -> None:
    schema = City.model_json_schema()
    system = f"Answer with JSON matching this schema:\n```json\n{json.dumps(schema, indent=2)}\n```"
    for role in ("system", "developer", "user"):
        messages: Any = [{"role": role, "content": system}, *USER]
        result = await client.chat.completions.create(
            model=MODEL, messages=messages, response_format={"type": "json_object"}
        )
        City.model_validate_json(result.choices[0].message.content or "")


async def test_plain_text_follows_a_schema_in_the_instructions(
    client: openai.AsyncOpenAI,
) -> None:
    schema = json.dumps(City.model_json_schema())
    messages: Any = [{"role": "system", "content": f"Reply in JSON like {schema}."}, *USER]
    result = await client.chat.completions.create(model=MODEL, messages=messages)
    City.model_validate_json(result.choices[0].message.content or "")
    # In the user's turn, a schema is something to talk about, not an instruction to plain text.
    asked: Any = [{"role": "user", "content": f"What does {schema} mean?"}]
    talk = await client.chat.completions.create(model=MODEL, messages=asked)
    with pytest.raises(json.JSONDecodeError):
        json.loads(talk.choices[0].message.content or "")


def test_prompt_schema_search() -> None:
    def found(text: str, role: str = "system") -> Any:
        return prompt_schema((ChatMessage(role, text),), ("system",))

    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    text = json.dumps(schema)
    assert found(f'use {{placeholders}}, an example {{"a": 1}}, then {text} ok') == schema
    assert found(f'broken {{"a": [1, 2 then {text}') == schema
    assert found("{" * 100_000 + text) == schema
    assert found('{"a":' * 100_000) is None  # nested beyond any schema: given up, not stuck
    assert found(text, role="user") is None
    assert found("no braces at all") is None
    assert found('{"anyOf": [{"type": "string"}]}') == {"anyOf": [{"type": "string"}]}


# --- finish reasons ------------------------------------------------------------------------------


async def test_finish_reason_is_stop_without_a_client_limit(client: openai.AsyncOpenAI) -> None:
    result = await client.chat.completions.create(model=MODEL, messages=USER)
    assert result.choices[0].finish_reason == "stop"
    stream = await client.chat.completions.create(model=MODEL, messages=USER, stream=True)
    finishes = [c.choices[0].finish_reason async for c in stream if c.choices]
    assert finishes[-1] == "stop"
    limited = await client.chat.completions.create(model=MODEL, messages=USER, max_tokens=3)
    assert limited.choices[0].finish_reason == "length"
    newer = await client.chat.completions.create(
        model=MODEL, messages=USER, max_completion_tokens=3
    )
    assert newer.choices[0].finish_reason == "length"
    legacy = await client.completions.create(model=MODEL, prompt="Once")
    assert legacy.choices[0].finish_reason == "stop"
    legacy_cut = await client.completions.create(model=MODEL, prompt="Once", max_tokens=2)
    assert legacy_cut.choices[0].finish_reason == "length"


async def test_the_servers_limit_cuts_a_long_echo_with_length() -> None:
    long_text = " ".join(f"w{i}" for i in range(50))
    async with running(sim_mode="echo", max_tokens_limit=20) as server:
        body = {"model": MODEL, "messages": [{"role": "user", "content": long_text}]}
        status, payload = await raw_post(server, "/v1/chat/completions", body)
        assert status == 200
        result = orjson.loads(payload)
        assert result["choices"][0]["finish_reason"] == "length"
        assert result["usage"]["completion_tokens"] == 20
        short = {"model": MODEL, "messages": [{"role": "user", "content": "w1 w2"}]}
        status, payload = await raw_post(server, "/v1/chat/completions", short)
        assert orjson.loads(payload)["choices"][0]["finish_reason"] == "stop"


async def test_sim_output_len_is_the_answers_own_length() -> None:
    async with running(sim_output_len=4) as server:
        body = {"model": MODEL, "messages": USER, "max_tokens": 10, "stream": True}
        status, payload = await raw_post(server, "/v1/chat/completions", body)
    assert status == 200
    chunks = [orjson.loads(d) for d in sse_data(payload) if d != b"[DONE]"]
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finishes[-1] == "stop"
    assert len([c for c in chunks if c["choices"][0]["delta"].get("content")]) == 4
