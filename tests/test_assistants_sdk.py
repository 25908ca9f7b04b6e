"""The Assistants API v2 through the official async openai SDK, as its users call it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import httpx
import openai
import pytest
from openai.types.beta import Assistant, Thread
from openai.types.beta.threads import Message, Run, Text, TextDelta
from openai.types.beta.threads.runs import RunStep, ToolCall

from oxiserve import Server
from tests.conftest import TIMEOUT, running
from tests.test_assistants_events import (
    BETA,
    FORCE_WEATHER,
    MODEL,
    WEATHER,
    WEATHER_PARAMS,
    parse_sse,
)

# The SDK marks the whole Assistants API deprecated (in favour of Responses).
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

POLL_MS = 5  # poll_interval_ms of the SDK's *_and_poll helpers (its default is 1 s)
SLOW_TOKENS = 4000  # with sim_itl_ms=5: a run of 20 s, far longer than any test
T = TypeVar("T")
Sdk = openai.AsyncOpenAI


async def bounded(awaitable: Awaitable[T]) -> T:
    return await asyncio.wait_for(awaitable, TIMEOUT)


def text_of(message: Message) -> str:
    return "".join(part.text.value for part in message.content if part.type == "text")


async def new_assistant(client: Sdk, **fields: Any) -> Assistant:
    return await bounded(client.beta.assistants.create(model=MODEL, **fields))


async def new_thread(client: Sdk, *texts: str) -> Thread:
    messages: list[Any] = [{"role": "user", "content": text} for text in texts]
    return await bounded(client.beta.threads.create(messages=messages))


async def message_ids(client: Sdk, thread_id: str, **query: Any) -> list[str]:
    page = await bounded(client.beta.threads.messages.list(thread_id, **query))
    return [m.id for m in page.data]


async def run_messages(client: Sdk, thread_id: str, run_id: str) -> list[Message]:
    page = await bounded(client.beta.threads.messages.list(thread_id, run_id=run_id))
    return page.data


async def completed_run(client: Sdk) -> tuple[Assistant, Thread, Run]:
    asst, thread = await new_assistant(client), await new_thread(client, "Tell me something.")
    run = await bounded(
        client.beta.threads.runs.create_and_poll(
            thread_id=thread.id, assistant_id=asst.id, poll_interval_ms=POLL_MS
        )
    )
    assert run.status == "completed"
    return asst, thread, run


async def the_answer(client: Sdk, run: Run) -> Message:
    """The run's one message: the assistant's completed answer."""
    (message,) = await run_messages(client, run.thread_id, run.id)
    assert (message.role, message.run_id, message.status) == ("assistant", run.id, "completed")
    assert message.assistant_id == run.assistant_id
    assert text_of(message)
    return message


class Recorder(openai.AsyncAssistantEventHandler):
    """Records the callbacks the SDK fires, in order, and every text delta."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []
        self.deltas: list[str] = []
        self.delta_events = 0

    async def on_event(self, event: Any) -> None:
        self.delta_events += event.event == "thread.message.delta"

    async def on_text_delta(self, delta: TextDelta, snapshot: Text) -> None:
        self.deltas.append(delta.value or "")

    async def on_run_step_created(self, run_step: RunStep) -> None:
        self.calls.append(f"step.created:{run_step.type}")

    async def on_run_step_done(self, run_step: RunStep) -> None:
        self.calls.append(f"step.done:{run_step.type}:{run_step.status}")

    async def on_message_created(self, message: Message) -> None:
        self.calls.append("message.created")

    async def on_message_done(self, message: Message) -> None:
        self.calls.append(f"message.done:{message.status}")

    async def on_tool_call_created(self, tool_call: ToolCall) -> None:
        assert tool_call.type == "function"
        self.calls.append(f"tool_call.created:{tool_call.function.name}")

    async def on_end(self) -> None:
        self.calls.append("end")


async def consumed(manager: Any) -> Recorder:
    """Read a stream manager's events to the end; its handler."""
    async with manager as handler:
        await handler.until_done()
    assert isinstance(handler, Recorder)
    return handler


TEXT_CALLS = [
    "step.created:message_creation",
    "message.created",
    "message.done:completed",
    "step.done:message_creation:completed",
]


