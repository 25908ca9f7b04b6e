"""GET /health, GET /v1/models, GET /v1/models/{model}."""

from __future__ import annotations

from typing import Any

from oxiserve.api.routes import Route
from oxiserve.api.state import AppState
from oxiserve.engine.base import ModelInfo
from oxiserve.http.messages import Request, Response, json_response

_HEALTH = Response(b'{"status":"ok"}')


def model_object(info: ModelInfo) -> dict[str, Any]:
    return {"id": info.id, "object": "model", "created": info.created, "owned_by": info.owned_by}


def health(state: AppState, request: Request) -> Response:
    return _HEALTH


def list_models(state: AppState, request: Request) -> Response:
    data = [model_object(info) for info in state.engine.models()]
    return json_response({"object": "list", "data": data})


def get_model(state: AppState, request: Request) -> Response:
    return json_response(model_object(state.model(request.params["model"])))


ROUTES = [
    Route("GET", "/health", health),
    Route("GET", "/v1/models", list_models),
    Route("GET", "/v1/models/{model}", get_model),
]
