"""What the Assistants endpoints share: the store, lookups that 404, list paging, metadata,
message content."""

from __future__ import annotations

from typing import Any

from oxiserve.api import params
from oxiserve.api.state import AppState
from oxiserve.api.stored import list_object, owner_of, page_args, query, store_of
from oxiserve.errors import InvalidRequest, NotFound, echo
from oxiserve.http.messages import Request
from oxiserve.runs import objects
from oxiserve.runs.manager import Runs
from oxiserve.store.base import Kind

MAX_CONTENT_CHARS = 256 * 1024  # one message's text
MAX_CONTENT_PARTS = 64
MAX_INITIAL_MESSAGES = 32  # OpenAI's limit on thread creation
_NAMES = {
    Kind.ASSISTANT: "assistant", Kind.THREAD: "thread", Kind.MESSAGE: "message",
    Kind.RUN: "run", Kind.STEP: "run step",
}  # fmt: skip


def runs_of(state: AppState) -> Runs:
    if state.runs is None:
        raise RuntimeError("the server was started without runs")
    return state.runs


async def fetch(state: AppState, request: Request, kind: Kind, object_id: str) -> dict[str, Any]:
    """The stored object, or 404 in OpenAI's words."""
    found = await store_of(state).get(kind, object_id, owner=owner_of(request))
    if found is None:
        raise NotFound(f"No {_NAMES[kind]} found with id '{echo(object_id, 64)}'.")
    return found


async def fetch_child(
    state: AppState, request: Request, kind: Kind, object_id: str, key: str, parent: str
) -> dict[str, Any]:
    """A message, run or step that must belong to ``parent`` (its ``key`` field)."""
    found = await fetch(state, request, kind, object_id)
    if found.get(key) != parent:
        raise NotFound(f"No {_NAMES[kind]} found with id '{echo(object_id, 64)}'.")
    return found


async def list_page(
    state: AppState, request: Request, kind: Kind, parent: str = "", run_id: str | None = None
) -> dict[str, Any]:
    """``GET`` a list (paging as ``page_args`` reads it; messages also by ``run_id``)."""
    args = page_args(request)
    page = await store_of(state).list(
        kind, parent, limit=args.limit, order=args.order, after=args.after, before=args.before,
        run_id=run_id or query(request).get("run_id") or None, owner=owner_of(request),
    )  # fmt: skip
    return list_object(page)


def metadata(body: dict[str, Any]) -> dict[str, str] | None:
    return params.get_metadata(body)


def message_content(value: Any, where: str) -> list[dict[str, Any]]:
    """A message's ``content``: a string, or a list of text parts (image parts are kept as
    they came, the engine reads only text)."""
    if isinstance(value, str):
        _check_size(len(value), where)
        return objects.text_content(value)
    if not isinstance(value, list) or not value:
        raise InvalidRequest(
            f"Invalid '{where}': expected a string or a non-empty array of content parts.",
            param=where, code="invalid_type",
        )  # fmt: skip
    if len(value) > MAX_CONTENT_PARTS:
        raise InvalidRequest(
            f"Invalid '{where}': at most {MAX_CONTENT_PARTS} content parts.", param=where
        )
    parts: list[dict[str, Any]] = []
    size = 0
    for i, part in enumerate(value):
        at = f"{where}[{i}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            text = params.get_str(part, "text", param=f"{at}.text")
            size += len(text)
            parts.extend(objects.text_content(text))
        elif kind in ("image_url", "image_file"):
            image = params.get_object(part, kind, f"{at}.{kind}")
            if image is None:
                raise params.missing(f"{at}.{kind}")
            parts.append({"type": kind, kind: image})
        else:
            raise InvalidRequest(
                f"Invalid '{at}.type': use 'text', 'image_url' or 'image_file'.",
                param=f"{at}.type", code="invalid_value",
            )  # fmt: skip
    _check_size(size, where)
    return parts


def new_message(body: Any, thread_id: str, where: str = "") -> dict[str, Any]:
    """A user or assistant message from a create-message body (validated)."""
    body = params.require_object(body)
    at = f"{where}." if where else ""
    role = params.get_str(body, "role", param=f"{at}role")
    if role not in ("user", "assistant"):
        raise InvalidRequest(
            f"Invalid '{at}role': '{echo(role, 32)}'; use 'user' or 'assistant'.",
            param=f"{at}role", code="invalid_value",
        )  # fmt: skip
    if body.get("content") is None:
        raise params.missing(f"{at}content")
    content = message_content(body["content"], f"{at}content")
    attachments = params.get_list(body, "attachments") or []
    if len(attachments) > 10 or not all(
        isinstance(a, dict) and isinstance(a.get("file_id"), str) for a in attachments
    ):
        raise InvalidRequest(
            f"Invalid '{at}attachments': at most 10 objects, each with a 'file_id'.",
            param=f"{at}attachments",
        )
    return objects.message_object(
        thread_id, role, content, attachments=attachments, metadata=metadata(body)
    )


def _check_size(size: int, where: str) -> None:
    if size > MAX_CONTENT_CHARS:
        raise InvalidRequest(
            f"Invalid '{where}': at most {MAX_CONTENT_CHARS} characters.", param=where,
            code="string_above_max_length",
        )  # fmt: skip
