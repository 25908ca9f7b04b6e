"""POST /v1/embeddings: strings or token-id arrays in, float or base64 vectors out."""

from __future__ import annotations

import asyncio
import base64
import functools
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from oxiserve.api import params
from oxiserve.api.inputs import input_items, item_text
from oxiserve.api.routes import Route
from oxiserve.api.sampling import engine_headers
from oxiserve.api.shapes import api_error
from oxiserve.api.state import AppState
from oxiserve.engine.base import Engine, EngineError
from oxiserve.errors import InvalidRequest
from oxiserve.http.messages import BodyWriter, Request, Response, StreamResponse

MAX_INPUTS = 2048  # OpenAI's limits: inputs per request,
MAX_INPUT_TOKENS = 8192  # tokens per input,
MAX_REQUEST_TOKENS = 300_000  # and tokens per request
MAX_DIMENSIONS = 8192
MAX_FLOATS = 2**21  # inputs x dimensions per request: bounds the response (~40 MB of JSON)
# A text this long is more than MAX_INPUT_TOKENS for any tokenizer worth the name: refused
# before counting, so counting a 10 MB string never runs on the event loop.
_MAX_INPUT_CHARS = MAX_INPUT_TOKENS * 32
_SLICE_FLOATS = 65536  # numbers computed and encoded at a time (about 1.4 MB of JSON)


def read_inputs(body: dict[str, Any], count_tokens: Callable[[str], int]) -> tuple[list[str], int]:
    """The inputs as texts and their token count, within OpenAI's limits (per input and per
    request), each checked before the work it bounds."""
    items, listed = input_items(body, "input", MAX_INPUTS)
    texts, total = [], 0
    for i, item in enumerate(items):
        where = f"input[{i}]" if listed else "input"
        if isinstance(item, str) and len(item) > _MAX_INPUT_CHARS:
            text, tokens = item, MAX_INPUT_TOKENS + 1  # refused without counting 10 MB
        else:
            text = item_text(item, where, "input", MAX_INPUT_TOKENS)
            tokens = len(item) if isinstance(item, list) else count_tokens(text)
        if tokens > MAX_INPUT_TOKENS:
            raise InvalidRequest(
                f"Invalid '{where}': an input may hold at most {MAX_INPUT_TOKENS} tokens.",
                param="input", code="context_length_exceeded",
            )  # fmt: skip
        total += tokens
        if total > MAX_REQUEST_TOKENS:
            raise InvalidRequest(
                f"This request holds more than {MAX_REQUEST_TOKENS} input tokens; "
                "send fewer or shorter inputs per request.",
                param="input", code="max_tokens_per_request",
            )  # fmt: skip
        texts.append(text)
    return texts, total


async def create_embeddings(state: AppState, request: Request) -> Response | StreamResponse:
    body = params.require_object(request.json())
    model = state.model(params.get_str(body, "model")).id
    inputs, tokens = read_inputs(body, state.engine.count_tokens)
    encoding = params.get_str(body, "encoding_format", "float")
    if encoding not in ("float", "base64"):
        raise InvalidRequest(
            "Invalid 'encoding_format': use 'float' or 'base64'.",
            param="encoding_format", code="invalid_value",
        )  # fmt: skip
    dimensions = params.get_int(body, "dimensions", minimum=1, maximum=MAX_DIMENSIONS)
    size = dimensions or state.config.sim_embedding_dim
    if len(inputs) * size > MAX_FLOATS:
        raise InvalidRequest(
            f"This request asks for {len(inputs) * size} numbers (inputs x dimensions), more "
            f"than {MAX_FLOATS}; send fewer inputs per request.",
            param="input",
        )
    params.get_str(body, "user", None)
    slices = _Slices(state.engine, model, inputs, dimensions, engine_headers(request), encoding)
    step = max(1, _SLICE_FLOATS // size)
    first = await slices.encode(0, step)  # engine errors are still a JSON error response here
    tail = b'],"model":%b,"usage":%b}' % (
        orjson.dumps(model), orjson.dumps({"prompt_tokens": tokens, "total_tokens": tokens}),
    )  # fmt: skip
    if len(inputs) <= step:
        return Response(_HEAD + first + tail)
    return StreamResponse(
        functools.partial(slices.produce, first, step, tail), content_type="application/json"
    )


_HEAD = b'{"object":"list","data":['


@dataclass(frozen=True, slots=True)
class _Slices:
    """One request's embeddings, made and encoded a slice of inputs at a time."""

    engine: Engine
    model: str
    inputs: list[str]
    dimensions: int | None
    headers: dict[str, str]
    encoding: str

    async def encode(self, start: int, stop: int) -> bytes:
        """The embedding objects of inputs[start:stop], comma-separated."""
        try:
            vectors = await self.engine.embed(
                self.model, self.inputs[start:stop], self.dimensions, self.headers
            )
        except EngineError as exc:
            raise api_error(exc) from None
        return b",".join(
            [
                orjson.dumps(
                    {"object": "embedding", "index": i, "embedding": _encode(v, self.encoding)}
                )
                for i, v in enumerate(vectors, start)
            ]
        )

    async def produce(self, first: bytes, step: int, tail: bytes, writer: BodyWriter) -> None:
        """The rest slice by slice, each only when the client has read enough of the last:
        neither the loop nor memory holds the whole answer at once."""
        writer.write(_HEAD + first)
        for start in range(step, len(self.inputs), step):
            await writer.drain()
            if writer.closed:
                return
            await asyncio.sleep(0)  # other requests are served between slices
            writer.write(b"," + await self.encode(start, start + step))
        writer.write(tail)


def _encode(vector: list[float], encoding: str) -> list[float] | str:
    if encoding == "float":
        return vector
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


ROUTES = [Route("POST", "/v1/embeddings", create_embeddings)]
