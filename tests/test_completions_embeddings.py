"""POST /v1/completions and POST /v1/embeddings with the openai SDK and raw HTTP."""

from __future__ import annotations

import asyncio
import base64
import math
import struct
from typing import Any

import openai
import orjson
import pytest

from oxiserve import Server
from oxiserve.engine.sim_text import count_tokens
from tests.conftest import running
from tests.test_chat import MODEL, raw_post, sse_data


async def test_completion_non_stream(client: openai.AsyncOpenAI) -> None:
    result = await client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=6)
    assert result.object == "text_completion"
    assert result.choices[0].finish_reason == "length"
    assert result.usage is not None
    assert result.usage.completion_tokens == 6
    assert count_tokens(result.choices[0].text) == 6


async def test_completion_stream_matches_non_stream(client: openai.AsyncOpenAI) -> None:
    whole = await client.completions.create(model=MODEL, prompt="Hi", max_tokens=9, seed=1)
    stream = await client.completions.create(
        model=MODEL, prompt="Hi", max_tokens=9, seed=1, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 9


async def test_completion_prompt_forms(server: Server) -> None:
    for prompt in (["one prompt"], [1, 2, 3], [[1, 2], [3]], ["a", "b"]):
        status, payload = await raw_post(
            server, "/v1/completions", {"model": MODEL, "prompt": prompt, "max_tokens": 2}
        )
        assert status == 200, payload
        expected = 2 if prompt in (["a", "b"], [[1, 2], [3]]) else 1
        choices = orjson.loads(payload)["choices"]
        assert [c["index"] for c in choices] == list(range(expected))


async def test_completion_echo_and_stop() -> None:
    async with running(sim_mode="fixed", sim_fixed_text="alpha beta gamma delta") as server:
        status, payload = await raw_post(
            server, "/v1/completions",
            {"model": MODEL, "prompt": "Say:", "echo": True, "stop": " gam"},
        )  # fmt: skip
        assert status == 200
        choice = orjson.loads(payload)["choices"][0]
        assert choice["text"] == "Say:alpha beta"
        assert choice["finish_reason"] == "stop"
        status, payload = await raw_post(
            server, "/v1/completions",
            {"model": MODEL, "prompt": "Say:", "echo": True, "stop": " gam", "stream": True},
        )  # fmt: skip
        frames = [orjson.loads(f) for f in sse_data(payload) if f != b"[DONE]"]
        assert "".join(f["choices"][0]["text"] for f in frames) == "Say:alpha beta"


async def test_completion_logprobs_legacy_shape(server: Server) -> None:
    status, payload = await raw_post(
        server, "/v1/completions", {"model": MODEL, "prompt": "x", "max_tokens": 3, "logprobs": 2}
    )
    assert status == 200
    choice = orjson.loads(payload)["choices"][0]
    logprobs = choice["logprobs"]
    tokens = logprobs["tokens"]
    assert len(tokens) == len(logprobs["token_logprobs"]) == len(logprobs["top_logprobs"]) == 3
    assert "".join(tokens) == choice["text"]
    for token, logprob, top in zip(
        tokens, logprobs["token_logprobs"], logprobs["top_logprobs"], strict=True
    ):
        assert -3.0 <= logprob < 0.0
        assert len(top) == 2  # the request's logprobs count, each led by the chosen token
        assert top[token] == logprob
        assert all(alt < logprob for name, alt in top.items() if name != token)
        assert sum(math.exp(v) for v in top.values()) <= 1.0
    offsets = [0]
    for token in tokens[:-1]:
        offsets.append(offsets[-1] + len(token))
    assert logprobs["text_offset"] == offsets


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": MODEL}, "prompt"),
        ({"model": MODEL, "prompt": []}, "prompt"),
        ({"model": MODEL, "prompt": [1.5]}, "prompt"),
        ({"model": MODEL, "prompt": "x", "logprobs": 9}, "logprobs"),
        ({"model": MODEL, "prompt": "x", "max_tokens": -1}, "max_tokens"),
    ],
)
async def test_completion_invalid_bodies(server: Server, body: dict[str, Any], param: str) -> None:
    status, payload = await raw_post(server, "/v1/completions", body)
    assert status == 400
    assert orjson.loads(payload)["error"]["param"] == param


