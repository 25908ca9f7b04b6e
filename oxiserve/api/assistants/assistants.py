"""/v1/assistants: create, list, retrieve, modify, delete."""

from __future__ import annotations

from typing import Any

from oxiserve.api import chat_request, params
from oxiserve.api.assistants.common import fetch, list_page, metadata
from oxiserve.api.routes import Route
from oxiserve.api.state import AppState
from oxiserve.api.stored import deleted, owner_of, store_of
from oxiserve.errors import InvalidRequest, NotFound
from oxiserve.http.messages import Request, Response, json_response
from oxiserve.runs import objects
from oxiserve.store.base import Kind, Record

MAX_ASSISTANT_TOOLS = 128
_TEXT_LIMITS = {"name": 256, "description": 512, "instructions": 256_000}


def read_tools(
    body: dict[str, Any], limit: int, param: str = "tools"
) -> list[dict[str, Any]] | None:
    """Assistant or run ``tools``: function tools (validated as chat's) and the built-in
    ``code_interpreter`` and ``file_search`` (kept; the engine only calls functions)."""
    raw = params.get_list(body, param)
    if raw is None:
        return None
    if len(raw) > limit:
        raise InvalidRequest(f"Invalid '{param}': at most {limit} tools.", param=param)
    tools: list[dict[str, Any]] = []
    for i, tool in enumerate(raw):
        where = f"{param}[{i}]"
        kind = tool.get("type") if isinstance(tool, dict) else None
        if kind in ("code_interpreter", "file_search"):
            tools.append(dict(tool))
            continue
        if kind != "function":
            raise InvalidRequest(
                f"Invalid '{where}.type': use 'function', 'code_interpreter' or 'file_search'.",
                param=f"{where}.type", code="invalid_value",
            )  # fmt: skip
        function = params.get_object(tool, "function", f"{where}.function")
        if function is None:
            raise params.missing(f"{where}.function")
        spec = chat_request.function_spec(function, f"{where}.function")
        tools.append({"type": "function", "function": {
            "name": spec.name, "description": spec.description or None,
            "parameters": dict(spec.parameters), "strict": bool(function.get("strict", False)),
        }})  # fmt: skip
    return tools


def read_response_format(body: dict[str, Any]) -> Any:
    """``response_format``: "auto" or a text / json_object / json_schema object (validated)."""
    value = body.get("response_format")
    if value is None or value == "auto":
        return value
    if not isinstance(value, dict):
        raise InvalidRequest(
            "Invalid 'response_format': use 'auto' or an object with a 'type'.",
            param="response_format", code="invalid_type",
        )  # fmt: skip
    chat_request.read_response_format({"response_format": value}, ())
    return value


def read_sampling_fields(body: dict[str, Any], into: dict[str, Any]) -> None:
    for name, maximum in (("temperature", 2.0), ("top_p", 1.0)):
        value = params.get_number(body, name, minimum=0.0, maximum=maximum)
        if value is not None or name not in into:
            into[name] = value


def _fields(state: AppState, body: dict[str, Any], into: dict[str, Any], create: bool) -> None:
    if create or body.get("model") is not None:
        into["model"] = state.model(params.get_str(body, "model")).id
    for name, limit in _TEXT_LIMITS.items():
        if name in body or create:
            value = params.get_str(body, name, None)
            if value is not None and len(value) > limit:
                raise InvalidRequest(
                    f"Invalid '{name}': at most {limit} characters.", param=name,
                    code="string_above_max_length",
                )  # fmt: skip
            into[name] = value
    tools = read_tools(body, MAX_ASSISTANT_TOOLS)
    if tools is not None or create:
        into["tools"] = tools or []
    meta = metadata(body)
    if meta is not None or create:
        into["metadata"] = meta or {}
    read_sampling_fields(body, into)
    if "response_format" in body or create:
        into["response_format"] = read_response_format(body) or "auto"
    if "tool_resources" in body or create:
        into["tool_resources"] = params.get_object(body, "tool_resources") or {}


async def create_assistant(state: AppState, request: Request) -> Response:
    body = params.require_object(request.json())
    assistant: dict[str, Any] = {"id": objects.new_id("asst"), "object": "assistant",
                                 "created_at": objects.now()}  # fmt: skip
    _fields(state, body, assistant, create=True)
    await store_of(state).put(_record(assistant, owner_of(request)))
    return json_response(assistant)


async def list_assistants(state: AppState, request: Request) -> Response:
    return json_response(await list_page(state, request, Kind.ASSISTANT))


async def get_assistant(state: AppState, request: Request) -> Response:
    return json_response(await fetch(state, request, Kind.ASSISTANT, request.params["id"]))


async def modify_assistant(state: AppState, request: Request) -> Response:
    body = params.require_object(request.json())
    assistant = await fetch(state, request, Kind.ASSISTANT, request.params["id"])
    changed = dict(assistant)
    _fields(state, body, changed, create=False)  # all checked before anything is stored
    await store_of(state).put(_record(changed, owner_of(request)))
    return json_response(changed)


async def delete_assistant(state: AppState, request: Request) -> Response:
    assistant_id = request.params["id"]
    if not await store_of(state).delete(Kind.ASSISTANT, assistant_id, owner=owner_of(request)):
        raise NotFound(f"No assistant found with id '{assistant_id[:64]}'.")
    return json_response(deleted(assistant_id, "assistant"))


def _record(assistant: dict[str, Any], owner: str) -> Record:
    return Record(Kind.ASSISTANT, assistant["id"], assistant, owner=owner)


ROUTES = [
    Route("POST", "/v1/assistants", create_assistant),
    Route("GET", "/v1/assistants", list_assistants),
    Route("GET", "/v1/assistants/{id}", get_assistant),
    Route("POST", "/v1/assistants/{id}", modify_assistant),
    Route("DELETE", "/v1/assistants/{id}", delete_assistant),
]