def tool_calls_of(run: Run) -> list[Any]:
    assert run.status == "requires_action"
    assert run.required_action is not None
    assert run.required_action.type == "submit_tool_outputs"
    calls = run.required_action.submit_tool_outputs.tool_calls
    assert calls
    for call in calls:
        assert (call.type, call.function.name) == ("function", "get_weather")
        assert set(WEATHER_PARAMS["required"]) <= set(json.loads(call.function.arguments))
    return calls


def outputs_for(calls: list[Any]) -> list[Any]:
    return [{"tool_call_id": call.id, "output": f"sunny ({n})"} for n, call in enumerate(calls)]


@pytest.fixture
async def slow() -> AsyncIterator[Sdk]:
    """A client of a server whose runs take seconds (5 ms between tokens)."""
    async with running(sim_itl_ms=5) as server:
        client = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="sk-test", max_retries=0)
        yield client
        await client.close()


async def slow_run(client: Sdk) -> Run:
    asst, thread = await new_assistant(client), await new_thread(client, "Talk for a while.")
    run = await bounded(
        client.beta.threads.runs.create(
            thread_id=thread.id, assistant_id=asst.id, max_completion_tokens=SLOW_TOKENS
        )
    )
    assert run.status in ("queued", "in_progress")
    return run


async def cancelled(client: Sdk, run: Run) -> Run:
    await bounded(client.beta.threads.runs.cancel(run.id, thread_id=run.thread_id))
    return await bounded(
        client.beta.threads.runs.poll(run.id, run.thread_id, poll_interval_ms=POLL_MS)
    )


# Assistants


ASSISTANT_FIELDS: dict[str, Any] = {
    "name": "Weather bot",
    "description": "Says what the weather is",
    "instructions": "Answer briefly.",
    "tools": [WEATHER],
    "metadata": {"team": "ops", "tier": "1"},
    "temperature": 0.5,
    "top_p": 0.9,
    "response_format": {"type": "json_object"},
}


async def test_assistant_create_returns_every_field(client: Sdk) -> None:
    asst = await new_assistant(client, **ASSISTANT_FIELDS)
    assert asst.id.startswith("asst_")
    assert (asst.object, asst.model, asst.name) == ("assistant", MODEL, "Weather bot")
    assert (asst.description, asst.instructions) == ("Says what the weather is", "Answer briefly.")
    assert (asst.metadata, asst.temperature, asst.top_p) == ({"team": "ops", "tier": "1"}, 0.5, 0.9)
    assert asst.to_dict()["response_format"] == {"type": "json_object"}
    (tool,) = asst.tools
    assert tool.type == "function"
    assert (tool.function.name, tool.function.parameters) == ("get_weather", WEATHER_PARAMS)
    assert isinstance(asst.created_at, int)
    assert asst.created_at > 1_600_000_000


async def test_assistant_retrieve_returns_what_create_did(client: Sdk) -> None:
    asst = await new_assistant(client, **ASSISTANT_FIELDS)
    got = await bounded(client.beta.assistants.retrieve(asst.id))
    assert got.to_dict() == asst.to_dict()


async def test_assistant_update_changes_only_what_it_names(client: Sdk) -> None:
    asst = await new_assistant(client, **ASSISTANT_FIELDS)
    updated = await bounded(
        client.beta.assistants.update(asst.id, name="Renamed", metadata={"team": "dev"})
    )
    assert (updated.id, updated.name, updated.metadata) == (asst.id, "Renamed", {"team": "dev"})
    got = await bounded(client.beta.assistants.retrieve(asst.id))
    assert got.to_dict() == updated.to_dict()
    unchanged = {k: v for k, v in asst.to_dict().items() if k not in ("name", "metadata")}
    assert {k: got.to_dict()[k] for k in unchanged} == unchanged


async def test_assistant_list_orders_and_pages(client: Sdk) -> None:
    ids = [(await new_assistant(client, name=f"a{n}")).id for n in range(3)]
    newest_first = await bounded(client.beta.assistants.list())
    assert [a.id for a in newest_first.data] == ids[::-1]
    assert newest_first.has_more is False
    first = await bounded(client.beta.assistants.list(order="asc", limit=2))
    assert ([a.id for a in first.data], first.has_more) == (ids[:2], True)
    rest = await bounded(client.beta.assistants.list(order="asc", limit=2, after=ids[1]))
    assert ([a.id for a in rest.data], rest.has_more) == (ids[2:], False)


