"""/v1/responses: create (plain, streamed, background), retrieve (JSON, or the stream resumed
with ``starting_after``), delete, cancel, input items."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from oxiserve.api import params
from oxiserve.api.responses import inputs
from oxiserve.api.routes import Route
from oxiserve.api.sampling import engine_headers
from oxiserve.api.shapes import api_error
from oxiserve.api.state import AppState
from oxiserve.api.stored import list_object, on_bus, owner_of, page_args, query, store_of
from oxiserve.bus import NotOwned, RedisBus
from oxiserve.bus.followers import Follower
from oxiserve.bus.redis_bus import CALL_TIMEOUT
from oxiserve.engine.base import GenerationRequest, chatml
from oxiserve.errors import BusUnavailable, InvalidRequest, NeedsSharedState, NotFound, echo
from oxiserve.http import sse
from oxiserve.http.messages import BodyWriter, Request, Response, StreamResponse, json_response
from oxiserve.jobs import Job, Policy
from oxiserve.responses import objects
from oxiserve.responses.job import (
    UNFINISHED,
    ResponseContext,
    ResponseJob,
    item_record,
    response_record,
)
from oxiserve.responses.writer import replay
from oxiserve.store.base import Kind

MAX_CHAIN = 256  # previous_response_id links followed
MAX_CONTEXT_ITEMS = 10_000


async def create_response(state: AppState, request: Request) -> Response | StreamResponse:
    body = params.require_object(request.json())
    model = state.model(params.get_str(body, "model")).id
    stream = params.get_bool(body, "stream")
    background = params.get_bool(body, "background")
    store = params.get_bool(body, "store", True)
    if background and not store:
        raise InvalidRequest("A background response must be stored: 'background' needs "
                             "'store' true.", param="background")  # fmt: skip
    settings, generation = _settings(state, body)
    previous = settings.get("previous_response_id")
    conversation_id = _conversation_id(body)
    stateful = store or previous is not None or conversation_id is not None
    if stateful and state.bus is not None and not state.bus.healthy:
        raise BusUnavailable
    if state.config.workers > 1 and stateful and state.bus is None:
        raise NeedsSharedState(state.config.workers)  # 'store': false is served by any worker
    if previous is not None and conversation_id is not None:
        raise InvalidRequest("Use 'previous_response_id' or 'conversation', not both.",
                             param="conversation")  # fmt: skip
    items = [] if body.get("input") is None else inputs.read_input(body["input"])
    if not items and previous is None and conversation_id is None:
        raise params.missing("input")
    owner = owner_of(request)
    context = await _previous_items(state, previous, owner) if previous else []
    if conversation_id is not None:
        context = await _conversation_items(state, conversation_id, owner)
        settings["conversation"] = {"id": conversation_id}
    messages = inputs.chat_messages(settings.get("instructions"), [*context, *items])
    prompt = chatml(messages)
    response = objects.response_object(objects.new_id("resp"), model, settings,
                                       background=background)  # fmt: skip
    response["_streamed"] = stream
    engine_request = GenerationRequest(
        model=model, prompt=prompt, messages=tuple(messages), headers=engine_headers(request),
        prompt_tokens=state.engine.count_tokens(prompt), **generation,
    )  # fmt: skip
    ctx = ResponseContext(state.config, state.engine, store_of(state), state.metrics)
    job = ResponseJob(ctx, response, engine_request, owner=owner, input_items=items,
                      conversation_id=conversation_id)  # fmt: skip
    snapshot = objects.public(response)
    bus = state.bus
    if store:
        if bus is not None:  # before the store has it: a stored response always has a lease
            await on_bus(bus.lease("response", response["id"]))
        records = [item_record(response["id"], item, owner) for item in items]
        await store_of(state).put(response_record(response, owner), *records)
    running = state.jobs.start(
        job.run(), job.topic, policy=Policy.DETACHED if background else Policy.ATTACHED,
        job_id=response["id"], retention=state.config.response_retention,
    )  # fmt: skip
    running.payload = job
    if bus is not None and store:
        assert running.task is not None
        response_id = response["id"]
        running.task.add_done_callback(lambda _: bus.release("response", response_id))
        if background:
            writer = job.writer
            bus.mirror(response_id, "response", job.topic, writer.item_id,
                       state.config.response_retention,
                       layout=lambda key: (writer.seqs[key], writer.ends[key]))  # fmt: skip
            await bus.sync()
    if stream:
        return _stream(state, running, job, 0)
    if background:
        return json_response(snapshot)
    return await _wait(running, job)


def _settings(state: AppState, body: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(what the response echoes, what the engine request takes) from the body."""
    limit = state.config.max_tokens_limit
    max_output = params.get_int(body, "max_output_tokens", minimum=1, maximum=limit)
    tools, specs = inputs.read_tools(body)
    choice, mode, forced = inputs.read_tool_choice(body, specs)
    text, fmt = inputs.read_text_format(body)
    truncation = params.get_str(body, "truncation", "disabled")
    if truncation not in ("auto", "disabled"):
        raise InvalidRequest("Invalid 'truncation': use 'auto' or 'disabled'.",
                             param="truncation", code="invalid_value")  # fmt: skip
    include = params.get_list(body, "include") or []
    if not all(isinstance(name, str) for name in include):
        raise InvalidRequest("Invalid 'include': expected an array of strings.", param="include")
    settings = {
        "instructions": params.get_str(body, "instructions", None),
        "max_output_tokens": max_output,
        "metadata": params.get_metadata(body) or {},
        "parallel_tool_calls": params.get_bool(body, "parallel_tool_calls", True),
        "previous_response_id": params.get_str(body, "previous_response_id", None),
        "store": params.get_bool(body, "store", True),
        "temperature": params.get_number(body, "temperature", minimum=0.0, maximum=2.0),
        "top_p": params.get_number(body, "top_p", minimum=0.0, maximum=1.0),
        "text": text, "tool_choice": choice, "tools": tools, "truncation": truncation,
        "user": params.get_str(body, "user", None),
    }  # fmt: skip
    generation = {
        "max_tokens": max_output, "temperature": settings["temperature"],
        "top_p": settings["top_p"], "tools": specs, "tool_choice": mode, "forced_tool": forced,
        "response_format": fmt,
    }  # fmt: skip
    return settings, generation


