"""The Responses and Conversations API through the official async openai SDK, as users call it."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterable, Awaitable
from typing import Any, TypeVar

import jsonschema
import openai
import pytest
from openai.types.responses import Response, ResponseStreamEvent

from oxiserve import Server
from tests.conftest import TIMEOUT, running, wait_until

MODEL = "oxiserve-sim"
SLOW_TOKENS = 4000  # with sim_itl_ms=5: 20 s of output, far longer than any test
T = TypeVar("T")
Sdk = openai.AsyncOpenAI

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
        "required": ["city", "days"],
        "additionalProperties": False,
    },
    "strict": True,
}
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer"},
        "tags": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["name", "age", "tags"],
    "additionalProperties": False,
}
Triple = tuple[str, int, str | None]


async def bounded(awaitable: Awaitable[T]) -> T:
    return await asyncio.wait_for(awaitable, TIMEOUT)


def sdk_for(server: Server) -> Sdk:
    return openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="sk-test", max_retries=0)


async def read_events(stream: Any, count: int | None = None) -> list[ResponseStreamEvent]:
    """The stream's events (the first ``count`` of them, then the connection is dropped)."""

    async def collect() -> list[ResponseStreamEvent]:
        events: list[ResponseStreamEvent] = []
        async for event in stream:
            events.append(event)
            if count is not None and len(events) >= count:
                break
        return events

    try:
        return await bounded(collect())
    finally:
        await bounded(stream.close())


def deltas(events: list[ResponseStreamEvent]) -> str:
    return "".join(e.delta for e in events if e.type == "response.output_text.delta")


def triples(events: list[ResponseStreamEvent]) -> list[Triple]:
    return [(e.type, e.sequence_number, getattr(e, "delta", None)) for e in events]


def assert_increasing(events: list[ResponseStreamEvent]) -> None:
    numbers = [e.sequence_number for e in events]
    assert all(a < b for a, b in itertools.pairwise(numbers)), numbers


def assert_consecutive(events: list[ResponseStreamEvent], first: int = 0) -> None:
    assert [e.sequence_number for e in events] == list(range(first, first + len(events)))


async def settled(client: Sdk, response_id: str, polls: int = 2000) -> Response:
    """Poll ``retrieve`` (bounded) until the response is neither queued nor in progress."""

    async def poll() -> Response:
        for _ in range(polls):
            response = await client.responses.retrieve(response_id)
            if response.status not in ("queued", "in_progress"):
                return response
        raise AssertionError(f"{response_id} still {response.status} after {polls} polls")

    return await bounded(poll())


async def item_ids(pages: AsyncIterable[Any]) -> list[str]:
    async def collect() -> list[str]:
        return [item.id async for item in pages]

    return await bounded(collect())


def topic_seq(server: Server, response_id: str) -> int:
    job = server.state.jobs.get(response_id)
    return -1 if job is None else job.payload.topic.seq


# --- create, retrieve, store -----------------------------------------------------------------


async def test_create_returns_a_completed_message(client: Sdk) -> None:
    response = await bounded(client.responses.create(model=MODEL, input="Say something."))
    assert response.id.startswith("resp_")
    assert (response.object, response.status, response.model) == ("response", "completed", MODEL)
    assert response.error is None
    assert response.incomplete_details is None
    assert response.output_text
    (item,) = response.output
    assert item.type == "message"
    assert item.id.startswith("msg_")
    assert (item.role, item.status) == ("assistant", "completed")
    (part,) = item.content
    assert part.type == "output_text"
    assert part.text == response.output_text
    assert part.annotations == []
    usage = response.usage
    assert usage is not None
    assert usage.input_tokens > 0
    assert usage.output_tokens > 0
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    assert usage.input_tokens_details.cached_tokens == 0
    assert usage.output_tokens_details.reasoning_tokens == 0

    again = await bounded(client.responses.retrieve(response.id))
    assert again.model_dump() == response.model_dump()


async def test_unstored_response_cannot_be_retrieved(client: Sdk) -> None:
    response = await bounded(client.responses.create(model=MODEL, input="Hi.", store=False))
    assert response.status == "completed"
    assert response.output_text
    assert response.store is False
    with pytest.raises(openai.NotFoundError):
        await bounded(client.responses.retrieve(response.id))