async def test_assistant_delete_removes_it(client: Sdk) -> None:
    asst = await new_assistant(client)
    deleted = await bounded(client.beta.assistants.delete(asst.id))
    assert (deleted.id, deleted.object, deleted.deleted) == (asst.id, "assistant.deleted", True)
    with pytest.raises(openai.NotFoundError):
        await bounded(client.beta.assistants.retrieve(asst.id))
    assert (await bounded(client.beta.assistants.list())).data == []


# Threads and messages


async def test_thread_create_with_messages_and_metadata(client: Sdk) -> None:
    thread = await bounded(
        client.beta.threads.create(
            messages=[
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello, how can I help?"},
            ],
            metadata={"user": "u1"},
        )
    )
    assert thread.id.startswith("thread_")
    assert (thread.object, thread.metadata) == ("thread", {"user": "u1"})
    page = await bounded(client.beta.threads.messages.list(thread.id, order="asc"))
    assert [(m.role, text_of(m)) for m in page.data] == [
        ("user", "Hi"),
        ("assistant", "Hello, how can I help?"),
    ]
    for message in page.data:
        assert (message.object, message.thread_id) == ("thread.message", thread.id)
        assert (message.run_id, message.assistant_id) == (None, None)


async def test_thread_retrieve_update_delete(client: Sdk) -> None:
    thread = await bounded(client.beta.threads.create(metadata={"k": "v"}))
    got = await bounded(client.beta.threads.retrieve(thread.id))
    assert got.to_dict() == thread.to_dict()
    updated = await bounded(client.beta.threads.update(thread.id, metadata={"k": "w"}))
    assert updated.metadata == {"k": "w"}
    assert (await bounded(client.beta.threads.retrieve(thread.id))).metadata == {"k": "w"}
    deleted = await bounded(client.beta.threads.delete(thread.id))
    assert (deleted.id, deleted.object, deleted.deleted) == (thread.id, "thread.deleted", True)
    with pytest.raises(openai.NotFoundError):
        await bounded(client.beta.threads.retrieve(thread.id))
    with pytest.raises(openai.NotFoundError):
        await bounded(client.beta.threads.messages.list(thread.id))


async def test_message_create_with_a_string(client: Sdk) -> None:
    thread = await new_thread(client)
    message = await bounded(
        client.beta.threads.messages.create(thread.id, role="user", content="plain")
    )
    assert message.id.startswith("msg_")
    assert (message.object, message.thread_id, message.role) == (
        "thread.message",
        thread.id,
        "user",
    )
    assert (message.run_id, message.assistant_id) == (None, None)
    assert [part.to_dict() for part in message.content] == [
        {"type": "text", "text": {"value": "plain", "annotations": []}}
    ]


async def test_message_create_with_content_parts(client: Sdk) -> None:
    thread = await new_thread(client)
    message = await bounded(
        client.beta.threads.messages.create(
            thread.id,
            role="user",
            content=[{"type": "text", "text": "one"}, {"type": "text", "text": "two"}],
        )
    )
    assert [(part.type, part.text.value) for part in message.content if part.type == "text"] == [
        ("text", "one"),
        ("text", "two"),
    ]
    assert len(message.content) == 2


async def test_message_retrieve_update_delete(client: Sdk) -> None:
    thread = await new_thread(client, "keep me")
    message = await bounded(
        client.beta.threads.messages.create(
            thread.id, role="user", content="x", metadata={"a": "1"}
        )
    )
    got = await bounded(client.beta.threads.messages.retrieve(message.id, thread_id=thread.id))
    assert got.to_dict() == message.to_dict()
    updated = await bounded(
        client.beta.threads.messages.update(message.id, thread_id=thread.id, metadata={"a": "2"})
    )
    assert (updated.id, updated.metadata, text_of(updated)) == (message.id, {"a": "2"}, "x")
    deleted = await bounded(client.beta.threads.messages.delete(message.id, thread_id=thread.id))
    assert (deleted.id, deleted.object, deleted.deleted) == (
        message.id,
        "thread.message.deleted",
        True,
    )
    with pytest.raises(openai.NotFoundError):
        await bounded(client.beta.threads.messages.retrieve(message.id, thread_id=thread.id))
    assert len(await message_ids(client, thread.id)) == 1


