"""Each simulated failure type, as the official SDK (or a raw client) meets it."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import openai
import pytest

from oxiserve.config import Config
from tests.conftest import TIMEOUT, running

CHAT: Any = [{"role": "user", "content": "Hello there"}]


def sdk(url: str, **options: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=url + "/v1", api_key="x", max_retries=0, **options)


async def read_deltas(stream: Any, texts: list[str]) -> None:
    """Append a chat stream's content deltas to ``texts`` until it ends (or breaks)."""
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            texts.append(chunk.choices[0].delta.content)


async def read_body(response: httpx.Response, into: bytearray) -> None:
    async for data in response.aiter_bytes():
        into += data


@pytest.mark.parametrize(
    ("kind", "exception", "code"),
    [
        ("rate_limit", openai.RateLimitError, "rate_limit_exceeded"),
        ("invalid_api_key", openai.AuthenticationError, "invalid_api_key"),
        ("context_length", openai.BadRequestError, "context_length_exceeded"),
        ("server_error", openai.InternalServerError, "server_error"),
        ("overloaded", openai.InternalServerError, "engine_overloaded"),
        ("model_not_found", openai.NotFoundError, "model_not_found"),
    ],
)
async def test_each_error_type_is_the_sdks_own_exception(
    kind: str, exception: type[openai.APIStatusError], code: str
) -> None:
    async with running(sim_failure_rate=1.0, sim_failure_types=(kind,)) as server:
        async with sdk(server.url) as client:
            with pytest.raises(exception) as caught:
                await client.chat.completions.create(model="oxiserve-sim", messages=CHAT)
            body = caught.value.body
            assert isinstance(body, dict)
            assert body["code"] == code
            if kind in ("rate_limit", "overloaded"):
                assert caught.value.response.headers["retry-after"] == "1"
        async with sdk(server.url) as client:  # a header asks for the same, per request
            with pytest.raises(exception):
                await client.chat.completions.create(
                    model="oxiserve-sim", messages=CHAT, extra_headers={"x-sim-error": kind}
                )


async def test_mid_stream_is_an_error_event_after_half_the_tokens() -> None:
    async with (
        running(sim_failure_rate=1.0, sim_failure_types=("mid_stream",)) as server,
        sdk(server.url) as client,
    ):
        stream = await client.chat.completions.create(
            model="oxiserve-sim", messages=CHAT, max_tokens=10, stream=True
        )
        texts: list[str] = []
        with pytest.raises(openai.APIError):
            await read_deltas(stream, texts)
        assert len(texts) == 5


async def test_abort_resets_the_connection_midway() -> None:
    async with running(sim_failure_rate=1.0, sim_failure_types=("abort",)) as server:
        async with sdk(server.url) as client:
            with pytest.raises(openai.APIConnectionError):  # non-stream: no answer at all
                await client.chat.completions.create(model="oxiserve-sim", messages=CHAT)
        async with httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT) as http:
            body = {"model": "oxiserve-sim", "messages": CHAT, "max_tokens": 10, "stream": True}
            received = bytearray()
            async with http.stream("POST", "/v1/chat/completions", json=body) as response:
                assert response.status_code == 200
                with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)):  # broken off
                    await read_body(response, received)
            tokens = received.count(b'"content":"') - received.count(b'"content":""')
            assert tokens == 5  # the tokens before the reset arrived, no more
            assert b"[DONE]" not in received
            health = await http.get("/health")  # the server serves on
            assert health.status_code == 200


async def test_stall_sends_nothing_for_a_while_so_client_timeouts_fire() -> None:
    async with (
        running(sim_stall_ms=60_000) as server,
        sdk(server.url, timeout=0.3) as client,
    ):
        stalled = {"x-sim-error": "stall", "x-sim-error-at": "0"}
        with pytest.raises(openai.APITimeoutError):
            await client.chat.completions.create(
                model="oxiserve-sim", messages=CHAT, extra_headers=stalled
            )
        stream = await client.chat.completions.create(
            model="oxiserve-sim", messages=CHAT, max_tokens=10, stream=True,
            extra_headers={"x-sim-error": "stall", "x-sim-error-at": "4"},
        )  # fmt: skip
        texts: list[str] = []
        with pytest.raises(Exception) as caught:  # noqa: PT011 (the SDK's httpx, unwrapped)
            await read_deltas(stream, texts)
        assert type(caught.value).__name__ == "ReadTimeout"  # a read timeout mid-stream
        assert len(texts) == 4  # then nothing


async def test_after_a_short_stall_the_answer_is_whole() -> None:
    async with (
        running(sim_stall_ms=50, sim_default_max_tokens=12) as server,
        httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT) as http,
    ):
        body = {"model": "oxiserve-sim", "messages": CHAT}
        plain = (await http.post("/v1/chat/completions", json=body)).json()
        loop = asyncio.get_running_loop()
        started = loop.time()
        stalled = await http.post("/v1/chat/completions", json=body,
                                  headers={"x-sim-error": "stall"})  # fmt: skip
        assert loop.time() - started >= 0.05
    assert stalled.json()["choices"] == plain["choices"]  # the same answer, only later


def test_the_types_share_the_failing_requests_deterministically() -> None:
    from oxiserve.engine.base import GenerationRequest
    from oxiserve.engine.sim_plan import make_plan

    config = Config(sim_failure_rate=0.5, sim_failure_types=("rate_limit", "stall", "abort"))
    seen: dict[str, int] = {}
    for i in range(600):
        plan = make_plan(config, GenerationRequest(model="m", prompt=f"request {i}"))
        again = make_plan(config, GenerationRequest(model="m", prompt=f"request {i}"))
        assert plan.failure == again.failure
        name = "none" if plan.failure is None else plan.failure.action + str(plan.failure.status)
        seen[name] = seen.get(name, 0) + 1
    assert set(seen) == {"none", "error429", "stall500", "abort500"}
    assert 240 <= seen["none"] <= 360  # about half fail, about a third of them each way
    assert all(60 <= seen[k] <= 140 for k in ("error429", "stall500", "abort500"))


def test_an_unknown_type_is_refused() -> None:
    with pytest.raises(ValueError, match="sim_failure_types must be some of"):
        Config(sim_failure_types=("lava",))
