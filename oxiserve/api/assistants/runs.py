"""Runs and run steps: create (streamed or not, on a thread or with a new one), list, retrieve,
modify, cancel, submit tool outputs, and re-attach to a run's stream (our extension)."""

from __future__ import annotations

import math
from typing import Any

from oxiserve.api import params
from oxiserve.api.assistants.assistants import (
    read_response_format,
    read_sampling_fields,
    read_tools,
)
from oxiserve.api.assistants.common import (
    MAX_INITIAL_MESSAGES,
    fetch,
    fetch_child,
    list_page,
    metadata,
    new_message,
    runs_of,
)
from oxiserve.api.assistants.threads import new_thread
from oxiserve.api.routes import Route
from oxiserve.api.sampling import engine_headers
from oxiserve.api.state import AppState
from oxiserve.api.stored import on_bus, owner_of, store_of
from oxiserve.broadcast import Topic
from oxiserve.bus import NotOwned, RedisBus
from oxiserve.errors import InvalidRequest, echo
from oxiserve.http import sse
from oxiserve.http.messages import BodyWriter, Request, Response, StreamResponse, json_response
from oxiserve.runs import objects
from oxiserve.runs.manager import NotAccepting
from oxiserve.runs.states import TERMINAL
from oxiserve.runs.worker import message_record, run_record
from oxiserve.store.base import Kind, Record

MAX_RUN_TOOLS = 20  # a run's own tools (an assistant may have 128)
POLL_AFTER_MS = "25"  # the SDK's poll helpers wait this long between polls of an active run


async def create_run(state: AppState, request: Request) -> Response | StreamResponse:
    thread_id = request.params["thread_id"]
    body = params.require_object(request.json())
    await fetch(state, request, Kind.THREAD, thread_id)
    return await _start(state, request, body, thread_id, [], ())


async def create_thread_and_run(state: AppState, request: Request) -> Response | StreamResponse:
    body = params.require_object(request.json())
    thread_body = params.get_object(body, "thread") or {}
    thread, records = new_thread(thread_body, owner_of(request))
    first = (objects.event("thread.created", thread),)
    return await _start(state, request, body, thread["id"], records, first)


async def _start(
    state: AppState,
    request: Request,
    body: dict[str, Any],
    thread_id: str,
    records: list[Record],
    first: tuple[bytes, ...],
) -> Response | StreamResponse:
    assistant_id = params.get_str(body, "assistant_id")
    stream = params.get_bool(body, "stream")  # every check before anything is stored
    run = _new_run(state, body, thread_id)
    extra = params.get_list(body, "additional_messages") or []
    if len(extra) > MAX_INITIAL_MESSAGES:
        raise InvalidRequest(
            f"Invalid 'additional_messages': at most {MAX_INITIAL_MESSAGES}.",
            param="additional_messages",
        )
    owner = owner_of(request)
    added = [new_message(m, thread_id, f"additional_messages[{i}]") for i, m in enumerate(extra)]
    assistant = await fetch(state, request, Kind.ASSISTANT, assistant_id)
    _inherit(run, assistant, body)
    runs = runs_of(state)
    records = [*records, *(message_record(m, owner) for m in added)]
    try:
        with runs.reserving(thread_id):  # no other run, and no delete, until this one starts
            if not first:  # an existing thread: it must still be there
                await fetch(state, request, Kind.THREAD, thread_id)
                if state.bus is not None:
                    await _not_active_elsewhere(state, thread_id, owner)
            topic = await on_bus(runs.start(run, assistant, records, owner, first,
                                             engine_headers(request)))  # fmt: skip
    except NotAccepting as exc:
        raise InvalidRequest(str(exc)) from None
    if stream:
        return _stream(state, topic)
    return json_response(run)


async def _not_active_elsewhere(state: AppState, thread_id: str, owner: str) -> None:
    """With replicas, the thread's active run may be another one's: the newest stored run
    is the only one that can be active (each run starts only when none is)."""
    newest = await store_of(state).list(Kind.RUN, thread_id, limit=1, owner=owner)
    if newest.data and newest.data[0]["status"] not in TERMINAL:
        run_id = newest.data[0]["id"]
        raise NotAccepting(f"Thread {thread_id} already has an active run {run_id}.")


