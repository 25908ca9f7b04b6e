"""What every endpoint of stored objects shares (Assistants, Responses, Conversations): the
store, the owner objects belong to, the bus's failures as 503, the query string, list pages
and deleted shapes."""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import parse_qs

from oxiserve.api.state import AppState
from oxiserve.bus import BusDown, OwnerUnreachable
from oxiserve.errors import BusUnavailable, InvalidRequest, echo
from oxiserve.http.messages import Request
from oxiserve.store.base import Order, Page, Store

_T = TypeVar("_T")


async def on_bus(call: Awaitable[_T]) -> _T:
    """``call`` to the bus; the bus down is a 503 with Retry-After."""
    try:
        return await call
    except OwnerUnreachable:
        raise BusUnavailable("The replica running it did not answer; retry shortly.") from None
    except BusDown:
        raise BusUnavailable from None


def store_of(state: AppState) -> Store:
    if state.store is None:
        raise RuntimeError("the server was started without a store")
    return state.store


def owner_of(request: Request) -> str:
    """The owner objects are stored under: the caller's key fingerprint ("" without keys,
    when everything is shared)."""
    return request.identity


def query(request: Request) -> dict[str, str]:
    """The query string's parameters (the last of a repeated one)."""
    parsed = parse_qs(request.query_string, keep_blank_values=True)
    return {name: values[-1] for name, values in parsed.items()}


@dataclass(frozen=True, slots=True)
class PageArgs:
    limit: int
    order: Order
    after: str | None
    before: str | None


def page_args(request: Request) -> PageArgs:
    """A list's ``limit`` 1-100 (20), ``order`` asc|desc (desc), ``after`` and ``before``."""
    args = query(request)
    raw = args.get("limit", "20")
    try:
        limit = int(raw)
    except ValueError:
        raise InvalidRequest(
            f"Invalid 'limit': '{echo(raw, 32)}' is not an integer.", param="limit",
            code="invalid_type",
        ) from None  # fmt: skip
    if not 1 <= limit <= 100:
        raise InvalidRequest(
            f"Invalid 'limit': {limit}; it must be between 1 and 100.", param="limit",
            code="invalid_value",
        )  # fmt: skip
    order = args.get("order", "desc")
    if order not in ("asc", "desc"):
        raise InvalidRequest(
            f"Invalid 'order': '{echo(order, 32)}'; use 'asc' or 'desc'.", param="order",
            code="invalid_value",
        )  # fmt: skip
    sort: Order = "asc" if order == "asc" else "desc"
    return PageArgs(limit, sort, args.get("after") or None, args.get("before") or None)


def list_object(page: Page) -> dict[str, Any]:
    data = page.data
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": page.has_more,
    }


def deleted(object_id: str, kind: str) -> dict[str, Any]:
    return {"id": object_id, "object": f"{kind}.deleted", "deleted": True}
