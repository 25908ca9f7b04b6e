"""POST /v1/embeddings: strings or token-id arrays in, float or base64 vectors out."""

from __future__ import annotations

import base64
import functools
import struct
from typing import Any

from oxiserve.api import params
from oxiserve.api.sampling import engine_headers
from oxiserve.api.state import AppState
from oxiserve.api.streaming import api_error
from oxiserve.engine.base import EngineError
from oxiserve.errors import InvalidRequest
from oxiserve.http.messages import Request, Response, json_response
from oxiserve.http.router import Router

MAX_INPUTS = 2048
MAX_DIMENSIONS = 8192
MAX_FLOATS = 2**21  # inputs x dimensions per request: bounds the response (~40 MB of JSON)


def register(router: Router, state: AppState) -> None:
    router.add("POST", "/v1/embeddings", functools.partial(create_embeddings, state))


def read_inputs(body: dict[str, Any]) -> list[str]:
    raw = body.get("input")
    if raw is None:
        raise params.missing("input")
    if isinstance(raw, str):
        items: list[Any] = [raw]
    elif isinstance(raw, list) and raw and all(_is_token(t) for t in raw):
        items = [raw]
    elif isinstance(raw, list):
        items = raw
    else:
        raise InvalidRequest(
            "Invalid 'input': expected a string, an array of strings or token-id arrays.",
            param="input",
        )
    if not items:
        raise InvalidRequest("'input' must not be empty.", param="input")
    if len(items) > MAX_INPUTS:
        raise InvalidRequest(f"'input' may hold at most {MAX_INPUTS} items.", param="input")
    texts = []
    for i, item in enumerate(items):
        if isinstance(item, str) and item:
            texts.append(item)
        elif isinstance(item, list) and item and all(_is_token(t) for t in item):
            texts.append(" ".join(map(str, item)))
        else:
            raise InvalidRequest(
                f"Invalid 'input[{i}]': expected a non-empty string or token-id array.",
                param="input",
            )
    return texts


def _is_token(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


async def create_embeddings(state: AppState, request: Request) -> Response:
    body = params.require_object(request.json())
    model = state.model(params.get_str(body, "model")).id
    inputs = read_inputs(body)
    encoding = params.get_str(body, "encoding_format", "float")
    if encoding not in ("float", "base64"):
        raise InvalidRequest(
            "Invalid 'encoding_format': use 'float' or 'base64'.",
            param="encoding_format", code="invalid_value",
        )  # fmt: skip
    dimensions = params.get_int(body, "dimensions", minimum=1, maximum=MAX_DIMENSIONS)
    size = len(inputs) * (dimensions or state.config.sim_embedding_dim)
    if size > MAX_FLOATS:
        raise InvalidRequest(
            f"This request asks for {size} numbers (inputs x dimensions), more than "
            f"{MAX_FLOATS}; send fewer inputs per request.",
            param="input",
        )
    params.get_str(body, "user", None)
    try:
        vectors = await state.engine.embed(model, inputs, dimensions, engine_headers(request))
    except EngineError as exc:
        raise api_error(exc) from None
    data = [
        {"object": "embedding", "index": i, "embedding": _encode(v, encoding)}
        for i, v in enumerate(vectors)
    ]
    tokens = sum(state.engine.count_tokens(text) for text in inputs)
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    return json_response({"object": "list", "data": data, "model": model, "usage": usage})


def _encode(vector: list[float], encoding: str) -> list[float] | str:
    if encoding == "float":
        return vector
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