def _conversation_id(body: dict[str, Any]) -> str | None:
    value = body.get("conversation")
    if value is None:
        return None
    if isinstance(value, dict):
        value = value.get("id")
    if not isinstance(value, str) or not value:
        raise InvalidRequest("Invalid 'conversation': expected an id or {\"id\": ...}.",
                             param="conversation", code="invalid_type")  # fmt: skip
    return value


async def _previous_items(state: AppState, response_id: str, owner: str) -> list[dict[str, Any]]:
    """The conversation so far along ``previous_response_id`` links: each response's input
    items and output, oldest first (instructions are not carried over)."""
    store = store_of(state)
    chain: list[list[dict[str, Any]]] = []
    current: str | None = response_id
    for _ in range(MAX_CHAIN):
        if current is None:
            break
        found = await store.get(Kind.RESPONSE, current, owner=owner)
        if found is None:
            if current == response_id:
                raise NotFound(f"Previous response with id '{echo(current, 64)}' not found.",
                               param="previous_response_id")  # fmt: skip
            break
        page = await store.list(Kind.ITEM, current, limit=MAX_CONTEXT_ITEMS, order="asc",
                                owner=owner)  # fmt: skip
        chain.append([*page.data, *found.get("output", [])])
        current = found.get("previous_response_id")
    return [item for turn in reversed(chain) for item in turn]