async def test_max_output_tokens_makes_an_incomplete_response(client: Sdk) -> None:
    response = await bounded(
        client.responses.create(model=MODEL, input="Tell me more.", max_output_tokens=20)
    )
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.usage is not None
    assert response.usage.output_tokens == 20
    assert response.output_text


# --- streaming -------------------------------------------------------------------------------


async def test_stream_helper_final_response_matches_the_deltas(client: Sdk) -> None:
    async def run() -> tuple[list[ResponseStreamEvent], Response]:
        async with client.responses.stream(model=MODEL, input="Stream it.") as stream:
            events = [event async for event in stream]
            return events, await stream.get_final_response()

    events, final = await bounded(run())
    assert events[0].type == "response.created"
    assert events[1].type == "response.in_progress"
    assert events[-1].type == "response.completed"
    assert_consecutive(events)
    assert final.status == "completed"
    assert final.output_text
    assert final.output_text == deltas(events)
    (done,) = [e for e in events if e.type == "response.output_text.done"]
    assert done.text == final.output_text
    stored = await bounded(client.responses.retrieve(final.id))
    assert stored.output_text == final.output_text
    assert stored.status == "completed"


# --- previous_response_id and input items ---------------------------------------------------


async def test_previous_response_chain_of_three(client: Sdk) -> None:
    first = await bounded(client.responses.create(model=MODEL, input="One."))
    second = await bounded(
        client.responses.create(model=MODEL, input="Two.", previous_response_id=first.id)
    )
    third = await bounded(
        client.responses.create(model=MODEL, input="Three.", previous_response_id=second.id)
    )
    assert first.previous_response_id is None
    assert second.previous_response_id == first.id
    assert third.previous_response_id == second.id
    assert all(r.status == "completed" and r.output_text for r in (first, second, third))
    # Each turn's prompt holds the turns before it (their input and output).
    tokens = [r.usage.input_tokens for r in (first, second, third) if r.usage is not None]
    assert len(tokens) == 3
    assert tokens[0] < tokens[1] < tokens[2]
    assert tokens[1] > tokens[0] + first.usage.output_tokens - 1  # type: ignore[union-attr]


async def test_input_items_paging(client: Sdk) -> None:
    texts = [f"message {i}" for i in range(5)]
    response = await bounded(
        client.responses.create(
            model=MODEL, input=[{"role": "user", "content": text} for text in texts]
        )
    )
    items = client.responses.input_items
    asc = await bounded(items.list(response.id, order="asc", limit=100))
    assert [item.content[0].text for item in asc.data] == texts  # type: ignore[union-attr]
    assert all(item.type == "message" and item.role == "user" for item in asc.data)  # type: ignore[union-attr]
    ids = [item.id for item in asc.data]
    assert len(set(ids)) == 5
    assert asc.has_more is False

    desc = await bounded(items.list(response.id, order="desc", limit=100))
    assert [item.id for item in desc.data] == ids[::-1]
    default = await bounded(items.list(response.id))
    assert [item.id for item in default.data] == ids[::-1]  # desc is the default

    page = await bounded(items.list(response.id, order="asc", limit=2))
    assert ([i.id for i in page.data], page.has_more) == (ids[:2], True)
    page = await bounded(items.list(response.id, order="asc", limit=2, after=ids[1]))
    assert ([i.id for i in page.data], page.has_more) == (ids[2:4], True)
    page = await bounded(items.list(response.id, order="asc", limit=2, after=ids[3]))
    assert ([i.id for i in page.data], page.has_more) == (ids[4:], False)
    page = await bounded(items.list(response.id, order="desc", limit=2, after=ids[3]))
    assert ([i.id for i in page.data], page.has_more) == ([ids[2], ids[1]], True)

    assert await item_ids(items.list(response.id, order="asc", limit=2)) == ids
    assert await item_ids(items.list(response.id, order="desc", limit=2)) == ids[::-1]


async def test_unknown_previous_response_is_not_found(client: Sdk) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        await bounded(
            client.responses.create(model=MODEL, input="Hi.", previous_response_id="resp_nope")
        )
    assert info.value.param == "previous_response_id"


async def test_previous_response_and_conversation_together_are_refused(client: Sdk) -> None:
    first = await bounded(client.responses.create(model=MODEL, input="One."))
    conversation = await bounded(client.conversations.create())
    with pytest.raises(openai.BadRequestError) as info:
        await bounded(
            client.responses.create(
                model=MODEL,
                input="Two.",
                previous_response_id=first.id,
                conversation=conversation.id,
            )
        )
    assert info.value.param == "conversation"


