"""/v1/threads and their messages: create (with initial messages), retrieve, modify, delete,
and messages' create, list, retrieve, modify, delete."""

from __future__ import annotations

from typing import Any

from oxiserve.api import params
from oxiserve.api.assistants.common import (
    MAX_INITIAL_MESSAGES,
    fetch,
    fetch_child,
    list_page,
    metadata,
    new_message,
    runs_of,
)
from oxiserve.api.routes import Route
from oxiserve.api.state import AppState
from oxiserve.api.stored import deleted, owner_of, store_of
from oxiserve.errors import InvalidRequest
from oxiserve.http.messages import Request, Response, json_response
from oxiserve.runs import objects
from oxiserve.runs.manager import NotAccepting
from oxiserve.runs.worker import message_record
from oxiserve.store.base import Kind, Record


def new_thread(body: dict[str, Any], owner: str) -> tuple[dict[str, Any], list[Record]]:
    """A thread and its initial messages from a create-thread body, as records to store."""
    thread_id = objects.new_id("thread")
    thread: dict[str, Any] = {
        "id": thread_id,
        "object": "thread",
        "created_at": objects.now(),
        "tool_resources": params.get_object(body, "tool_resources") or {},
        "metadata": metadata(body) or {},
    }
    raw = params.get_list(body, "messages") or []
    if len(raw) > MAX_INITIAL_MESSAGES:
        raise InvalidRequest(
            f"Invalid 'messages': at most {MAX_INITIAL_MESSAGES} initial messages.",
            param="messages",
        )
    messages = [new_message(m, thread_id, f"messages[{i}]") for i, m in enumerate(raw)]
    records = [Record(Kind.THREAD, thread_id, thread, owner=owner)]
    records += [message_record(m, owner) for m in messages]
    return thread, records


async def create_thread(state: AppState, request: Request) -> Response:
    body = request.json() if request.body else {}
    thread, records = new_thread(params.require_object(body), owner_of(request))
    await store_of(state).put(*records)
    return json_response(thread)


async def get_thread(state: AppState, request: Request) -> Response:
    return json_response(await fetch(state, request, Kind.THREAD, request.params["thread_id"]))


async def modify_thread(state: AppState, request: Request) -> Response:
    body = params.require_object(request.json())
    thread = await fetch(state, request, Kind.THREAD, request.params["thread_id"])
    meta = metadata(body)
    if meta is not None:
        thread["metadata"] = meta
    resources = params.get_object(body, "tool_resources")
    if resources is not None:
        thread["tool_resources"] = resources
    owner = owner_of(request)
    await store_of(state).put(Record(Kind.THREAD, thread["id"], thread, owner=owner))
    return json_response(thread)


async def delete_thread(state: AppState, request: Request) -> Response:
    thread_id = request.params["thread_id"]
    await fetch(state, request, Kind.THREAD, thread_id)
    try:
        with runs_of(state).reserving(thread_id):  # no run starts while it goes
            await store_of(state).delete(Kind.THREAD, thread_id, owner=owner_of(request))
    except NotAccepting:
        raise InvalidRequest(
            f"Thread {thread_id} has an active run; cancel it or wait for it to end first."
        ) from None
    return json_response(deleted(thread_id, "thread"))


async def create_message(state: AppState, request: Request) -> Response:
    thread_id = request.params["thread_id"]
    body = params.require_object(request.json())
    message = new_message(body, thread_id)
    await fetch(state, request, Kind.THREAD, thread_id)
    active = runs_of(state).active_run(thread_id)
    if active is not None:
        raise InvalidRequest(
            f"Can't add messages to {thread_id} while a run {active} is active.",
        )
    await store_of(state).put(message_record(message, owner_of(request)))
    return json_response(message)


async def list_messages(state: AppState, request: Request) -> Response:
    thread_id = request.params["thread_id"]
    await fetch(state, request, Kind.THREAD, thread_id)
    return json_response(await list_page(state, request, Kind.MESSAGE, thread_id))


async def get_message(state: AppState, request: Request) -> Response:
    return json_response(await _message(state, request))


async def modify_message(state: AppState, request: Request) -> Response:
    body = params.require_object(request.json())
    message = await _message(state, request)
    _not_generating(state, message, "modify")
    meta = metadata(body)
    if meta is not None:
        message["metadata"] = meta
    await store_of(state).put(message_record(message, owner_of(request)))
    return json_response(message)


async def delete_message(state: AppState, request: Request) -> Response:
    message = await _message(state, request)
    _not_generating(state, message, "delete")
    await store_of(state).delete(Kind.MESSAGE, message["id"], owner=owner_of(request))
    return json_response(deleted(message["id"], "thread.message"))


def _not_generating(state: AppState, message: dict[str, Any], what: str) -> None:
    run_id = message.get("run_id")
    if run_id is not None and runs_of(state).get(run_id) is not None:
        raise InvalidRequest(
            f"Cannot {what} message {message['id']} while its run {run_id} is active."
        )


async def _message(state: AppState, request: Request) -> dict[str, Any]:
    thread_id = request.params["thread_id"]
    return await fetch_child(
        state, request, Kind.MESSAGE, request.params["message_id"], "thread_id", thread_id
    )


ROUTES = [
    Route("POST", "/v1/threads", create_thread),
    Route("GET", "/v1/threads/{thread_id}", get_thread),
    Route("POST", "/v1/threads/{thread_id}", modify_thread),
    Route("DELETE", "/v1/threads/{thread_id}", delete_thread),
    Route("POST", "/v1/threads/{thread_id}/messages", create_message),
    Route("GET", "/v1/threads/{thread_id}/messages", list_messages),
    Route("GET", "/v1/threads/{thread_id}/messages/{message_id}", get_message),
    Route("POST", "/v1/threads/{thread_id}/messages/{message_id}", modify_message),
    Route("DELETE", "/v1/threads/{thread_id}/messages/{message_id}", delete_message),
]
