"""/v1/conversations and their items: create (with items), retrieve, modify, delete; items'
add, list, retrieve, delete."""

from __future__ import annotations

from typing import Any

from oxiserve.api import params
from oxiserve.api.responses import inputs
from oxiserve.api.responses.responses import item_page
from oxiserve.api.routes import Route
from oxiserve.api.state import AppState
from oxiserve.api.stored import owner_of, store_of
from oxiserve.errors import InvalidRequest, NotFound, echo
from oxiserve.http.messages import Request, Response, json_response
from oxiserve.responses import objects
from oxiserve.responses.job import item_record
from oxiserve.store.base import Kind, Record

MAX_ITEMS_PER_CALL = 20  # OpenAI's limit on items added at once


def _items(body: dict[str, Any]) -> list[dict[str, Any]]:
    raw = params.get_list(body, "items") or []
    if len(raw) > MAX_ITEMS_PER_CALL:
        raise InvalidRequest(f"Invalid 'items': at most {MAX_ITEMS_PER_CALL} at once.",
                             param="items")  # fmt: skip
    return [inputs.read_item(item, f"items[{i}]") for i, item in enumerate(raw)]


async def _conversation(state: AppState, request: Request) -> dict[str, Any]:
    conversation_id = request.params["conversation_id"]
    found = await store_of(state).get(Kind.CONVERSATION, conversation_id,
                                      owner=owner_of(request))  # fmt: skip
    if found is None:
        raise NotFound(f"Conversation with id '{echo(conversation_id, 64)}' not found.")
    return found


def _record(conversation: dict[str, Any], owner: str) -> Record:
    return Record(Kind.CONVERSATION, conversation["id"], conversation, owner=owner)


async def create_conversation(state: AppState, request: Request) -> Response:
    body = params.require_object(request.json() if request.body else {})
    items = _items(body)
    conversation_id = objects.new_id("conv")
    conversation = {"id": conversation_id, "object": "conversation",
                    "created_at": objects.now(),
                    "metadata": params.get_metadata(body) or {}}  # fmt: skip
    owner = owner_of(request)
    records = [item_record(conversation_id, item, owner) for item in items]
    await store_of(state).put(_record(conversation, owner), *records)
    return json_response(conversation)


async def get_conversation(state: AppState, request: Request) -> Response:
    return json_response(await _conversation(state, request))


async def modify_conversation(state: AppState, request: Request) -> Response:
    body = params.require_object(request.json())
    conversation = await _conversation(state, request)
    metadata = params.get_metadata(body)
    if metadata is not None:
        conversation["metadata"] = metadata
    await store_of(state).put(_record(conversation, owner_of(request)))
    return json_response(conversation)


async def delete_conversation(state: AppState, request: Request) -> Response:
    conversation = await _conversation(state, request)
    await store_of(state).delete(Kind.CONVERSATION, conversation["id"], owner=owner_of(request))
    return json_response({"id": conversation["id"], "object": "conversation.deleted",
                          "deleted": True})  # fmt: skip


async def add_items(state: AppState, request: Request) -> Response:
    body = params.require_object(request.json())
    if body.get("items") is None:
        raise params.missing("items")
    items = _items(body)
    conversation = await _conversation(state, request)
    owner = owner_of(request)
    await store_of(state).put(*(item_record(conversation["id"], i, owner) for i in items))
    return json_response({
        "object": "list", "data": items, "first_id": items[0]["id"] if items else None,
        "last_id": items[-1]["id"] if items else None, "has_more": False,
    })  # fmt: skip


async def list_items(state: AppState, request: Request) -> Response:
    conversation = await _conversation(state, request)
    return json_response(await item_page(state, request, conversation["id"]))


async def _item(state: AppState, request: Request) -> tuple[dict[str, Any], dict[str, Any]]:
    conversation = await _conversation(state, request)
    item_id = request.params["item_id"]
    item = await store_of(state).get(Kind.ITEM, f"{conversation['id']}/{item_id}",
                                     owner=owner_of(request))  # fmt: skip
    if item is None:
        raise NotFound(f"Item with id '{echo(item_id, 64)}' not found.")
    return conversation, item


async def get_item(state: AppState, request: Request) -> Response:
    return json_response((await _item(state, request))[1])


async def delete_item(state: AppState, request: Request) -> Response:
    conversation, item = await _item(state, request)
    await store_of(state).delete(Kind.ITEM, f"{conversation['id']}/{item['id']}",
                                 owner=owner_of(request))  # fmt: skip
    return json_response(conversation)


ROUTES = [
    Route("POST", "/v1/conversations", create_conversation),
    Route("GET", "/v1/conversations/{conversation_id}", get_conversation),
    Route("POST", "/v1/conversations/{conversation_id}", modify_conversation),
    Route("DELETE", "/v1/conversations/{conversation_id}", delete_conversation),
    Route("POST", "/v1/conversations/{conversation_id}/items", add_items),
    Route("GET", "/v1/conversations/{conversation_id}/items", list_items),
    Route("GET", "/v1/conversations/{conversation_id}/items/{item_id}", get_item),
    Route("DELETE", "/v1/conversations/{conversation_id}/items/{item_id}", delete_item),
]