# --- function calls --------------------------------------------------------------------------


def check_weather_arguments(arguments: str) -> dict[str, Any]:
    parsed = json.loads(arguments)
    jsonschema.validate(parsed, WEATHER["parameters"])
    return parsed


async def test_required_tool_choice_gives_a_function_call(client: Sdk) -> None:
    response = await bounded(
        client.responses.create(
            model=MODEL, input="Weather in Paris?", tools=[WEATHER], tool_choice="required"
        )
    )
    assert response.status == "completed"
    call = response.output[0]
    assert call.type == "function_call"
    assert call.id is not None
    assert call.id.startswith("fc_")
    assert (call.name, call.status) == ("get_weather", "completed")
    assert call.call_id
    check_weather_arguments(call.arguments)
    assert response.tools[0].name == "get_weather"  # type: ignore[union-attr]
    assert response.tool_choice == "required"


async def test_named_tool_choice_gives_that_function(client: Sdk) -> None:
    other = dict(WEATHER, name="get_time")
    response = await bounded(
        client.responses.create(
            model=MODEL,
            input="Weather in Paris?",
            tools=[other, WEATHER],
            tool_choice={"type": "function", "name": "get_weather"},
        )
    )
    calls = [item for item in response.output if item.type == "function_call"]
    assert calls
    assert all(call.name == "get_weather" for call in calls)


async def test_streamed_function_call_and_its_output(client: Sdk) -> None:
    async def run() -> tuple[list[ResponseStreamEvent], Response]:
        async with client.responses.stream(
            model=MODEL, input="Weather in Paris?", tools=[WEATHER], tool_choice="required"
        ) as stream:
            events = [event async for event in stream]
            return events, await stream.get_final_response()

    events, final = await bounded(run())
    assert events[0].type == "response.created"
    assert_consecutive(events)
    added = [e for e in events if e.type == "response.output_item.added"]
    assert added[0].item.type == "function_call"
    assert added[0].item.arguments == ""
    item_id = added[0].item.id
    pieces = [e for e in events if e.type == "response.function_call_arguments.delta"]
    assert pieces
    assert all(e.item_id == item_id and e.output_index == 0 for e in pieces)
    (done,) = [e for e in events if e.type == "response.function_call_arguments.done"]
    joined = "".join(e.delta for e in pieces)
    assert done.arguments == joined
    assert done.item_id == item_id
    call = final.output[0]
    assert call.type == "function_call"
    assert (call.id, call.name, call.arguments) == (item_id, "get_weather", joined)
    check_weather_arguments(joined)

    answer = await bounded(
        client.responses.create(
            model=MODEL,
            previous_response_id=final.id,
            tools=[WEATHER],
            input=[{"type": "function_call_output", "call_id": call.call_id, "output": "Sunny"}],
        )
    )
    assert answer.status == "completed"
    assert [item.type for item in answer.output] == ["message"]
    assert answer.output_text
    items = await bounded(client.responses.input_items.list(answer.id))
    (given,) = items.data
    assert given.type == "function_call_output"
    assert (given.call_id, given.output) == (call.call_id, "Sunny")  # type: ignore[union-attr]


# --- structured output -----------------------------------------------------------------------


async def test_json_schema_output_is_valid(client: Sdk) -> None:
    fmt = {"type": "json_schema", "name": "person", "schema": PERSON, "strict": True}
    response = await bounded(
        client.responses.create(model=MODEL, input="A person.", text={"format": fmt})
    )
    assert response.status == "completed"
    parsed = json.loads(response.output_text)
    jsonschema.validate(parsed, PERSON)
    assert set(parsed) == {"name", "age", "tags"}
    assert isinstance(parsed["name"], str)
    assert isinstance(parsed["age"], int)
    assert response.text.format.type == "json_schema"  # type: ignore[union-attr]
    assert response.text.format.name == "person"  # type: ignore[union-attr]


async def test_json_object_output_is_an_object(client: Sdk) -> None:
    response = await bounded(
        client.responses.create(
            model=MODEL, input="Some JSON.", text={"format": {"type": "json_object"}}
        )
    )
    assert response.status == "completed"
    assert isinstance(json.loads(response.output_text), dict)


# --- background ------------------------------------------------------------------------------