async def test_completion_errors_map_to_sdk_exceptions(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.RateLimitError):
        await client.completions.create(
            model=MODEL, prompt="x", extra_headers={"x-sim-error": "429"}
        )
    with pytest.raises(openai.NotFoundError):
        await client.completions.create(model="nope", prompt="x")


async def test_sync_sdk_completions(server: Server) -> None:
    def run() -> str:
        with openai.OpenAI(base_url=server.url + "/v1", api_key="k", max_retries=0) as sdk:
            stream = sdk.completions.create(model=MODEL, prompt="x", max_tokens=3, stream=True)
            return "".join(c.choices[0].text for c in stream if c.choices)

    assert count_tokens(await asyncio.to_thread(run)) == 3


async def test_embeddings_float(client: openai.AsyncOpenAI) -> None:
    result = await client.embeddings.create(
        model=MODEL, input=["hello", "world", "hello"], encoding_format="float"
    )
    vectors = [d.embedding for d in result.data]
    assert [d.index for d in result.data] == [0, 1, 2]
    assert len(vectors[0]) == 384
    assert vectors[0] == vectors[2] != vectors[1]
    assert math.isclose(math.fsum(x * x for x in vectors[1]), 1.0, rel_tol=1e-6)
    assert result.usage.prompt_tokens == result.usage.total_tokens == 3


async def test_embeddings_base64_dimensions_and_token_input(server: Server) -> None:
    status, payload = await raw_post(
        server, "/v1/embeddings",
        {"model": MODEL, "input": "hello", "encoding_format": "base64", "dimensions": 8},
    )  # fmt: skip
    assert status == 200
    raw = base64.b64decode(orjson.loads(payload)["data"][0]["embedding"])
    floats = struct.unpack("<8f", raw)
    assert math.isclose(sum(x * x for x in floats), 1.0, rel_tol=1e-5)
    status, payload = await raw_post(
        server, "/v1/embeddings", {"model": MODEL, "input": [[1, 2, 3], [4]]}
    )
    assert status == 200
    assert len(orjson.loads(payload)["data"]) == 2


async def test_sdk_default_base64_embeddings_decode(client: openai.AsyncOpenAI) -> None:
    """The SDK asks for base64 by default and decodes it itself."""
    result = await client.embeddings.create(model=MODEL, input="hi", dimensions=16)
    floats = await client.embeddings.create(
        model=MODEL, input="hi", dimensions=16, encoding_format="float"
    )
    decoded, exact = result.data[0].embedding, floats.data[0].embedding
    assert len(decoded) == 16
    # the same vector as the float answer, to float32 precision: decoded, not just sized
    assert all(
        math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-7) for a, b in zip(decoded, exact, strict=True)
    )


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": MODEL, "input": ""}, "input"),
        ({"model": MODEL, "input": []}, "input"),
        ({"model": MODEL, "input": ["ok", ""]}, "input"),
        ({"model": MODEL, "input": 5}, "input"),
        ({"model": MODEL}, "input"),
        ({"model": MODEL, "input": "x", "encoding_format": "hex"}, "encoding_format"),
        ({"model": MODEL, "input": "x", "dimensions": 0}, "dimensions"),
        ({"input": "x"}, "model"),
    ],
)
async def test_embeddings_invalid_bodies(server: Server, body: dict[str, Any], param: str) -> None:
    status, payload = await raw_post(server, "/v1/embeddings", body)
    assert status == 400
    assert orjson.loads(payload)["error"]["param"] == param


async def test_embeddings_honour_forced_simulator_errors(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.RateLimitError):
        await client.embeddings.create(model=MODEL, input="x", extra_headers={"x-sim-error": "429"})
    with pytest.raises(openai.BadRequestError):
        await client.embeddings.create(
            model=MODEL, input="x", extra_headers={"x-sim-error": "teapot"}
        )