async def _conversation_items(state: AppState, conversation_id: str, owner: str) -> list[Any]:
    store = store_of(state)
    if await store.get(Kind.CONVERSATION, conversation_id, owner=owner) is None:
        raise NotFound(f"Conversation with id '{echo(conversation_id, 64)}' not found.",
                       param="conversation")  # fmt: skip
    page = await store.list(Kind.ITEM, conversation_id, limit=MAX_CONTEXT_ITEMS, order="asc",
                            owner=owner)  # fmt: skip
    return page.data


def _stream(state: AppState, running: Job, job: ResponseJob, cursor: int) -> StreamResponse:
    keepalive = state.config.sse_keepalive
    delivered = job.writer.delivered_at(cursor)

    async def produce(writer: BodyWriter) -> None:
        try:
            await sse.pump(job.topic, writer, keepalive, cursor, delivered)
        finally:
            running.release()  # a plain response stops when its reader leaves

    return StreamResponse(produce, headers=sse.SSE_HEADERS)


async def _wait(running: Job, job: ResponseJob) -> Response:
    """A plain response: the whole of it, once generated; an engine failure before any
    output is answered as an HTTP error (retryable ones with Retry-After)."""
    task = running.task
    assert task is not None
    try:
        await asyncio.wait({task})
    except asyncio.CancelledError:
        running.cancel()  # the client left
        raise
    if job.error is not None:
        raise api_error(job.error)
    return json_response(objects.public(job.response))


def _live(state: AppState, response_id: str) -> ResponseJob | None:
    running = state.jobs.get(response_id)
    payload = None if running is None else running.payload
    return payload if isinstance(payload, ResponseJob) else None


async def _find(state: AppState, request: Request, response_id: str) -> dict[str, Any]:
    live = _live(state, response_id)
    if live is not None and live.owner == owner_of(request):
        return live.response
    found = await store_of(state).get(Kind.RESPONSE, response_id, owner=owner_of(request))
    if found is None:
        raise NotFound(f"Response with id '{echo(response_id, 64)}' not found.")
    return found


async def get_response(state: AppState, request: Request) -> Response | StreamResponse:
    response_id = request.params["id"]
    response = await _find(state, request, response_id)
    args = query(request)
    if args.get("stream") not in ("true", "1"):
        return json_response(objects.public(response))
    if not response.get("_streamed"):
        raise InvalidRequest("Only responses created with 'stream': true can be streamed.",
                             param="stream")  # fmt: skip
    cursor = _cursor(args.get("starting_after"))
    live, running = _live(state, response_id), state.jobs.get(response_id)
    if live is not None and running is not None:
        return _stream(state, running, live, min(cursor, live.topic.seq))
    if state.bus is not None and response["status"] in UNFINISHED:  # live on another replica
        followed = await on_bus(state.bus.follow(response_id, state.config.stream_buffer))
        if followed is not None:
            # The owner has (at least) every frame the client read: a follower a flush behind
            # waits for them rather than sending them again.
            await followed.topic.wait_seq(cursor)
            return _stream_followed(state, followed, cursor)
        response = await _find(state, request, response_id)  # it ended meanwhile
    frames = replay(response)
    return Response(b"".join(frames[cursor:]), content_type="text/event-stream",
                    headers=sse.SSE_HEADERS)  # fmt: skip


def _stream_followed(state: AppState, followed: Follower, cursor: int) -> StreamResponse:
    """Another replica's response, through the bus: the same numbers, the same catch-up."""
    keepalive, topic = state.config.sse_keepalive, followed.topic
    cursor = min(cursor, topic.seq)
    delivered = followed.delivered_at(cursor)

    async def produce(writer: BodyWriter) -> None:
        await sse.pump(topic, writer, keepalive, cursor, delivered)

    return StreamResponse(produce, headers=sse.SSE_HEADERS)


async def _ask_owner(state: AppState, response: dict[str, Any], op: str) -> dict[str, Any] | None:
    """``op`` on the replica generating ``response`` (None: no replica is)."""
    if state.bus is None or response["status"] not in UNFINISHED:
        return None
    try:
        return await on_bus(state.bus.call("response", response["id"], op, {}))
    except NotOwned:
        return None