def _new_run(state: AppState, body: dict[str, Any], thread_id: str) -> dict[str, Any]:
    """The queued run from the body's own fields (validated; the assistant's fill the rest)."""
    created = objects.now()
    run: dict[str, Any] = {
        "id": objects.new_id("run"), "object": "thread.run", "created_at": created,
        "thread_id": thread_id, "assistant_id": params.get_str(body, "assistant_id"),
        "status": "queued", "required_action": None, "last_error": None,
        "expires_at": created + math.ceil(state.config.run_timeout), "started_at": None,
        "cancelled_at": None, "failed_at": None, "completed_at": None,
        "incomplete_details": None,
    }  # fmt: skip
    model = params.get_str(body, "model", None)
    run["model"] = state.model(model).id if model is not None else None
    run["instructions"] = params.get_str(body, "instructions", None)
    run["tools"] = read_tools(body, MAX_RUN_TOOLS)
    run["metadata"] = metadata(body) or {}
    run["usage"] = None
    read_sampling_fields(body, run)
    for name in ("max_prompt_tokens", "max_completion_tokens"):
        # OpenAI's schema says at least 256; any positive budget is served here, so load
        # tests can size runs as they size chat completions.
        run[name] = params.get_int(body, name, minimum=1, maximum=state.config.max_tokens_limit)
    run["truncation_strategy"] = _truncation(body)
    run["tool_choice"] = _tool_choice(body, run["tools"])
    run["parallel_tool_calls"] = params.get_bool(body, "parallel_tool_calls", True)
    run["response_format"] = read_response_format(body) if "response_format" in body else None
    return run


def _inherit(run: dict[str, Any], assistant: dict[str, Any], body: dict[str, Any]) -> None:
    """The assistant's settings where the run gave none; ``additional_instructions`` appended."""
    if run["model"] is None:
        run["model"] = assistant["model"]
    if run["instructions"] is None:
        run["instructions"] = assistant.get("instructions") or ""
    extra = params.get_str(body, "additional_instructions", None)
    if extra:
        run["instructions"] = f"{run['instructions']}\n\n{extra}" if run["instructions"] else extra
    if run["tools"] is None:
        run["tools"] = assistant.get("tools") or []
    for name in ("temperature", "top_p"):
        if run[name] is None:
            run[name] = assistant.get(name)
    if run["response_format"] is None:
        run["response_format"] = assistant.get("response_format") or "auto"
    if run["tool_choice"] is None:
        run["tool_choice"] = "auto"
    functions = [t["function"]["name"] for t in run["tools"] if t["type"] == "function"]
    choice = run["tool_choice"]
    if choice == "required" and not functions:
        raise InvalidRequest("'tool_choice' 'required' needs a function tool.",
                             param="tool_choice")  # fmt: skip
    if isinstance(choice, dict) and choice["type"] == "function":
        name = choice["function"]["name"]
        if name not in functions:
            raise InvalidRequest(
                f"Invalid 'tool_choice': no function named '{echo(str(name), 64)}' in the run's "
                "or the assistant's tools.", param="tool_choice",
            )  # fmt: skip


def _truncation(body: dict[str, Any]) -> dict[str, Any]:
    value = params.get_object(body, "truncation_strategy")
    if value is None:
        return {"type": "auto", "last_messages": None}
    kind = value.get("type")
    if kind not in ("auto", "last_messages"):
        raise InvalidRequest(
            "Invalid 'truncation_strategy.type': use 'auto' or 'last_messages'.",
            param="truncation_strategy.type", code="invalid_value",
        )  # fmt: skip
    where = "truncation_strategy.last_messages"
    last = params.get_int(value, "last_messages", minimum=1, param=where)
    if kind == "last_messages" and last is None:
        raise params.missing(where)
    return {"type": kind, "last_messages": last}


