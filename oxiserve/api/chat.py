"""POST /v1/chat/completions: validation, chat.completion and chat.completion.chunk shapes."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Sequence
from typing import Any

import orjson

from oxiserve.api import chat_request
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
from oxiserve.engine.base import TokenLogprob, ToolCall, Usage
from oxiserve.errors import APIError
from oxiserve.http import sse
from oxiserve.http.messages import Request, Response, StreamResponse, json_response

FINGERPRINT = "fp_oxiserve"


async def create_chat_completion(state: AppState, request: Request) -> Response | StreamResponse:
    body = request.json()
    chat = chat_request.parse(body)
    sampling = read_sampling(body, state.config.max_tokens_limit)
    check_budget(sampling, 1, state.config.max_tokens_limit)
    model = state.model(chat.model).id
    headers = engine_headers(request)
    requests = await generation_requests(
        sampling,
        headers,
        state.engine.count_tokens,
        model=model,
        prompt=chat.prompt,
        messages=chat.messages,
        tools=chat.tools,
        tool_choice=chat.tool_choice,
        forced_tool=chat.forced_tool,
        response_format=chat.response_format,
    )
    completion_id = "chatcmpl-" + os.urandom(12).hex()
    created = int(time.time())
    legacy = chat.legacy_functions
    if not sampling.stream:
        started = asyncio.get_running_loop().time()
        results = await collect(state.engine, requests, sampling.stop)
        record(state.metrics, results, model, started, None)
        body = completion_object(completion_id, created, model, results, sampling, legacy)
        return json_response(body)
    encoder = ChatChunkEncoder(completion_id, created, model, legacy_functions=legacy)
    return await start_stream(state, requests, encoder, sampling)


def completion_object(
    completion_id: str,
    created: int,
    model: str,
    results: Sequence[ChoiceResult],
    sampling: SamplingParams,
    legacy_functions: bool = False,
) -> dict[str, Any]:
    """A chat.completion; with ``legacy_functions`` a call is answered as OpenAI answers the
    deprecated ``functions``: ``message.function_call`` and finish_reason "function_call"."""
    choices = []
    for result in results:
        message: dict[str, Any] = {"role": "assistant", "content": result.text, "refusal": None}
        finish_reason = result.finish_reason
        if result.tool_calls:
            message["content"] = result.text or None
        if result.tool_calls and legacy_functions:
            call = result.tool_calls[0]  # the legacy API makes one call per answer
            message["function_call"] = {"name": call.name, "arguments": call.arguments}
            finish_reason = "function_call"
        elif result.tool_calls:
            message["tool_calls"] = [tool_call_object(call) for call in result.tool_calls]
        choices.append(
            {
                "index": result.index,
                "message": message,
                "logprobs": (
                    {"content": [logprob_object(lp) for lp in result.logprobs], "refusal": None}
                    if sampling.logprobs
                    else None
                ),
                "finish_reason": finish_reason,
            }
        )
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "system_fingerprint": FINGERPRINT,
        "choices": choices,
        "usage": usage_object(total_usage(results, sampling.n)),
    }


def tool_call_object(call: ToolCall) -> dict[str, Any]:
    return {
        "id": call.id,
        "type": "function",
        "function": {"name": call.name, "arguments": call.arguments},
    }


def logprob_object(lp: TokenLogprob) -> dict[str, Any]:
    return {
        "token": lp.token,
        "logprob": lp.logprob,
        "bytes": list(lp.token.encode("utf-8")),
        "top_logprobs": [
            {"token": t.token, "logprob": t.logprob, "bytes": list(t.token.encode("utf-8"))}
            for t in lp.top
        ],
    }


class ChatChunkEncoder:
    """chat.completion.chunk frames; text frames come from a pre-split template.

    With ``legacy_functions`` a call streams as ``delta.function_call`` (the name, then
    argument fragments) and ends with finish_reason "function_call".
    """

    def __init__(
        self, completion_id: str, created: int, model: str, *, legacy_functions: bool = False
    ) -> None:
        self._legacy = legacy_functions
        self._base = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": FINGERPRINT,
        }
        self._templates = TextTemplates(
            lambda index, text: self._frame([self._choice(index, {"content": text})])
        )

    def _frame(self, choices: list[dict[str, Any]], **extra: Any) -> bytes:
        return sse.data_frame(orjson.dumps({**self._base, "choices": choices, **extra}))

    @staticmethod
    def _choice(index: int, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}

    def text_template(self, index: int) -> tuple[bytes, bytes]:
        return self._templates.get(index)

    def text(self, index: int, text: str) -> bytes:
        return self._templates.text(index, text)

    def open(self, index: int) -> bytes | None:
        return self._frame([self._choice(index, {"role": "assistant", "content": ""})])

    def text_logprobs(self, index: int, text: str, logprobs: Sequence[TokenLogprob]) -> bytes:
        choice = self._choice(index, {"content": text})
        choice["logprobs"] = {"content": [logprob_object(lp) for lp in logprobs], "refusal": None}
        return self._frame([choice])

    def tool_calls(self, index: int, calls: Sequence[ToolCall]) -> list[bytes]:
        if self._legacy:
            return self._function_call(index, calls[0]) if calls else []
        frames = []
        for position, call in enumerate(calls):
            head = {
                "index": position,
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": ""},
            }
            frames.append(self._frame([self._choice(index, {"tool_calls": [head]})]))
            for piece in _pieces(call.arguments, 16):
                delta = {"tool_calls": [{"index": position, "function": {"arguments": piece}}]}
                frames.append(self._frame([self._choice(index, delta)]))
        return frames

    def _function_call(self, index: int, call: ToolCall) -> list[bytes]:
        head = {"function_call": {"name": call.name, "arguments": ""}}
        frames = [self._frame([self._choice(index, head)])]
        for piece in _pieces(call.arguments, 16):
            delta = {"function_call": {"arguments": piece}}
            frames.append(self._frame([self._choice(index, delta)]))
        return frames

    def finish(self, index: int, reason: str) -> bytes:
        if self._legacy and reason == "tool_calls":
            reason = "function_call"
        return self._frame([self._choice(index, {}, reason)])

    def usage(self, usage: Usage) -> bytes:
        return self._frame([], usage=usage_object(usage))

    def error(self, error: APIError) -> bytes:
        return sse.data_frame(error.encode())


def _pieces(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


ROUTES = [Route("POST", "/v1/chat/completions", create_chat_completion)]
