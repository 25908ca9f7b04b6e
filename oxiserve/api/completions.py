"""POST /v1/completions: the legacy text completion API (text_completion objects)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Sequence
from typing import Any

import orjson

from oxiserve.api import params
from oxiserve.api.inputs import input_items, item_text
from oxiserve.api.routes import Route
from oxiserve.api.sampling import (
    SamplingParams,
    check_budget,
    engine_headers,
    generation_requests,
    read_sampling,
)
from oxiserve.api.shapes import TextTemplates, usage_object
from oxiserve.api.state import AppState
from oxiserve.api.streaming import ChoiceResult, collect, record, start_stream, total_usage
from oxiserve.engine.base import GenerationRequest, TokenLogprob, ToolCall, Usage
from oxiserve.errors import APIError, InvalidRequest
from oxiserve.http import sse
from oxiserve.http.messages import Request, Response, StreamResponse, json_response

MAX_PROMPTS = 16


def read_prompts(body: dict[str, Any], max_ids: int) -> list[str]:
    """``prompt``: a string, a list of strings, a token-id list, or a list of token-id lists
    (each at most ``max_ids`` ids, checked before any per-id work)."""
    items, listed = input_items(body, "prompt", MAX_PROMPTS)
    if listed and any(isinstance(p, str) for p in items) != all(isinstance(p, str) for p in items):
        raise InvalidRequest(
            "Invalid 'prompt': expected a string, an array of strings, or token-id arrays "
            "(not a mix).",
            param="prompt",
        )
    return [
        item_text(item, f"prompt[{i}]" if listed else "prompt", "prompt", max_ids)
        for i, item in enumerate(items)
    ]


async def create_completion(state: AppState, request: Request) -> Response | StreamResponse:
    body = params.require_object(request.json())
    model = state.model(params.get_str(body, "model")).id
    prompts = read_prompts(body, state.config.max_tokens_limit)
    sampling = read_sampling(body, state.config.max_tokens_limit, chat=False)
    check_budget(sampling, len(prompts), state.config.max_tokens_limit)
    echo = params.get_bool(body, "echo")
    params.get_str(body, "suffix", None)
    headers = engine_headers(request)
    requests: list[GenerationRequest] = []
    for p, prompt in enumerate(prompts):
        requests += await generation_requests(
            sampling, headers, state.engine.count_tokens,
            model=model, prompt=prompt, first_index=p * sampling.n,
        )  # fmt: skip
    completion_id = "cmpl-" + os.urandom(12).hex()
    created = int(time.time())
    echoes = {r.choice_index: r.prompt for r in requests} if echo else {}
    if echo:
        check_echo_budget(requests, state.config.max_tokens_limit)
    if not sampling.stream:
        started = asyncio.get_running_loop().time()
        results = await collect(state.engine, requests, sampling.stop)
        record(state.metrics, results, model, started, None)
        for result in results:
            result.text = echoes.get(result.index, "") + result.text
        return json_response(completion_object(completion_id, created, model, results, sampling))
    encoder = CompletionChunkEncoder(completion_id, created, model, echoes)
    return await start_stream(state, requests, encoder, sampling)


def check_echo_budget(requests: Sequence[GenerationRequest], limit: int) -> None:
    """``echo`` repeats each prompt in each of its choices: that output counts too, or a
    10 MB prompt with ``n: 8`` would make 80 MB of frames for one small request."""
    echoed = sum(r.prompt_tokens or 0 for r in requests)
    if echoed > limit:
        raise InvalidRequest(
            f"With 'echo' this request repeats {echoed} prompt tokens (prompts x n), more "
            f"than this server's limit of {limit}; send a shorter prompt or lower n.",
            param="echo",
            code="invalid_value",
        )


def completion_object(
    completion_id: str,
    created: int,
    model: str,
    results: Sequence[ChoiceResult],
    sampling: SamplingParams,
) -> dict[str, Any]:
    return {
        "id": completion_id,
        "object": "text_completion",
        "created": created,
        "model": model,
        "system_fingerprint": None,
        "choices": [
            {
                "text": r.text,
                "index": r.index,
                "logprobs": legacy_logprobs(r.logprobs) if sampling.logprobs else None,
                "finish_reason": r.finish_reason,
            }
            for r in results
        ],
        "usage": usage_object(total_usage(results, sampling.n)),
    }


def legacy_logprobs(logprobs: Sequence[TokenLogprob], offset: int = 0) -> dict[str, Any]:
    offsets, position = [], offset
    for lp in logprobs:
        offsets.append(position)
        position += len(lp.token)
    return {
        "tokens": [lp.token for lp in logprobs],
        "token_logprobs": [lp.logprob for lp in logprobs],
        "top_logprobs": [{t.token: t.logprob for t in lp.top} for lp in logprobs],
        "text_offset": offsets,
    }


class CompletionChunkEncoder:
    """text_completion stream frames (the legacy API streams the same object shape)."""

    def __init__(
        self, completion_id: str, created: int, model: str, echoes: dict[int, str]
    ) -> None:
        self._base = {
            "id": completion_id, "object": "text_completion", "created": created, "model": model,
        }  # fmt: skip
        self._echoes = echoes
        self._templates = TextTemplates(self._frame)

    def _frame(self, index: int, text: str, finish: str | None = None, **extra: Any) -> bytes:
        choice = {"text": text, "index": index, "logprobs": None, "finish_reason": finish, **extra}
        return sse.data_frame(orjson.dumps({**self._base, "choices": [choice]}))

    def text_template(self, index: int) -> tuple[bytes, bytes]:
        return self._templates.get(index)

    def text(self, index: int, text: str) -> bytes:
        return self._templates.text(index, text)

    def open(self, index: int) -> bytes | None:
        echo = self._echoes.get(index)
        return self._frame(index, echo) if echo else None

    def text_logprobs(self, index: int, text: str, logprobs: Sequence[TokenLogprob]) -> bytes:
        return self._frame(index, text, logprobs=legacy_logprobs(logprobs))

    def tool_calls(self, index: int, calls: Sequence[ToolCall]) -> list[bytes]:
        return []

    def finish(self, index: int, reason: str) -> bytes:
        return self._frame(index, "", reason)

    def usage(self, usage: Usage) -> bytes:
        body = {**self._base, "choices": [], "usage": usage_object(usage)}
        return sse.data_frame(orjson.dumps(body))

    def error(self, error: APIError) -> bytes:
        return sse.data_frame(error.encode())


ROUTES = [Route("POST", "/v1/completions", create_completion)]
