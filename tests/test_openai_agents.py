"""The openai-agents SDK against the Responses API: a tool-calling agent, run and streamed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest
from agents import (
    Agent,
    ModelSettings,
    OpenAIResponsesModel,
    Runner,
    function_tool,
    set_tracing_disabled,
)
from agents.items import ToolCallItem, ToolCallOutputItem

from oxiserve import Server
from tests.conftest import TIMEOUT

MODEL = "oxiserve-sim"


@pytest.fixture(autouse=True)
def no_tracing() -> None:
    set_tracing_disabled(True)  # nothing may call the network


@pytest.fixture
async def sdk(server: Server) -> AsyncIterator[openai.AsyncOpenAI]:
    client = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
    yield client
    await client.close()


def weather_agent(sdk: openai.AsyncOpenAI, calls: list[str]) -> Agent[Any]:
    @function_tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        calls.append(city)
        return f"It is sunny in {city}."

    # tool_choice "required" holds for the first turn only: the agent resets it once the
    # tool was used (reset_tool_choice=True), so the second turn may answer in text.
    return Agent(
        name="weather",
        instructions="Answer questions about the weather.",
        tools=[get_weather],
        model=OpenAIResponsesModel(model=MODEL, openai_client=sdk),
        model_settings=ModelSettings(tool_choice="required"),
        reset_tool_choice=True,
    )


def assert_tool_round(items: list[Any], calls: list[str]) -> None:
    assert len(calls) == 1
    assert isinstance(calls[0], str)
    tool_calls = [item for item in items if isinstance(item, ToolCallItem)]
    outputs = [item for item in items if isinstance(item, ToolCallOutputItem)]
    assert len(tool_calls) == 1
    assert len(outputs) == 1
    assert tool_calls[0].raw_item.name == "get_weather"  # type: ignore[union-attr]
    assert outputs[0].output == f"It is sunny in {calls[0]}."


async def test_agent_calls_the_tool_then_answers(sdk: openai.AsyncOpenAI) -> None:
    calls: list[str] = []
    agent = weather_agent(sdk, calls)
    result = await asyncio.wait_for(
        Runner.run(agent, "What's the weather in Paris?", max_turns=4), TIMEOUT
    )
    assert isinstance(result.final_output, str)
    assert result.final_output
    assert_tool_round(result.new_items, calls)
    assert len(result.raw_responses) == 2
    last_id = result.raw_responses[-1].response_id
    assert last_id is not None
    stored = await asyncio.wait_for(sdk.responses.retrieve(last_id), TIMEOUT)
    assert stored.status == "completed"
    assert stored.output_text == result.final_output


async def test_streamed_agent_run_reaches_a_final_output(sdk: openai.AsyncOpenAI) -> None:
    calls: list[str] = []
    agent = weather_agent(sdk, calls)
    result = Runner.run_streamed(agent, "What's the weather in Paris?", max_turns=4)

    async def consume() -> list[str]:
        return [event.type async for event in result.stream_events()]

    kinds = await asyncio.wait_for(consume(), TIMEOUT)
    assert "raw_response_event" in kinds
    assert result.is_complete
    assert isinstance(result.final_output, str)
    assert result.final_output
    assert_tool_round(result.new_items, calls)