async def test_background_response_is_polled_to_completion(client: Sdk) -> None:
    started = await bounded(client.responses.create(model=MODEL, input="Hi.", background=True))
    assert started.status in ("queued", "in_progress")
    assert started.background is True
    assert started.output == []
    done = await settled(client, started.id)
    assert done.status == "completed"
    assert done.output_text
    assert done.output[0].type == "message"


async def test_background_needs_store(client: Sdk) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        await bounded(
            client.responses.create(model=MODEL, input="Hi.", background=True, store=False)
        )
    assert info.value.param == "background"


@pytest.mark.parametrize("itl_ms", [0, 1])
async def test_background_stream_resumed_after_a_disconnect(itl_ms: int) -> None:
    async with running(sim_itl_ms=itl_ms, sim_default_max_tokens=40) as server:
        client = sdk_for(server)
        stream = await bounded(
            client.responses.create(model=MODEL, input="Go.", background=True, stream=True)
        )
        before = await read_events(stream, count=8)
        assert [e.type for e in before[:3]] == [
            "response.created",
            "response.queued",
            "response.in_progress",
        ]
        assert_consecutive(before)
        response_id = before[0].response.id  # type: ignore[union-attr]
        cursor = before[-1].sequence_number

        rest = await read_events(
            await bounded(
                client.responses.retrieve(response_id, stream=True, starting_after=cursor)
            )
        )
        assert rest[0].sequence_number == cursor + 1
        assert_increasing(rest)
        assert rest[-1].type == "response.completed"
        final = await bounded(client.responses.retrieve(response_id))
        assert final.status == "completed"
        assert deltas(before) + deltas(rest) == final.output_text
        assert rest[-1].response.output_text == final.output_text  # type: ignore[union-attr]
        await client.close()


async def test_resume_from_an_overrun_cursor_catches_up() -> None:
    async with running(stream_buffer=2, sim_itl_ms=1, sim_default_max_tokens=400) as server:
        client = sdk_for(server)
        stream = await bounded(
            client.responses.create(model=MODEL, input="Go.", background=True, stream=True)
        )
        before = await read_events(stream, count=7)
        assert before[0].type == "response.created"
        assert_increasing(before)
        response_id = before[0].response.id  # type: ignore[union-attr]
        cursor = before[-1].sequence_number
        # Many more events than the ring holds pass before the reader comes back.
        await wait_until(lambda: topic_seq(server, response_id) > cursor + 60)

        rest = await read_events(
            await bounded(
                client.responses.retrieve(response_id, stream=True, starting_after=cursor)
            )
        )
        assert rest[0].sequence_number > cursor
        assert_increasing(rest)
        assert rest[-1].type == "response.completed"
        # The deltas it missed came merged (catch-up), not one frame per number.
        assert len(rest) < rest[-1].sequence_number - cursor
        final = await bounded(client.responses.retrieve(response_id))
        assert final.status == "completed"
        assert deltas(before) + deltas(rest) == final.output_text
        await client.close()


async def test_stream_helper_replays_a_finished_background_stream(client: Sdk) -> None:
    live = await read_events(
        await bounded(
            client.responses.create(model=MODEL, input="Go.", background=True, stream=True)
        )
    )
    response_id = live[0].response.id  # type: ignore[union-attr]
    assert live[-1].type == "response.completed"

    async def replay() -> tuple[list[ResponseStreamEvent], Response]:
        async with client.responses.stream(response_id=response_id) as stream:
            events = [event async for event in stream]
            return events, await stream.get_final_response()

    events, final = await bounded(replay())
    assert events[0].type == "response.created"
    assert triples(events) == triples(live)
    stored = await bounded(client.responses.retrieve(response_id))
    assert final.id == stored.id == response_id
    assert (final.status, final.output_text) == (stored.status, stored.output_text)
    assert final.usage == stored.usage
    assert [item.id for item in final.output] == [item.id for item in stored.output]
    assert (final.created_at, final.completed_at) == (stored.created_at, stored.completed_at)


async def test_unstreamed_response_cannot_be_streamed(client: Sdk) -> None:
    plain = await bounded(client.responses.create(model=MODEL, input="Hi."))
    with pytest.raises(openai.BadRequestError) as info:
        await bounded(client.responses.retrieve(plain.id, stream=True))
    assert info.value.param == "stream"
    background = await bounded(client.responses.create(model=MODEL, input="Hi.", background=True))
    await settled(client, background.id)
    with pytest.raises(openai.BadRequestError):
        await bounded(client.responses.retrieve(background.id, stream=True))


