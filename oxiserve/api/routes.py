"""Route: one endpoint of the API, declared as data; each api module lists its own in ROUTES.

    ROUTES = [Route("GET", "/v1/models", list_models), Route("POST", "/v1/embeddings", embed)]

A handler takes the server's :class:`AppState` and the request; :func:`bind` gives each one its
state and adds it to a router (a sync handler stays sync: it answers without a task).
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

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
        router.add(route.method, route.path, functools.partial(route.handler, state))  # type: ignore[arg-type]
