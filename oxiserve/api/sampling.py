"""Sampling and streaming parameters shared by chat completions and completions."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from oxiserve.api import params
from oxiserve.engine.base import GenerationRequest, request_digest
from oxiserve.errors import InvalidRequest
from oxiserve.http.messages import Request


@dataclass(frozen=True, slots=True)
class SamplingParams:
    max_tokens: int | None
    temperature: float | None
    top_p: float | None
    seed: int | None
    stop: tuple[str, ...]
    n: int
    stream: bool
    include_usage: bool
    logprobs: bool
    top_logprobs: int
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float | None = None  # vLLM's extension: 1.0 is none


def read_sampling(body: dict[str, Any], limit: int, *, chat: bool = True) -> SamplingParams:
    max_tokens = params.get_int(body, "max_tokens", minimum=1, maximum=limit)
    if chat:
        newer = params.get_int(body, "max_completion_tokens", minimum=1, maximum=limit)
        if newer is not None:
            max_tokens = newer if max_tokens is None else min(max_tokens, newer)
    stream = params.get_bool(body, "stream")
    options = params.get_object(body, "stream_options")
    if options is not None and not stream:
        raise InvalidRequest(
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            param="stream_options",
        )
    include_usage = params.get_bool(options or {}, "include_usage")
    presence = params.get_number(body, "presence_penalty", minimum=-2.0, maximum=2.0)
    frequency = params.get_number(body, "frequency_penalty", minimum=-2.0, maximum=2.0)
    repetition = params.get_number(body, "repetition_penalty", minimum=0.01, maximum=10.0)
    params.get_str(body, "user", None)
    if chat:
        logprobs = params.get_bool(body, "logprobs")
        top_logprobs = params.get_int(body, "top_logprobs", 0, minimum=0, maximum=20)
        if top_logprobs and not logprobs:
            raise InvalidRequest(
                "'top_logprobs' requires 'logprobs' to be true.", param="top_logprobs"
            )
    else:
        # completions: logprobs is an integer count of alternatives (0..5)
        count = params.get_int(body, "logprobs", minimum=0, maximum=5)
        logprobs, top_logprobs = count is not None, count or 0
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=params.get_number(body, "temperature", minimum=0.0, maximum=2.0),
        top_p=params.get_number(body, "top_p", minimum=0.0, maximum=1.0),
        seed=params.get_int(body, "seed"),
        stop=params.get_stop(body),
        n=params.get_int(body, "n", 1, minimum=1, maximum=8),
        stream=stream,
        include_usage=include_usage,
        logprobs=logprobs,
        top_logprobs=top_logprobs,
        presence_penalty=presence or 0.0,
        frequency_penalty=frequency or 0.0,
        repetition_penalty=repetition,
    )


def check_budget(sampling: SamplingParams, prompts: int, limit: int) -> None:
    """Refuse requests whose worst case (choices x max_tokens, logprobs included) is too big.

    A 150-byte request must not make the server produce hundreds of megabytes.
    """
    if sampling.max_tokens is None:
        return
    per_token = 1 + sampling.top_logprobs if sampling.logprobs else 1
    total = prompts * sampling.n * sampling.max_tokens * per_token
    if total > limit:
        raise InvalidRequest(
            f"This request asks for up to {total} tokens (prompts x n x max_tokens"
            f"{' x (1 + top_logprobs)' if per_token > 1 else ''}), more than this server's "
            f"limit of {limit}; lower max_tokens.",
            param="max_tokens",
            code="invalid_value",
        )


_COUNT_SLICE = 256 * 1024  # characters of a prompt counted at a time (a few ms)


async def count_prompt_tokens(count_tokens: Callable[[str], int], text: str) -> int:
    """``count_tokens(text)``, a long text a slice at a time with other requests served in
    between: counting a 10 MB prompt is most of a second of work.

    Slices are cut before a space where one is near (a token carries the space before it),
    so the sum is the count of the whole text.
    """
    if len(text) <= _COUNT_SLICE:
        return count_tokens(text)
    total = start = 0
    while start < len(text):
        stop = start + _COUNT_SLICE
        space = text.find(" ", stop, stop + 4096)
        stop = space if space > 0 else stop
        total += count_tokens(text[start:stop])
        start = stop
        await asyncio.sleep(0)
    return total


async def generation_requests(
    sampling: SamplingParams,
    headers: Mapping[str, str],
    count_tokens: Callable[[str], int],
    *,
    model: str,
    prompt: str,
    first_index: int = 0,
    **extra: Any,
) -> list[GenerationRequest]:
    """What each of the ``sampling.n`` choices of one prompt asks of the engine (``extra``:
    chat messages, tools, response format).  The work proportional to the prompt (its digest,
    its token count by the engine's ``count_tokens``) is done once, not once per choice."""
    tokens = await count_prompt_tokens(count_tokens, prompt)
    first = GenerationRequest(
        model=model,
        prompt=prompt,
        max_tokens=sampling.max_tokens,
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        seed=sampling.seed,
        stop=sampling.stop,
        logprobs=sampling.logprobs,
        top_logprobs=sampling.top_logprobs,
        presence_penalty=sampling.presence_penalty,
        frequency_penalty=sampling.frequency_penalty,
        repetition_penalty=sampling.repetition_penalty,
        choice_index=first_index,
        headers=headers,
        prompt_tokens=tokens,
        digest=request_digest(sampling.seed, model, prompt, extra.get("messages", ())),
        **extra,
    )
    return [first] + [replace(first, choice_index=first_index + i) for i in range(1, sampling.n)]


def engine_headers(request: Request) -> dict[str, str]:
    """Request headers an engine may honour (the simulator's ``x-sim-*``)."""
    return {k: v for k, v in request.headers.items() if k.startswith("x-sim-")}