async def test_replay_from_the_store_equals_the_live_stream() -> None:
    async with running(response_retention=0) as server:
        client = sdk_for(server)
        live = await read_events(
            await bounded(
                client.responses.create(model=MODEL, input="Go.", background=True, stream=True)
            )
        )
        response_id = live[0].response.id  # type: ignore[union-attr]
        await wait_until(lambda: server.state.jobs.get(response_id) is None)

        replayed = await read_events(
            await bounded(client.responses.retrieve(response_id, stream=True))
        )
        assert triples(replayed) == triples(live)
        cursor = 5
        rest = await read_events(
            await bounded(
                client.responses.retrieve(response_id, stream=True, starting_after=cursor)
            )
        )
        assert triples(rest) == triples(live)[cursor + 1 :]
        await client.close()


# --- cancel and delete -----------------------------------------------------------------------


async def test_cancel_a_background_response() -> None:
    async with running(sim_itl_ms=5) as server:
        client = sdk_for(server)
        started = await bounded(
            client.responses.create(
                model=MODEL, input="Long.", background=True, max_output_tokens=SLOW_TOKENS
            )
        )
        cancelled = await bounded(client.responses.cancel(started.id))
        assert (cancelled.id, cancelled.status) == (started.id, "cancelled")
        again = await bounded(client.responses.cancel(started.id))
        assert (again.id, again.status) == (started.id, "cancelled")
        assert again.output_text == cancelled.output_text
        stored = await bounded(client.responses.retrieve(started.id))
        assert stored.status == "cancelled"

        plain = await bounded(client.responses.create(model=MODEL, input="Hi."))
        with pytest.raises(openai.BadRequestError):
            await bounded(client.responses.cancel(plain.id))
        await client.close()


async def test_delete_a_response(client: Sdk) -> None:
    response = await bounded(client.responses.create(model=MODEL, input="Hi."))
    await bounded(client.responses.delete(response.id))
    with pytest.raises(openai.NotFoundError):
        await bounded(client.responses.retrieve(response.id))
    with pytest.raises(openai.NotFoundError):
        await bounded(client.responses.delete("resp_unknown"))


async def test_streamed_response_whose_client_leaves_ends_cancelled() -> None:
    async with running(sim_itl_ms=5) as server:
        client = sdk_for(server)
        stream = await bounded(
            client.responses.create(
                model=MODEL, input="Long.", stream=True, max_output_tokens=SLOW_TOKENS
            )
        )
        seen = await read_events(stream, count=10)
        response_id = seen[0].response.id  # type: ignore[union-attr]
        assert deltas(seen)
        final = await settled(client, response_id)
        assert final.status == "cancelled"
        assert final.output_text.startswith(deltas(seen))
        assert len(final.output_text) < 5 * SLOW_TOKENS
        await client.close()


# --- conversations ---------------------------------------------------------------------------


def message(text: str, role: str = "user") -> dict[str, Any]:
    return {"type": "message", "role": role, "content": text}


async def test_conversation_lifecycle(client: Sdk) -> None:
    created = await bounded(
        client.conversations.create(items=[message("hello")], metadata={"topic": "greetings"})
    )
    assert created.id.startswith("conv_")
    assert created.object == "conversation"
    assert created.metadata == {"topic": "greetings"}
    got = await bounded(client.conversations.retrieve(created.id))
    assert got.model_dump() == created.model_dump()
    updated = await bounded(client.conversations.update(created.id, metadata={"topic": "other"}))
    assert (updated.id, updated.metadata) == (created.id, {"topic": "other"})
    items = await bounded(client.conversations.items.list(created.id))
    (item,) = items.data
    assert item.type == "message"
    assert item.content[0].text == "hello"
    deleted = await bounded(client.conversations.delete(created.id))
    assert (deleted.id, deleted.deleted, deleted.object) == (
        created.id,
        True,
        "conversation.deleted",
    )
    with pytest.raises(openai.NotFoundError):
        await bounded(client.conversations.retrieve(created.id))


