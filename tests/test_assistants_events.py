"""The SSE wire of streamed Assistants runs, read raw: event order and the bare objects."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from oxiserve import Server
from tests.conftest import TIMEOUT, running

MODEL = "oxiserve-sim"
BETA = {"OpenAI-Beta": "assistants=v2"}
WEATHER_PARAMS = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}},
    "required": ["city", "unit"],
    "additionalProperties": False,
}
WEATHER = {
    "type": "function",
    "function": {"name": "get_weather", "description": "Weather now", "parameters": WEATHER_PARAMS},
}
FORCE_WEATHER = {"type": "function", "function": {"name": "get_weather"}}

DELTAS = "thread.message.delta x N"  # consecutive message deltas, collapsed by ``shape``
STEP_DELTAS = "thread.run.step.delta x N"
TEXT_RUN = [
    "thread.run.created",
    "thread.run.queued",
    "thread.run.in_progress",
    "thread.run.step.created",
    "thread.run.step.in_progress",
    "thread.message.created",
    "thread.message.in_progress",
    DELTAS,
    "thread.message.completed",
    "thread.run.step.completed",
    "thread.run.completed",
    "done",
]
# What each run event's name says of the Run it carries (created: a new run is queued).
RUN_STATUS = {
    "thread.run.created": "queued",
    "thread.run.queued": "queued",
    "thread.run.in_progress": "in_progress",
    "thread.run.requires_action": "requires_action",
    "thread.run.completed": "completed",
    "thread.run.incomplete": "incomplete",
    "thread.run.cancelling": "cancelling",
    "thread.run.cancelled": "cancelled",
    "thread.run.failed": "failed",
    "thread.run.expired": "expired",
}
Event = tuple[str, Any]  # (event name, parsed data; "[DONE]" for the done event)


def parse_sse(body: bytes) -> list[Event]:
    """The events of an SSE body (comments such as ``: ping`` skipped), data JSON-decoded."""
    events: list[Event] = []
    for block in body.decode().replace("\r\n", "\n").split("\n\n"):
        name, data = "message", []
        for line in block.split("\n"):
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].removeprefix(" "))
        if data:
            text = "\n".join(data)
            events.append((name, text if text == "[DONE]" else json.loads(text)))
    return events


def shape(events: list[Event]) -> list[str]:
    """Event names with each run of consecutive deltas collapsed into one marker."""
    names: list[str] = []
    for name, _ in events:
        marker = {"thread.message.delta": DELTAS, "thread.run.step.delta": STEP_DELTAS}.get(name)
        if marker is None or not names or names[-1] != marker:
            names.append(marker or name)
    return names


def of(events: list[Event], name: str) -> list[Any]:
    return [data for event, data in events if event == name]


def text_of(message: dict[str, Any]) -> str:
    return "".join(part["text"]["value"] for part in message["content"] if part["type"] == "text")


@pytest.fixture
async def http(server: Server) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.url, headers=BETA, timeout=TIMEOUT) as client:
        yield client


async def post(http: httpx.AsyncClient, path: str, body: dict[str, Any]) -> dict[str, Any]:
    response = await http.post(path, json=body)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


async def stream(http: httpx.AsyncClient, path: str, body: dict[str, Any]) -> list[Event]:
    """POST ``body`` with ``stream: true``; the whole event stream (it must end by itself)."""
    response = await http.post(path, json={**body, "stream": True})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    events = parse_sse(response.content)
    assert events[-1] == ("done", "[DONE]")
    return events


async def assistant_and_thread(
    http: httpx.AsyncClient, **assistant: Any
) -> tuple[dict[str, Any], dict[str, Any]]:
    asst = await post(http, "/v1/assistants", {"model": MODEL, **assistant})
    thread = await post(
        http, "/v1/threads", {"messages": [{"role": "user", "content": "Tell me something."}]}
    )
    return asst, thread


async def text_run(http: httpx.AsyncClient) -> tuple[dict[str, Any], list[Event]]:
    asst, thread = await assistant_and_thread(http)
    events = await stream(http, f"/v1/threads/{thread['id']}/runs", {"assistant_id": asst["id"]})
    return thread, events


def check_text_run(events: list[Event], thread_id: str, assistant_id: str) -> None:
    """Every payload is the bare object its event names, all about one run, step and message."""
    run_id = events[0][1]["id"]
    (message,) = of(events, "thread.message.completed")
    (step,) = of(events, "thread.run.step.completed")
    for name, data in events[:-1]:
        if name in RUN_STATUS:
            assert (data["object"], data["id"], data["status"]) == (
                "thread.run",
                run_id,
                RUN_STATUS[name],
            ), name
            assert (data["thread_id"], data["assistant_id"]) == (thread_id, assistant_id)
        elif name.startswith("thread.run.step."):
            assert (data["object"], data["id"], data["run_id"]) == (
                "thread.run.step",
                step["id"],
                run_id,
            )
            assert data["type"] == "message_creation"
            assert data["step_details"] == {
                "type": "message_creation",
                "message_creation": {"message_id": message["id"]},
            }
        elif name == "thread.message.delta":
            assert set(data) == {"id", "object", "delta"}
            assert (data["id"], data["object"]) == (message["id"], "thread.message.delta")
            (part,) = data["delta"]["content"]
            assert set(part) == {"index", "type", "text"}
            assert (part["index"], part["type"], set(part["text"]) - {"annotations"}) == (
                0,
                "text",
                {"value"},
            )
            assert isinstance(part["text"]["value"], str)
        else:
            assert name.startswith("thread.message."), name
            assert (data["object"], data["id"]) == ("thread.message", message["id"])
            assert (data["thread_id"], data["run_id"], data["role"]) == (
                thread_id,
                run_id,
                "assistant",
            )
    first_step, first_message = events[3][1], events[5][1]
    assert (first_step["status"], first_message["status"]) == ("in_progress", "in_progress")
    assert (step["status"], message["status"]) == ("completed", "completed")
    deltas = "".join(
        d["delta"]["content"][0]["text"]["value"] for d in of(events, "thread.message.delta")
    )
    assert deltas
    assert text_of(message) == deltas
    usage = step["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert usage["completion_tokens"] > 0


async def test_text_run_events_come_in_order(http: httpx.AsyncClient) -> None:
    _, events = await text_run(http)
    assert shape(events) == TEXT_RUN
    assert len(of(events, "thread.message.delta")) >= 1


async def test_text_run_events_carry_the_bare_objects(http: httpx.AsyncClient) -> None:
    thread, events = await text_run(http)
    check_text_run(events, thread["id"], events[0][1]["assistant_id"])
    (run,) = of(events, "thread.run.completed")
    assert run["usage"]["total_tokens"] == (
        run["usage"]["prompt_tokens"] + run["usage"]["completion_tokens"]
    )
    assert run["completed_at"] is not None


async def test_create_and_run_streams_thread_created_first(http: httpx.AsyncClient) -> None:
    asst = await post(http, "/v1/assistants", {"model": MODEL})
    body = {
        "assistant_id": asst["id"],
        "thread": {"messages": [{"role": "user", "content": "Hi"}], "metadata": {"k": "v"}},
    }
    events = await stream(http, "/v1/threads/runs", body)
    name, thread = events[0]
    assert name == "thread.created"
    assert (thread["object"], thread["metadata"]) == ("thread", {"k": "v"})
    assert shape(events[1:]) == TEXT_RUN
    check_text_run(events[1:], thread["id"], asst["id"])


async def tool_first_leg(http: httpx.AsyncClient) -> tuple[dict[str, Any], list[Event]]:
    asst, thread = await assistant_and_thread(http, tools=[WEATHER])
    events = await stream(
        http,
        f"/v1/threads/{thread['id']}/runs",
        {"assistant_id": asst["id"], "tool_choice": FORCE_WEATHER},
    )
    return thread, events


async def test_function_tool_first_leg_streams_the_call(http: httpx.AsyncClient) -> None:
    _, events = await tool_first_leg(http)
    assert shape(events) == [
        "thread.run.created",
        "thread.run.queued",
        "thread.run.in_progress",
        "thread.run.step.created",
        "thread.run.step.in_progress",
        STEP_DELTAS,
        "thread.run.requires_action",
        "done",
    ]
    step = events[3][1]
    assert (step["object"], step["type"], step["status"]) == (
        "thread.run.step",
        "tool_calls",
        "in_progress",
    )
    assert step["step_details"] == {"type": "tool_calls", "tool_calls": []}
    first, *later = of(events, "thread.run.step.delta")
    assert later, "the arguments come in deltas after the first one"
    assert {first["id"], *(d["id"] for d in later)} == {step["id"]}
    assert {first["object"], *(d["object"] for d in later)} == {"thread.run.step.delta"}
    (call,) = first["delta"]["step_details"]["tool_calls"]
    assert first["delta"]["step_details"]["type"] == "tool_calls"
    assert call["id"].startswith("call_")
    assert (call["index"], call["type"], call["function"]["name"]) == (0, "function", "get_weather")
    assert call["function"]["arguments"] == ""
    fragments = []
    for delta in later:
        (part,) = delta["delta"]["step_details"]["tool_calls"]
        assert set(part) == {"index", "type", "function"}
        assert set(part["function"]) == {"arguments"}
        assert (part["index"], part["type"]) == (0, "function")
        fragments.append(part["function"]["arguments"])
    arguments = json.loads("".join(fragments))
    assert set(WEATHER_PARAMS["required"]) <= set(arguments)
    run = events[-2][1]
    assert (run["object"], run["status"]) == ("thread.run", "requires_action")
    assert run["required_action"] == {
        "type": "submit_tool_outputs",
        "submit_tool_outputs": {
            "tool_calls": [
                {
                    "id": call["id"],
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": "".join(fragments)},
                }
            ]
        },
    }


async def test_submit_tool_outputs_stream_finishes_the_run(http: httpx.AsyncClient) -> None:
    thread, first_leg = await tool_first_leg(http)
    run = first_leg[-2][1]
    (call,) = run["required_action"]["submit_tool_outputs"]["tool_calls"]
    events = await stream(
        http,
        f"/v1/threads/{thread['id']}/runs/{run['id']}/submit_tool_outputs",
        {"tool_outputs": [{"tool_call_id": call["id"], "output": "12 C, sunny"}]},
    )
    assert shape(events) == [
        "thread.run.step.completed",
        "thread.run.queued",
        "thread.run.in_progress",
        *TEXT_RUN[3:],
    ]
    tool_step = events[0][1]
    assert (tool_step["type"], tool_step["status"]) == ("tool_calls", "completed")
    (done_call,) = tool_step["step_details"]["tool_calls"]
    assert (done_call["id"], done_call["function"]["output"]) == (call["id"], "12 C, sunny")
    assert {data["id"] for name, data in events if name in RUN_STATUS} == {run["id"]}
    (message,) = of(events, "thread.message.completed")
    assert text_of(message)


async def test_max_completion_tokens_makes_the_run_incomplete() -> None:
    # Lorem longer than the limit either way (the limit passed on or counted by the run).
    async with (
        running(sim_output_len=1000, sim_default_max_tokens=1000) as server,
        httpx.AsyncClient(base_url=server.url, headers=BETA, timeout=TIMEOUT) as http,
    ):
        asst, thread = await assistant_and_thread(http)
        events = await stream(
            http,
            f"/v1/threads/{thread['id']}/runs",
            {"assistant_id": asst["id"], "max_completion_tokens": 256},
        )
    names = [name for name, _ in events]
    assert "thread.run.completed" not in names
    assert "thread.message.completed" not in names
    assert names[-2:] == ["thread.run.incomplete", "done"]
    run = events[-2][1]
    assert (run["status"], run["incomplete_details"]) == (
        "incomplete",
        {"reason": "max_completion_tokens"},
    )
    assert run["usage"]["completion_tokens"] == 256
    (message,) = of(events, "thread.message.incomplete")
    assert (message["status"], message["incomplete_details"]) == (
        "incomplete",
        {"reason": "max_tokens"},
    )
    assert names.index("thread.message.incomplete") < names.index("thread.run.incomplete")
