"""Work a chat request makes is bounded: list lengths as OpenAI bounds them, and what is
proportional to the prompt done once per request, not once per choice."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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

    def digest(*parts: Any) -> bytes:
        calls["digest"] += 1
        return real_digest(*parts)

    def count(text: str) -> int:
        calls["count"] += prompt_marker in text
        return real_count(text)

    monkeypatch.setattr(sampling, "request_digest", digest)
    monkeypatch.setattr(sim_text, "count_tokens", count)
    for stream in (False, True):  # each its own conversation: counts are memoized
        messages = [{"role": "user", "content": f"{prompt_marker} {i} {stream}"} for i in range(50)]
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


@pytest.mark.parametrize(
    "text",
    [
        "plain words and more words " * 30_000,
        "x" * 700_000,  # no space to cut before: cut anywhere, still counted
        ("def f(x):\n    return x  # comment\n" * 20_000),
        "  spaced   out\t\ttext \n" * 40_000,
    ],
)
async def test_long_prompts_are_counted_in_slices_with_the_loop_free_between(text: str) -> None:
    import asyncio

    # The sleep(0)s are the measure, not waits: the ticker counts the loop iterations it got,
    # which is how the test sees the loop was free between slices.
    ticks = 0
    done = False

    async def other_request() -> None:
        nonlocal ticks
        while not done:
            ticks += 1
            await asyncio.sleep(0)  # one loop iteration per tick

    other = asyncio.create_task(other_request())
    await asyncio.sleep(0)  # one iteration, so the ticker is running before counting starts
    try:
        counted = await sampling.count_prompt_tokens(sim_text.count_tokens, text)
    finally:
        done = True
        await other
    slices = len(text) // (256 * 1024)
    assert ticks >= slices  # the other task ran between slices
    if " " in text:
        assert counted == sim_text.count_tokens(text)
    else:
        assert abs(counted - sim_text.count_tokens(text)) <= slices


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("ab cd\n\t.,!Zé1😀")), max_size=600),
       st.integers(min_value=0, max_value=40))  # fmt: skip
def test_echo_splits_only_the_start_it_needs(text: str, wanted: int) -> None:
    from oxiserve.engine.sim_plan import leading_pieces

    whole = sim_text.split_pieces(text)
    lead = leading_pieces(text, wanted)
    assert lead == whole[: len(lead)]
    assert len(lead) >= min(len(whole), wanted + 1)