async def five_messages(client: Sdk) -> tuple[str, list[str]]:
    """A thread of five messages m0..m4 and their ids, oldest first."""
    thread = await new_thread(client)
    ids = []
    for n in range(5):
        created = client.beta.threads.messages.create(thread.id, role="user", content=f"m{n}")
        ids.append((await bounded(created)).id)
    return thread.id, ids


async def test_message_list_pages_in_both_orders(client: Sdk) -> None:
    thread_id, ids = await five_messages(client)
    assert await message_ids(client, thread_id) == ids[::-1]
    assert await message_ids(client, thread_id, order="asc", limit=2) == ids[:2]
    assert await message_ids(client, thread_id, order="asc", limit=2, after=ids[1]) == ids[2:4]
    assert await message_ids(client, thread_id, order="desc", limit=2) == [ids[4], ids[3]]
    assert await message_ids(client, thread_id, order="desc", after=ids[3]) == ids[2::-1]
    assert await message_ids(client, thread_id, order="asc", before=ids[3]) == ids[:3]
    assert await message_ids(client, thread_id, order="desc", before=ids[1]) == ids[:1:-1]


async def test_message_list_page_bounds(client: Sdk) -> None:
    thread_id, ids = await five_messages(client)
    page = await bounded(client.beta.threads.messages.list(thread_id, order="asc", limit=2))
    extra = page.to_dict()
    assert (extra["object"], extra["first_id"], extra["last_id"]) == ("list", ids[0], ids[1])
    assert page.has_more is True
    last = await bounded(client.beta.threads.messages.list(thread_id, order="asc", after=ids[2]))
    assert (last.has_more, [m.id for m in last.data]) == (False, ids[3:])


async def test_message_auto_paging_visits_each_message_once(client: Sdk) -> None:
    thread_id, ids = await five_messages(client)

    async def walk(order: str) -> list[str]:
        pages = client.beta.threads.messages.list(thread_id, limit=2, order=order)  # type: ignore[arg-type]
        return [m.id async for m in pages]

    assert await bounded(walk("asc")) == ids
    assert await bounded(walk("desc")) == ids[::-1]


async def test_message_list_filters_by_run(client: Sdk) -> None:
    _, thread, run = await completed_run(client)
    everything = await message_ids(client, thread.id)
    assert len(everything) == 2
    assert await message_ids(client, thread.id, run_id=run.id) == everything[:1]


# Runs


async def test_create_and_poll_completes_with_an_answer_and_usage(client: Sdk) -> None:
    asst, thread, run = await completed_run(client)
    assert run.id.startswith("run_")
    assert (run.object, run.thread_id, run.assistant_id, run.model) == (
        "thread.run",
        thread.id,
        asst.id,
        MODEL,
    )
    assert run.completed_at is not None
    assert run.started_at is not None
    await the_answer(client, run)
    assert run.usage is not None
    assert run.usage.prompt_tokens > 0
    assert run.usage.completion_tokens > 0
    assert run.usage.total_tokens == run.usage.prompt_tokens + run.usage.completion_tokens


async def test_stream_with_an_event_handler(client: Sdk) -> None:
    asst, thread = await new_assistant(client), await new_thread(client, "Tell me something.")
    manager = client.beta.threads.runs.stream(
        thread_id=thread.id, assistant_id=asst.id, event_handler=Recorder()
    )
    handler = await bounded(consumed(manager))
    run = await bounded(handler.get_final_run())
    assert run.status == "completed"
    assert handler.calls == [*TEXT_CALLS, "end"]
    assert len(handler.deltas) == handler.delta_events >= 1
    assert "".join(handler.deltas) == text_of(await the_answer(client, run))


