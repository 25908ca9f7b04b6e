"""Route: one endpoint of the API, declared as data; each api module lists its own in ROUTES.

    ROUTES = [Route("GET", "/v1/models", list_models), Route("POST", "/v1/embeddings", embed)]

A handler takes the server's :class:`AppState` and the request; :func:`bind` gives each one its
state and adds it to a router (a sync handler stays sync: it answers without a task).
"""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from oxiserve.api.limits import Limits, RateLimited
from oxiserve.api.state import AppState
from oxiserve.errors import APIError, BusUnavailable, NeedsSharedState
from oxiserve.http.messages import (
    AnyResponse,
    BodyWriter,
    Headers,
    HTTPError,
    Request,
    StreamProducer,
    StreamResponse,
)
from oxiserve.http.router import Router
from oxiserve.metrics import Metrics

Handler = Callable[[AppState, Request], AnyResponse | Awaitable[AnyResponse]]


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    path: str
    handler: Handler


# Endpoints whose state lives in one process (the store's runs, responses, conversations and
# threads, and the live topics of runs): with several workers and no shared bus, 501.
_STATEFUL = ("/v1/threads", "/v1/assistants", "/v1/conversations", "/v1/responses/")


def bind(router: Router, state: AppState, routes: Iterable[Route]) -> None:
    for route in routes:
        handler: Any = functools.partial(route.handler, state)
        is_async = inspect.iscoroutinefunction(route.handler)
        stateful = route.path.startswith(_STATEFUL)
        if state.config.workers > 1 and stateful and state.bus is None:
            handler = _refused(state.config.workers)
        elif stateful and state.bus is not None:
            handler = _needs_bus(handler, state, is_async)
        if route.path.startswith("/v1/") and _checks_on(state):
            handler = _guarded(handler, state, is_async)
        if state.metrics is not None:
            handler = _measured(handler, state.metrics, route, is_async)
        router.add(route.method, route.path, handler)


def _measured(handler: Any, metrics: Metrics, route: Route, is_async: bool) -> Any:
    """``handler`` counted in ``oxiserve_requests_total{route,method,status}`` (the route's
    pattern, never the raw path) and timed to its answer."""
    clock, path, method = time.perf_counter, route.path, route.method

    def failed(exc: BaseException, start: float) -> None:
        status = exc.status if isinstance(exc, APIError | HTTPError) else 500
        if isinstance(exc, RateLimited):
            metrics.count("oxiserve_rate_limited")
        metrics.request(path, method, status, clock() - start)

    if is_async:

        async def measured_async(request: Request) -> AnyResponse:
            start = clock()
            try:
                response: AnyResponse = await handler(request)
            except BaseException as exc:
                failed(exc, start)
                raise
            metrics.request(path, method, response.status, clock() - start)
            return response

        return measured_async

    def measured(request: Request) -> AnyResponse:
        start = clock()
        try:
            response: AnyResponse = handler(request)
        except BaseException as exc:
            failed(exc, start)
            raise
        metrics.request(path, method, response.status, clock() - start)
        return response

    return measured


def _refused(workers: int) -> Callable[[Request], AnyResponse]:
    def refuse(request: Request) -> AnyResponse:
        raise NeedsSharedState(workers)

    return refuse


def _needs_bus(handler: Any, state: AppState, is_async: bool) -> Any:
    """``handler``, answered 503 (Retry-After) while the bus is down: no new stateful work
    starts that other replicas could not see."""
    bus = state.bus
    assert bus is not None

    if is_async:

        async def checked_async(request: Request) -> AnyResponse:
            if not bus.healthy:
                raise BusUnavailable
            response: AnyResponse = await handler(request)
            return response

        return checked_async

    def checked(request: Request) -> AnyResponse:
        if not bus.healthy:
            raise BusUnavailable
        response: AnyResponse = handler(request)
        return response

    return checked


def _checks_on(state: AppState) -> bool:
    return bool((state.keys and state.keys.enabled) or (state.limits and state.limits.enabled))


def _guarded(handler: Any, state: AppState, is_async: bool) -> Any:
    """``handler`` behind the API keys (the caller's key fingerprint becomes its identity) and
    the rate limits (their headers on every answer, errors included)."""
    keys = state.keys if state.keys is not None and state.keys.enabled else None
    limits = state.limits if state.limits is not None and state.limits.enabled else None

    def admit(request: Request) -> tuple[Headers, str | None]:
        if keys is not None:
            request.identity = keys.identify(request.headers.get("authorization"))
        if limits is None:
            return (), None
        who = request.identity or request.client
        tokens, stream = _asks(request) if (limits.tpm or limits.streams) else (0, False)
        headers = limits.admit(who, tokens, stream=stream)
        if stream and limits.streams:
            limits.stream_opened(who)
            return headers, who
        return headers, None

    def settle(response: AnyResponse, headers: Headers, streaming: str | None) -> AnyResponse:
        response.headers += headers
        if streaming is not None and limits is not None:
            if isinstance(response, StreamResponse):
                response.producer = _counted(response.producer, limits, streaming)
            else:
                limits.stream_closed(streaming)
        return response

    def failed(exc: BaseException, headers: Headers, streaming: str | None) -> None:
        if streaming is not None and limits is not None:
            limits.stream_closed(streaming)
        if isinstance(exc, APIError):
            exc.headers += headers

    if is_async:

        async def guarded_async(request: Request) -> AnyResponse:
            headers, streaming = admit(request)
            try:
                response = await handler(request)
            except BaseException as exc:
                failed(exc, headers, streaming)
                raise
            return settle(response, headers, streaming)

        return guarded_async

    def guarded(request: Request) -> AnyResponse:
        headers, streaming = admit(request)
        try:
            response = handler(request)
        except BaseException as exc:
            failed(exc, headers, streaming)
            raise
        return settle(response, headers, streaming)

    return guarded


def _counted(producer: StreamProducer, limits: Limits, who: str) -> StreamProducer:
    async def counted(writer: BodyWriter) -> None:
        try:
            await producer(writer)
        finally:
            limits.stream_closed(who)

    return counted


def _asks(request: Request) -> tuple[int, bool]:
    """(tokens a request asks for: its prompt, about a token per 4 bytes, plus its max
    tokens; whether it streams) for the limits, read before the handler validates it."""
    try:
        body = orjson.loads(request.body) if request.body else {}
    except orjson.JSONDecodeError:
        return 0, False
    if not isinstance(body, dict):
        return 0, False
    most = 0
    for name in ("max_tokens", "max_completion_tokens", "max_output_tokens"):
        value = body.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > most:
            most = value
    return len(request.body) // 4 + most, body.get("stream") is True