async def test_conversation_items(client: Sdk) -> None:
    conversation = await bounded(client.conversations.create())
    texts = [f"item {i}" for i in range(5)]
    added = await bounded(
        client.conversations.items.create(conversation.id, items=[message(text) for text in texts])
    )
    ids = [item.id for item in added.data]
    assert len(set(ids)) == 5
    items = client.conversations.items

    asc = await bounded(items.list(conversation.id, order="asc"))
    assert [i.id for i in asc.data] == ids
    assert [i.content[0].text for i in asc.data] == texts  # type: ignore[union-attr]
    desc = await bounded(items.list(conversation.id))
    assert [i.id for i in desc.data] == ids[::-1]  # desc is the default
    page = await bounded(items.list(conversation.id, order="asc", limit=2, after=ids[1]))
    assert ([i.id for i in page.data], page.has_more) == (ids[2:4], True)
    page = await bounded(items.list(conversation.id, order="desc", limit=2, after=ids[2]))
    assert ([i.id for i in page.data], page.has_more) == ([ids[1], ids[0]], False)
    assert await item_ids(items.list(conversation.id, order="asc", limit=2)) == ids
    assert await item_ids(items.list(conversation.id, order="desc", limit=2)) == ids[::-1]

    one = await bounded(items.retrieve(ids[2], conversation_id=conversation.id))
    assert one.id == ids[2]
    assert one.content[0].text == "item 2"
    after_delete = await bounded(items.delete(ids[2], conversation_id=conversation.id))
    assert after_delete.id == conversation.id
    left = await item_ids(items.list(conversation.id, order="asc"))
    assert left == [ids[0], ids[1], ids[3], ids[4]]
    with pytest.raises(openai.NotFoundError):
        await bounded(items.retrieve(ids[2], conversation_id=conversation.id))


async def test_response_in_a_conversation(client: Sdk) -> None:
    conversation = await bounded(
        client.conversations.create(
            items=[message("My name is Ada."), message("Hi Ada!", "assistant")]
        )
    )
    alone = await bounded(client.responses.create(model=MODEL, input="What is my name?"))
    response = await bounded(
        client.responses.create(model=MODEL, input="What is my name?", conversation=conversation.id)
    )
    assert response.status == "completed"
    assert response.conversation is not None
    assert response.conversation.id == conversation.id
    # The conversation's items were part of the prompt.
    assert response.usage is not None
    assert alone.usage is not None
    assert response.usage.input_tokens > alone.usage.input_tokens

    page = await bounded(client.conversations.items.list(conversation.id, order="asc"))
    kinds = [(i.type, getattr(i, "role", None)) for i in page.data]
    assert kinds == [
        ("message", "user"),
        ("message", "assistant"),
        ("message", "user"),
        ("message", "assistant"),
    ]
    assert page.data[2].content[0].text == "What is my name?"  # type: ignore[union-attr]
    assert page.data[3].id == response.output[0].id
    assert page.data[3].content[0].text == response.output_text  # type: ignore[union-attr]

    follow = await bounded(
        client.responses.create(model=MODEL, input="And now?", conversation={"id": conversation.id})
    )
    assert follow.usage is not None
    assert follow.usage.input_tokens > response.usage.input_tokens
    assert len(await item_ids(client.conversations.items.list(conversation.id))) == 6


async def test_unknown_conversation_is_not_found(client: Sdk) -> None:
    with pytest.raises(openai.NotFoundError):
        await bounded(client.responses.create(model=MODEL, input="Hi.", conversation="conv_nope"))
    with pytest.raises(openai.NotFoundError):
        await bounded(client.conversations.retrieve("conv_nope"))
    with pytest.raises(openai.NotFoundError):
        await bounded(client.conversations.items.list("conv_nope"))


# --- bad requests ----------------------------------------------------------------------------


async def test_unknown_model_is_not_found(client: Sdk) -> None:
    with pytest.raises(openai.NotFoundError):
        await bounded(client.responses.create(model="no-such-model", input="Hi."))


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"input": 42}, "input"),
        ({"input": [{"type": "bogus"}]}, "input[0].type"),
        (
            {"input": "Hi.", "tools": [WEATHER], "tool_choice": {"type": "function", "name": "x"}},
            "tool_choice",
        ),
        ({"input": "Hi.", "text": {"format": {"type": "yaml"}}}, "text.format.type"),
        ({"input": "Hi.", "metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
    ],
    ids=["input-type", "item-type", "tool-choice", "text-format", "metadata"],
)
async def test_bad_requests_name_the_parameter(
    client: Sdk, fields: dict[str, Any], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        await bounded(client.responses.create(model=MODEL, **fields))
    assert info.value.param == param