def _tool_choice(body: dict[str, Any], tools: list[dict[str, Any]] | None) -> Any:
    choice = body.get("tool_choice")
    if choice is None or choice in ("none", "auto", "required"):
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function":
        function = choice.get("function")
        name = function.get("name") if isinstance(function, dict) else None
        if not isinstance(name, str):
            raise params.missing("tool_choice.function.name")
        return {"type": "function", "function": {"name": name}}  # checked by _inherit
    if isinstance(choice, dict) and choice.get("type") in ("file_search", "code_interpreter"):
        return {"type": choice["type"]}
    raise InvalidRequest(
        "Invalid 'tool_choice': use 'none', 'auto', 'required' or a function.",
        param="tool_choice", code="invalid_value",
    )  # fmt: skip


def _stream(state: AppState, topic: Topic) -> StreamResponse:
    keepalive = state.config.sse_keepalive

    async def produce(writer: BodyWriter) -> None:
        await sse.pump(topic, writer, keepalive)  # leaving early does not stop the run

    return StreamResponse(produce, headers=sse.SSE_HEADERS)


async def _run(state: AppState, request: Request) -> dict[str, Any]:
    """The run named by the path, as it is now (in memory while active, else stored)."""
    thread_id, run_id = request.params["thread_id"], request.params["run_id"]
    active = runs_of(state).get(run_id)
    if active is not None and active.run["thread_id"] == thread_id:
        return dict(active.run)
    await fetch(state, request, Kind.THREAD, thread_id)
    return await fetch_child(state, request, Kind.RUN, run_id, "thread_id", thread_id)


async def list_runs(state: AppState, request: Request) -> Response:
    thread_id = request.params["thread_id"]
    await fetch(state, request, Kind.THREAD, thread_id)
    return json_response(await list_page(state, request, Kind.RUN, thread_id))


async def get_run(state: AppState, request: Request) -> Response:
    run = await _run(state, request)
    headers = () if run["status"] in TERMINAL else (("openai-poll-after-ms", POLL_AFTER_MS),)
    return json_response(run, headers=headers)


async def modify_run(state: AppState, request: Request) -> Response:
    body = params.require_object(request.json())
    meta = metadata(body)
    run = await _run(state, request)
    if meta is not None:
        active = runs_of(state).get(run["id"])
        target = active.run if active is not None else run
        target["metadata"] = meta
        run = dict(target)
        await store_of(state).put(run_record(target, owner_of(request)))
    return json_response(run)


async def cancel_run(state: AppState, request: Request) -> Response:
    run = await _run(state, request)
    reply = await _ask_owner(state, run, "cancel_run", {})
    if reply is not None:
        if "error" in reply:
            raise InvalidRequest(reply["error"])
        return json_response(reply["run"])
    try:
        return json_response(await runs_of(state).cancel(run["id"]))
    except NotAccepting:
        raise InvalidRequest(f"Cannot cancel run with status '{run['status']}'.") from None


async def _ask_owner(
    state: AppState, run: dict[str, Any], op: str, args: dict[str, Any]
) -> dict[str, Any] | None:
    """``op`` on the replica running ``run`` if that is another one (None: it is this one,
    or none is)."""
    if state.bus is None or runs_of(state).get(run["id"]) is not None:
        return None
    if run["status"] in TERMINAL:
        return None
    try:
        return await on_bus(state.bus.call("run", run["id"], op, args))
    except NotOwned:
        return None


def serve_owner_calls(state: AppState, bus: RedisBus) -> None:
    """What another replica may ask of the runs this one runs."""
    runs = runs_of(state)

    async def cancel(run_id: str, args: dict[str, Any]) -> dict[str, Any]:
        try:
            return {"run": await runs.cancel(run_id)}
        except NotAccepting as exc:
            return {"error": str(exc)}

    async def submit(run_id: str, args: dict[str, Any]) -> dict[str, Any]:
        try:
            await runs.submit(run_id, dict(args["outputs"]))
        except NotAccepting as exc:
            return {"error": str(exc)}
        except ValueError as exc:
            return {"error": str(exc), "param": "tool_outputs"}
        active = runs.get(run_id)
        return {"run": dict(active.run) if active is not None else None}

    bus.handle("cancel_run", cancel)
    bus.handle("submit_tool_outputs", submit)


