"""GET /health, GET /v1/models, GET /v1/models/{model}."""

from __future__ import annotations

import math
import time
from typing import Any

from oxiserve.api.routes import Route
from oxiserve.api.state import AppState
from oxiserve.engine.base import ModelInfo
from oxiserve.http.messages import Request, Response, json_response
from oxiserve.metrics import CONTENT_TYPE

_HEALTH = Response(b'{"status":"ok"}')
_READY = Response(b'{"status":"ready"}')


def model_object(info: ModelInfo) -> dict[str, Any]:
    return {"id": info.id, "object": "model", "created": info.created, "owned_by": info.owned_by}


def health(state: AppState, request: Request) -> Response:
    return _HEALTH


def ready(state: AppState, request: Request) -> Response:
    """Readiness: 503 while starting (``--sim-startup-delay``) and while shutting down, so a
    load balancer sends nothing new; liveness (``/health``) answers 200 all along."""
    if state.stopping:
        return json_response({"status": "stopping"}, status=503)
    if not getattr(state.engine, "ready", True):
        return json_response({"status": "loading"}, status=503, headers=(("retry-after", "1"),))
    wait = state.ready_at - time.monotonic()
    if wait > 0:
        retry = (("retry-after", str(math.ceil(wait))),)
        return json_response({"status": "starting"}, status=503, headers=retry)
    return _READY


def list_models(state: AppState, request: Request) -> Response:
    data = [model_object(info) for info in state.engine.models()]
    return json_response({"object": "list", "data": data})


def get_model(state: AppState, request: Request) -> Response:
    return json_response(model_object(state.model(request.params["model"])))


def metrics(state: AppState, request: Request) -> Response:
    """The Prometheus exposition; behind the API keys unless --metrics-public."""
    keys = state.keys
    if keys is not None and keys.enabled and not state.config.metrics_public:
        request.identity = keys.identify(request.headers.get("authorization"))
    if state.metrics is None:
        raise RuntimeError("the server was started without metrics")
    return Response(state.metrics.render(), content_type=CONTENT_TYPE)


ROUTES = [
    Route("GET", "/health", health),
    Route("GET", "/health/ready", ready),
    Route("GET", "/metrics", metrics),
    Route("GET", "/v1/models", list_models),
    Route("GET", "/v1/models/{model}", get_model),
]
