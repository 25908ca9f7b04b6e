"""Route: one endpoint of the API, declared as data; each api module lists its own in ROUTES.

    ROUTES = [Route("GET", "/v1/models", list_models), Route("POST", "/v1/embeddings", embed)]

A handler takes the server's :class:`AppState` and the request; :func:`bind` gives each one its
state and adds it to a router (a sync handler stays sync: it answers without a task).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from oxiserve.api.keys import KeyRing
from oxiserve.api.state import AppState
from oxiserve.http.messages import AnyResponse, Request
from oxiserve.http.router import Router

Handler = Callable[[AppState, Request], AnyResponse | Awaitable[AnyResponse]]


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    path: str
    handler: Handler


def bind(router: Router, state: AppState, routes: Iterable[Route]) -> None:
    for route in routes:
        handler: Any = functools.partial(route.handler, state)
        if route.path.startswith("/v1/") and state.keys is not None and state.keys.enabled:
            handler = _guarded(handler, state.keys, inspect.iscoroutinefunction(route.handler))
        router.add(route.method, route.path, handler)


def _guarded(handler: Any, keys: KeyRing, is_async: bool) -> Any:
    """``handler`` behind the API keys: the caller's key fingerprint becomes its identity."""
    if is_async:

        async def guarded_async(request: Request) -> AnyResponse:
            request.identity = keys.identify(request.headers.get("authorization"))
            return await handler(request)  # type: ignore[no-any-return]

        return guarded_async

    def guarded(request: Request) -> AnyResponse:
        request.identity = keys.identify(request.headers.get("authorization"))
        return handler(request)  # type: ignore[no-any-return]

    return guarded
