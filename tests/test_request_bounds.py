"""Work a chat request makes is bounded: list lengths as OpenAI bounds them, and what is
proportional to the prompt done once per request, not once per choice."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from oxiserve import Server
from oxiserve.api import sampling
from oxiserve.engine import sim_text
from tests.test_chat import MODEL, USER, raw_post

EMPTY: Any = {"role": "user", "content": ""}


@pytest.mark.parametrize(
    ("extra", "param", "limit"),
    [
        ({"messages": [EMPTY] * 2049}, "messages", 2048),
        ({"tools": [{"type": "function", "function": {"name": "f"}}] * 129}, "tools", 128),
    ],
)
async def test_lists_longer_than_openai_allows_are_400(
    server: Server, extra: dict[str, Any], param: str, limit: int
) -> None:
    body = {"model": MODEL, "messages": USER, **extra}
    status, payload = await raw_post(server, "/v1/chat/completions", body)
    assert status == 400
    error = orjson.loads(payload)["error"]
    assert (error["param"], error["code"]) == (param, "array_above_max_length")
    assert f"maximum length {limit}, but got an array with length {limit + 1}" in error["message"]


async def test_the_longest_allowed_conversation_is_answered(server: Server) -> None:
    body = {"model": MODEL, "messages": [EMPTY] * 2048, "max_tokens": 2}
    status, payload = await raw_post(server, "/v1/chat/completions", body)
    assert status == 200
    assert orjson.loads(payload)["usage"]["completion_tokens"] == 2


async def test_n_choices_hash_and_count_the_prompt_once(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = {"digest": 0, "count": 0}
    real_digest, real_count = sampling.request_digest, sim_text.count_tokens
    prompt_marker = "unique marker of this conversation"

    def digest(request: Any) -> bytes:
        calls["digest"] += 1
        return real_digest(request)

    def count(text: str) -> int:
        calls["count"] += prompt_marker in text
        return real_count(text)

    monkeypatch.setattr(sampling, "request_digest", digest)
    monkeypatch.setattr(sim_text, "count_tokens", count)
    messages = [{"role": "user", "content": f"{prompt_marker} {i}"} for i in range(50)]
    for stream in (False, True):
        calls.update(digest=0, count=0)
        body = {"model": MODEL, "messages": messages, "n": 8, "max_tokens": 3, "stream": stream}
        status, _ = await raw_post(server, "/v1/chat/completions", body)
        assert status == 200
        assert calls == {"digest": 1, "count": 1}


async def test_seeded_choices_differ_and_repeat_exactly(server: Server) -> None:
    body = {"model": MODEL, "messages": USER, "n": 4, "seed": 11, "max_tokens": 12}

    async def contents(extra: dict[str, Any]) -> list[str]:
        status, payload = await raw_post(server, "/v1/chat/completions", body | extra)
        assert status == 200
        return [c["message"]["content"] for c in orjson.loads(payload)["choices"]]

    first = await contents({})
    assert len(set(first)) == 4
    assert await contents({}) == first
    assert await contents({"seed": 12}) != first