async def submit_tool_outputs(state: AppState, request: Request) -> Response | StreamResponse:
    body = params.require_object(request.json())
    stream = params.get_bool(body, "stream")
    raw = params.get_list(body, "tool_outputs")
    if raw is None:
        raise params.missing("tool_outputs")
    outputs: dict[str, str] = {}
    for i, item in enumerate(raw):
        item = params.require_object(item)
        call_id = params.get_str(item, "tool_call_id", param=f"tool_outputs[{i}].tool_call_id")
        if call_id in outputs:
            raise InvalidRequest(
                f"Duplicate output for tool call '{echo(call_id, 64)}'.",
                param=f"tool_outputs[{i}].tool_call_id",
            )
        outputs[call_id] = params.get_str(item, "output", "", param=f"tool_outputs[{i}].output")
    run = await _run(state, request)
    reply = await _ask_owner(state, run, "submit_tool_outputs", {"outputs": outputs})
    if reply is not None:  # submitted on the replica that runs it
        if "error" in reply:
            raise InvalidRequest(reply["error"], param=reply.get("param"))
        if stream:
            return await _follow(state, request, run)
        return json_response(reply["run"] or await _run(state, request))
    try:
        topic = await runs_of(state).submit(run["id"], outputs)
    except NotAccepting as exc:
        raise InvalidRequest(str(exc)) from None
    except ValueError as exc:
        raise InvalidRequest(str(exc), param="tool_outputs") from None
    if stream:
        return _stream(state, topic)
    active = runs_of(state).get(run["id"])
    return json_response(dict(active.run) if active is not None else await _run(state, request))


async def stream_run(state: AppState, request: Request) -> Response | StreamResponse:
    """Re-attach: a run in memory streams from its leg's start (snapshot) then live; one that
    has left memory is replayed from the store."""
    run = await _run(state, request)
    topic = runs_of(state).topic(run["id"])
    if topic is not None:
        return _stream(state, topic)
    return await _follow(state, request, run)


async def _follow(
    state: AppState, request: Request, run: dict[str, Any]
) -> Response | StreamResponse:
    """A run not in memory here: its leg live on another replica through the bus, else its
    replay from the store."""
    if state.bus is not None and run["status"] not in TERMINAL:
        followed = await on_bus(state.bus.follow(run["id"], state.config.stream_buffer))
        if followed is not None:
            return _stream(state, followed.topic)
    frames = await runs_of(state).replay(run, owner_of(request))
    return Response(b"".join(frames), content_type="text/event-stream", headers=sse.SSE_HEADERS)


async def list_steps(state: AppState, request: Request) -> Response:
    run = await _run(state, request)
    return json_response(await list_page(state, request, Kind.STEP, run["id"]))


async def get_step(state: AppState, request: Request) -> Response:
    run = await _run(state, request)
    step_id = request.params["step_id"]
    return json_response(await fetch_child(state, request, Kind.STEP, step_id, "run_id", run["id"]))


ROUTES = [
    Route("POST", "/v1/threads/runs", create_thread_and_run),
    Route("POST", "/v1/threads/{thread_id}/runs", create_run),
    Route("GET", "/v1/threads/{thread_id}/runs", list_runs),
    Route("GET", "/v1/threads/{thread_id}/runs/{run_id}", get_run),
    Route("POST", "/v1/threads/{thread_id}/runs/{run_id}", modify_run),
    Route("POST", "/v1/threads/{thread_id}/runs/{run_id}/cancel", cancel_run),
    Route("POST", "/v1/threads/{thread_id}/runs/{run_id}/submit_tool_outputs", submit_tool_outputs),
    Route("GET", "/v1/threads/{thread_id}/runs/{run_id}/stream", stream_run),
    Route("GET", "/v1/threads/{thread_id}/runs/{run_id}/steps", list_steps),
    Route("GET", "/v1/threads/{thread_id}/runs/{run_id}/steps/{step_id}", get_step),
]