def _cursor(value: str | None) -> int:
    """The first sequence number to send: the one after ``starting_after``."""
    if value is None or value == "":
        return 0
    try:
        after = int(value)
    except ValueError:
        raise InvalidRequest(f"Invalid 'starting_after': '{echo(value, 32)}' is not an integer.",
                             param="starting_after", code="invalid_type") from None  # fmt: skip
    if after < -1:
        raise InvalidRequest("Invalid 'starting_after': it must be -1 or more.",
                             param="starting_after", code="invalid_value")  # fmt: skip
    return after + 1


async def delete_response(state: AppState, request: Request) -> Response:
    response_id = request.params["id"]
    await _find(state, request, response_id)
    live = _live(state, response_id)
    if live is not None:
        live.deleted = True  # it must not store itself again as it ends
        await live.cancel()
    else:
        await _ask_owner(state, await _find(state, request, response_id), "delete_response")
    await store_of(state).delete(Kind.RESPONSE, response_id, owner=owner_of(request))
    return json_response({"id": response_id, "object": "response", "deleted": True})


async def cancel_response(state: AppState, request: Request) -> Response:
    response_id = request.params["id"]
    response = await _find(state, request, response_id)
    if not response.get("background"):
        raise InvalidRequest("Only background responses can be cancelled.")
    live, running = _live(state, response_id), state.jobs.get(response_id)
    if live is not None and running is not None and not running.done:
        await live.cancel()
        assert running.task is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(running.task), 5.0)
        return json_response(objects.public(live.response))
    reply = await _ask_owner(state, response, "cancel_response")
    if reply is not None and "response" in reply:
        return json_response(reply["response"])
    return json_response(objects.public(response))


def serve_owner_calls(state: AppState, bus: RedisBus) -> None:
    """What another replica may ask of the responses this one generates."""

    async def cancel(response_id: str, args: dict[str, Any]) -> dict[str, Any]:
        live, running = _live(state, response_id), state.jobs.get(response_id)
        if live is None or running is None or running.task is None:
            return {"error": "not here"}
        await live.cancel()
        with contextlib.suppress(TimeoutError):  # within the caller's wait for the answer
            await asyncio.wait_for(asyncio.shield(running.task), CALL_TIMEOUT - 1.0)
        return {"response": objects.public(live.response)}

    async def delete(response_id: str, args: dict[str, Any]) -> dict[str, Any]:
        live = _live(state, response_id)
        if live is not None:
            live.deleted = True
            await live.cancel()
        return {}

    async def abandon(response_id: str) -> None:
        live = _live(state, response_id)
        if live is not None:
            await live.abandon()

    bus.handle("cancel_response", cancel)
    bus.handle("delete_response", delete)
    bus.on_lost("response", abandon)


async def list_input_items(state: AppState, request: Request) -> Response:
    response_id = request.params["id"]
    stored = await store_of(state).get(Kind.RESPONSE, response_id, owner=owner_of(request))
    if stored is None:
        raise NotFound(f"Response with id '{echo(response_id, 64)}' not found.")
    return json_response(await item_page(state, request, response_id))


async def item_page(state: AppState, request: Request, parent: str) -> dict[str, Any]:
    """A page of the items under ``parent`` (paging as ``page_args``; no ``before``, as
    OpenAI's item lists)."""
    args = page_args(request)
    page = await store_of(state).list(
        Kind.ITEM, parent, limit=args.limit, order=args.order,
        after=f"{parent}/{args.after}" if args.after else None, owner=owner_of(request),
    )  # fmt: skip
    return list_object(page)


ROUTES = [
    Route("POST", "/v1/responses", create_response),
    Route("GET", "/v1/responses/{id}", get_response),
    Route("DELETE", "/v1/responses/{id}", delete_response),
    Route("POST", "/v1/responses/{id}/cancel", cancel_response),
    Route("GET", "/v1/responses/{id}/input_items", list_input_items),
]