async def test_create_and_run_streams_events(client: Sdk) -> None:
    asst = await new_assistant(client)

    async def events() -> list[Any]:
        stream = await client.beta.threads.create_and_run(
            assistant_id=asst.id,
            thread={"messages": [{"role": "user", "content": "Hi"}]},
            stream=True,
        )
        return [event async for event in stream]

    got = await bounded(events())
    assert got[0].event == "thread.created"
    thread_id = got[0].data.id
    run_events = [e for e in got if e.data.object == "thread.run"]
    assert run_events[-1].event == "thread.run.completed"
    assert got[-1].event == "thread.run.completed"
    assert {e.data.thread_id for e in run_events} == {thread_id}
    run = run_events[-1].data
    assert text_of(await the_answer(client, run))


async def test_create_and_run_poll(client: Sdk) -> None:
    asst = await new_assistant(client)
    run = await bounded(
        client.beta.threads.create_and_run_poll(
            assistant_id=asst.id,
            thread={"messages": [{"role": "user", "content": "Hi"}]},
            poll_interval_ms=POLL_MS,
        )
    )
    assert run.status == "completed"
    answer = await the_answer(client, run)
    page = await bounded(client.beta.threads.messages.list(run.thread_id, order="asc"))
    assert [(m.role, m.id) for m in page.data][1:] == [("assistant", answer.id)]
    assert text_of(page.data[0]) == "Hi"


# Function tools


async def requires_action(client: Sdk) -> Run:
    asst, thread = await new_assistant(client, tools=[WEATHER]), await new_thread(client, "Oslo?")
    return await bounded(
        client.beta.threads.runs.create_and_poll(
            thread_id=thread.id,
            assistant_id=asst.id,
            tool_choice=FORCE_WEATHER,
            poll_interval_ms=POLL_MS,
        )
    )


async def test_function_tool_polled_round_trip(client: Sdk) -> None:
    run = await requires_action(client)
    calls = tool_calls_of(run)
    done = await bounded(
        client.beta.threads.runs.submit_tool_outputs_and_poll(
            tool_outputs=outputs_for(calls),
            run_id=run.id,
            thread_id=run.thread_id,
            poll_interval_ms=POLL_MS,
        )
    )
    assert (done.id, done.status, done.required_action) == (run.id, "completed", None)
    answer = await the_answer(client, done)
    steps = await bounded(
        client.beta.threads.runs.steps.list(run.id, thread_id=run.thread_id, order="asc")
    )
    tool_step, message_step = steps.data
    assert (tool_step.type, tool_step.status, message_step.type, message_step.status) == (
        "tool_calls",
        "completed",
        "message_creation",
        "completed",
    )
    assert tool_step.step_details.type == "tool_calls"
    assert [(c.id, c.function.output) for c in tool_step.step_details.tool_calls] == [  # type: ignore[union-attr]
        (o["tool_call_id"], o["output"]) for o in outputs_for(calls)
    ]
    assert message_step.step_details.type == "message_creation"
    assert message_step.step_details.message_creation.message_id == answer.id
    one = await bounded(
        client.beta.threads.runs.steps.retrieve(
            tool_step.id, thread_id=run.thread_id, run_id=run.id
        )
    )
    assert one.to_dict() == tool_step.to_dict()


@pytest.mark.parametrize(
    "outputs",
    [
        pytest.param(lambda calls: [{"tool_call_id": "call_unknown", "output": "x"}], id="unknown"),
        pytest.param(lambda calls: [], id="missing"),
    ],
)
async def test_submit_tool_outputs_rejects_a_wrong_set(
    client: Sdk, outputs: Callable[[list[Any]], list[Any]]
) -> None:
    run = await requires_action(client)
    calls = tool_calls_of(run)
    with pytest.raises(openai.BadRequestError):
        await bounded(
            client.beta.threads.runs.submit_tool_outputs(
                run.id, thread_id=run.thread_id, tool_outputs=outputs(calls)
            )
        )
    still = await bounded(client.beta.threads.runs.retrieve(run.id, thread_id=run.thread_id))
    assert still.to_dict() == run.to_dict()


