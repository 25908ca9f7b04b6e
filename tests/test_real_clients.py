"""Structured output through the clients people use, end to end against a real server.

Each test asserts the client handed back a validated instance of the model.  Nothing may
leave the machine: a guard refuses every connection and name lookup beyond loopback.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Iterator
from typing import Any, Literal

import httpx
import openai
import pytest
from pydantic import BaseModel, Field

from oxiserve import Server
from tests.test_chat import MODEL

LOOPBACK = ("127.0.0.1", "::1", "localhost")


class Stop(BaseModel):
    name: str
    minutes: int = Field(ge=0, le=600)


class Trip(BaseModel):
    city: str
    kind: Literal["day", "overnight"]
    stops: list[Stop]
    budget: float | None


QUESTION = "Plan a trip to Oslo."


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[object]]:
    """Fail the test if a client tries to reach anything but this machine (telemetry,
    model price lists, trace exporters)."""
    refused: list[object] = []
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex
    real_getaddrinfo = socket.getaddrinfo

    def allowed(address: Any) -> bool:
        host = address[0] if isinstance(address, tuple) else address
        return not isinstance(host, str) or host in LOOPBACK or host.startswith("127.")

    def check(address: Any) -> None:
        if not allowed(address):
            refused.append(address)
            raise OSError(f"test guard: no network beyond loopback ({address!r})")

    def connect(self: socket.socket, address: Any) -> None:
        check(address)
        real_connect(self, address)

    def connect_ex(self: socket.socket, address: Any) -> int:
        check(address)
        return real_connect_ex(self, address)

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host is not None:
            check((host.decode() if isinstance(host, bytes) else host,))
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    yield refused
    assert refused == []


def schema_prompt() -> str:
    """How a user of a JSON mode without a schema parameter asks for one."""
    return f"Answer in JSON that follows this JSON schema: {json.dumps(Trip.model_json_schema())}"


# --- langchain-openai ---------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["json_schema", None, "json_mode", "function_calling"])
async def test_langchain_with_structured_output(server: Server, method: str | None) -> None:
    from langchain_core.messages import HumanMessage, SystemMessage
    from langchain_openai import ChatOpenAI

    http = httpx.AsyncClient()  # langchain would keep its own cached client open
    llm = ChatOpenAI(
        model=MODEL, base_url=server.url + "/v1", api_key="sk-test", max_retries=0,
        http_async_client=http,
    )  # fmt: skip
    # None: the default method (json_schema in this version); json_mode sends only
    # response_format json_object, so the schema has to be in the prompt, as its docs say.
    structured = (
        llm.with_structured_output(Trip)
        if method is None
        else llm.with_structured_output(Trip, method=method)  # type: ignore[arg-type]
    )
    messages = [SystemMessage(schema_prompt()), HumanMessage(QUESTION)]
    async with http:
        trip = await structured.ainvoke(messages if method == "json_mode" else QUESTION)
    assert isinstance(trip, Trip)


# --- litellm ------------------------------------------------------------------------------------


async def test_litellm_response_format(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    # The bundled model price list instead of a download at import.
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm  # slow to import: only here

    # litellm would keep its own cached client open; it accepts one to use instead.
    with openai.OpenAI(base_url=server.url + "/v1", api_key="sk-test", max_retries=0) as sdk:
        response: Any = await asyncio.to_thread(
            litellm.completion,
            model=f"openai/{MODEL}",
            api_base=server.url + "/v1",
            api_key="sk-test",
            messages=[{"role": "user", "content": QUESTION}],
            response_format=Trip,
            client=sdk,
        )
    assert response.choices[0].finish_reason == "stop"
    trip = Trip.model_validate_json(response.choices[0].message.content)
    assert isinstance(trip, Trip)


# --- pydantic-ai --------------------------------------------------------------------------------


@pytest.mark.parametrize("output", ["native", "prompted", "tool"])
async def test_pydantic_ai_output_types(server: Server, output: str) -> None:
    from pydantic_ai import Agent, NativeOutput, PromptedOutput
    from pydantic_ai.models.openai import OpenAIChatModel
    from pydantic_ai.providers.openai import OpenAIProvider

    sdk = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="sk-test", max_retries=0)
    model = OpenAIChatModel(MODEL, provider=OpenAIProvider(openai_client=sdk))
    output_type: Any = {
        "native": NativeOutput(Trip),  # response_format json_schema, strict
        "prompted": PromptedOutput(Trip),  # the schema in the instructions, json_object
        "tool": Trip,  # a final_result tool, tool_choice required
    }[output]
    async with sdk:
        result = await Agent(model, output_type=output_type, retries=0).run(QUESTION)
    assert isinstance(result.output, Trip)


# --- instructor ---------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["JSON", "JSON_SCHEMA", "TOOLS", "MD_JSON"])
async def test_instructor_modes(client: openai.AsyncOpenAI, mode: str) -> None:
    import instructor

    # JSON: the schema in the system prompt plus json_object; MD_JSON: the same as plain text;
    # JSON_SCHEMA: response_format json_schema; TOOLS: a forced tool call.
    patched = instructor.from_openai(client, mode=instructor.Mode[mode])
    trip = await patched.chat.completions.create(
        model=MODEL,
        response_model=Trip,
        messages=[{"role": "user", "content": QUESTION}],
        max_retries=0,
    )
    assert isinstance(trip, Trip)


# --- openai-agents ------------------------------------------------------------------------------


async def test_openai_agents_output_type(client: openai.AsyncOpenAI) -> None:
    from agents import Agent, OpenAIChatCompletionsModel, Runner, set_tracing_disabled

    set_tracing_disabled(True)  # traces would be exported to api.openai.com
    model = OpenAIChatCompletionsModel(model=MODEL, openai_client=client)
    agent = Agent(name="planner", instructions="Plan trips.", output_type=Trip, model=model)
    result = await Runner.run(agent, QUESTION)
    assert isinstance(result.final_output, Trip)