async def test_function_tool_streamed_round_trip(client: Sdk) -> None:
    asst, thread = await new_assistant(client, tools=[WEATHER]), await new_thread(client, "Oslo?")
    first = await bounded(
        consumed(
            client.beta.threads.runs.stream(
                thread_id=thread.id,
                assistant_id=asst.id,
                tool_choice=FORCE_WEATHER,
                event_handler=Recorder(),
            )
        )
    )
    assert first.current_run is not None
    calls = tool_calls_of(first.current_run)
    assert first.calls == ["step.created:tool_calls", "tool_call.created:get_weather", "end"]
    second = await bounded(
        consumed(
            client.beta.threads.runs.submit_tool_outputs_stream(
                tool_outputs=outputs_for(calls),
                run_id=first.current_run.id,
                thread_id=thread.id,
                event_handler=Recorder(),
            )
        )
    )
    run = await bounded(second.get_final_run())
    assert (run.id, run.status) == (first.current_run.id, "completed")
    assert second.calls == ["step.done:tool_calls:completed", *TEXT_CALLS, "end"]
    assert "".join(second.deltas) == text_of(await the_answer(client, run))


# Cancel and concurrency


async def first_message(client: Sdk, run: Run) -> Message:
    """The run's assistant message, once it exists (polled, bounded in count and time)."""

    async def poll() -> Message:
        for _ in range(2000):
            messages = await run_messages(client, run.thread_id, run.id)
            if messages:
                return messages[0]
        raise AssertionError("the run never created its message")

    return await bounded(poll())


async def test_cancel_stops_a_long_run(slow: Sdk) -> None:
    run = await slow_run(slow)
    message = await first_message(slow, run)
    assert message.status == "in_progress"
    cancelling = await bounded(slow.beta.threads.runs.cancel(run.id, thread_id=run.thread_id))
    assert cancelling.status in ("cancelling", "cancelled")
    final = await bounded(
        slow.beta.threads.runs.poll(run.id, run.thread_id, poll_interval_ms=POLL_MS)
    )
    assert final.status == "cancelled"
    assert final.cancelled_at is not None
    assert final.completed_at is None
    partial = await bounded(
        slow.beta.threads.messages.retrieve(message.id, thread_id=run.thread_id)
    )
    assert partial.status == "incomplete"
    assert partial.incomplete_details is not None
    assert partial.incomplete_details.reason == "run_cancelled"
    assert len(text_of(partial).split()) < SLOW_TOKENS
    steps = await bounded(slow.beta.threads.runs.steps.list(run.id, thread_id=run.thread_id))
    assert [s.status for s in steps.data] == ["cancelled"]


async def test_second_run_on_a_busy_thread_is_refused(slow: Sdk) -> None:
    run = await slow_run(slow)
    with pytest.raises(openai.BadRequestError):
        await bounded(
            slow.beta.threads.runs.create(thread_id=run.thread_id, assistant_id=run.assistant_id)
        )
    runs = await bounded(slow.beta.threads.runs.list(run.thread_id))
    assert [r.id for r in runs.data] == [run.id]
    assert (await cancelled(slow, run)).status == "cancelled"


async def test_run_retrieve_tells_pollers_when_to_come_back(slow: Sdk) -> None:
    run = await slow_run(slow)
    response = await bounded(
        slow.beta.threads.runs.with_raw_response.retrieve(run.id, thread_id=run.thread_id)
    )
    assert response.parse().status in ("queued", "in_progress")
    assert int(response.headers["openai-poll-after-ms"]) > 0
    assert (await cancelled(slow, run)).status == "cancelled"


# Errors


@pytest.fixture
async def done_run(client: Sdk) -> Run:
    return (await completed_run(client))[2]


NOT_FOUND: dict[str, Callable[[Sdk, Run], Awaitable[Any]]] = {
    "assistant": lambda c, r: c.beta.threads.runs.create(
        thread_id=r.thread_id, assistant_id="asst_missing"
    ),
    "thread": lambda c, r: c.beta.threads.retrieve("thread_missing"),
    "thread-of-run": lambda c, r: c.beta.threads.runs.create(
        thread_id="thread_missing", assistant_id=r.assistant_id
    ),
    "message": lambda c, r: c.beta.threads.messages.retrieve("msg_missing", thread_id=r.thread_id),
    "run": lambda c, r: c.beta.threads.runs.retrieve("run_missing", thread_id=r.thread_id),
    "step": lambda c, r: c.beta.threads.runs.steps.retrieve(
        "step_missing", thread_id=r.thread_id, run_id=r.id
    ),
    "run-in-other-thread": lambda c, r: c.beta.threads.runs.retrieve(
        r.id, thread_id="thread_missing"
    ),
}


@pytest.mark.parametrize("what", list(NOT_FOUND))
async def test_unknown_ids_are_not_found(client: Sdk, done_run: Run, what: str) -> None:
    with pytest.raises(openai.NotFoundError):
        await bounded(NOT_FOUND[what](client, done_run))
    runs = await bounded(client.beta.threads.runs.list(done_run.thread_id))
    assert [r.id for r in runs.data] == [done_run.id]


def many_keys() -> dict[str, str]:
    return {f"k{n}": "v" for n in range(17)}


async def reject_run_without_assistant(client: Sdk, thread_id: str) -> None:
    await client.post(f"/threads/{thread_id}/runs", body={}, cast_to=Run, options={"headers": BETA})


BAD_BODIES: dict[str, Callable[[Sdk, Assistant, Thread], Awaitable[Any]]] = {
    "run-without-assistant": lambda c, a, t: reject_run_without_assistant(c, t.id),
    "assistant-17-keys": lambda c, a, t: c.beta.assistants.update(a.id, metadata=many_keys()),
    "thread-65-char-key": lambda c, a, t: c.beta.threads.update(t.id, metadata={"k" * 65: "v"}),
    "message-513-char-value": lambda c, a, t: c.beta.threads.messages.create(
        t.id, role="user", content="x", metadata={"k": "v" * 513}
    ),
    "new-assistant-17-keys": lambda c, a, t: c.beta.assistants.create(
        model=MODEL, metadata=many_keys()
    ),
    "new-thread-65-char-key": lambda c, a, t: c.beta.threads.create(metadata={"k" * 65: "v"}),
}


async def snapshot(client: Sdk, asst: Assistant, thread: Thread) -> list[Any]:
    """Everything a rejected request could have changed."""
    assistants = await bounded(client.beta.assistants.list())
    messages = await bounded(client.beta.threads.messages.list(thread.id))
    runs = await bounded(client.beta.threads.runs.list(thread.id))
    got_thread = await bounded(client.beta.threads.retrieve(thread.id))
    return [x.to_dict() for x in (*assistants.data, *messages.data, *runs.data, got_thread)]


@pytest.mark.parametrize("what", list(BAD_BODIES))
async def test_bad_bodies_are_refused_and_change_nothing(client: Sdk, what: str) -> None:
    asst = await new_assistant(client, metadata={"a": "1"})
    thread = await bounded(
        client.beta.threads.create(
            messages=[{"role": "user", "content": "hi"}], metadata={"t": "1"}
        )
    )
    before = await snapshot(client, asst, thread)
    with pytest.raises(openai.BadRequestError):
        await bounded(BAD_BODIES[what](client, asst, thread))
    assert await snapshot(client, asst, thread) == before


async def test_metadata_at_its_limits_is_accepted(client: Sdk) -> None:
    widest = {f"{n:02d}" + "k" * 62: "v" * 512 for n in range(16)}
    asst = await new_assistant(client, metadata=widest)
    assert asst.metadata == widest
    thread = await bounded(client.beta.threads.create(metadata=widest))
    assert (await bounded(client.beta.threads.retrieve(thread.id))).metadata == widest


# Re-attaching to a run's stream (an oxiserve extension)


async def test_reattach_replays_a_finished_run(server: Server, client: Sdk) -> None:
    _, thread, run = await completed_run(client)
    async with httpx.AsyncClient(base_url=server.url, headers=BETA, timeout=TIMEOUT) as http:
        response = await http.get(f"/v1/threads/{thread.id}/runs/{run.id}/stream")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = parse_sse(response.content)
    assert [name for name, _ in events[-2:]] == ["thread.run.completed", "done"]
    assert events[-1][1] == "[DONE]"
    assert events[-2][1]["id"] == run.id
    deltas = [data for name, data in events if name == "thread.message.delta"]
    assert deltas
    joined = "".join(d["delta"]["content"][0]["text"]["value"] for d in deltas)
    assert joined == text_of(await the_answer(client, run))
