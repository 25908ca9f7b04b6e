"""Rate limits: token buckets per key or address, OpenAI's headers, 429 that SDK retries."""

from __future__ import annotations

import asyncio

import httpx
import openai
import pytest

from oxiserve.api import limits as limits_module
from oxiserve.api.limits import Limits, RateLimited
from tests.conftest import TIMEOUT, running

CHAT = {"model": "oxiserve-sim", "messages": [{"role": "user", "content": "Hi"}]}


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_then_the_rate() -> None:
    clock = Clock()
    limits = Limits(rps=2, burst=3, clock=clock)
    headers = [dict(limits.admit("k")) for _ in range(3)]
    assert [h["x-ratelimit-remaining-requests"] for h in headers] == ["2", "1", "0"]
    assert headers[0]["x-ratelimit-limit-requests"] == "3"
    with pytest.raises(RateLimited) as caught:
        limits.admit("k")
    sent = dict(caught.value.headers)
    assert (caught.value.status, caught.value.code) == (429, "rate_limit_exceeded")
    assert (sent["retry-after"], sent["retry-after-ms"]) == ("1", "500")  # one token at 2/s
    assert sent["x-ratelimit-reset-requests"] == "2s"  # 3 tokens at 2/s: 1.5 s, rounded up
    clock.now += 0.5
    limits.admit("k")  # refilled one
    assert dict(limits.admit("other"))["x-ratelimit-remaining-requests"] == "2"  # its own bucket


def test_tokens_per_minute() -> None:
    clock = Clock()
    limits = Limits(tpm=600, clock=clock)  # 10 tokens a second
    limits.admit("k", tokens=500)
    with pytest.raises(RateLimited) as caught:
        limits.admit("k", tokens=200)
    assert dict(caught.value.headers)["retry-after-ms"] == "10000"  # 100 missing at 10/s
    clock.now += 10
    assert dict(limits.admit("k", tokens=200))["x-ratelimit-remaining-tokens"] == "0"
    with pytest.raises(RateLimited, match="too large"):
        limits.admit("k", tokens=601)


def test_open_streams() -> None:
    limits = Limits(streams=1)
    limits.admit("k", stream=True)
    limits.stream_opened("k")
    with pytest.raises(RateLimited, match="streams"):
        limits.admit("k", stream=True)
    limits.admit("k")  # a non-stream request is not a stream
    limits.stream_closed("k")
    limits.admit("k", stream=True)


def test_the_state_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits_module, "MAX_KEYS", 50)
    limits = Limits(rps=1)
    for i in range(1000):
        limits.admit(f"key {i}")
    assert limits.tracked == 50


async def test_a_429_carries_openais_headers_and_the_sdk_retry_succeeds() -> None:
    async with running(rate_limit_rps=4, rate_limit_burst=1) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT) as http:
            first = await http.post("/v1/chat/completions", json=CHAT)
            assert first.status_code == 200
            assert first.headers["x-ratelimit-limit-requests"] == "1"
            assert first.headers["x-ratelimit-remaining-requests"] == "0"
            second = await http.post("/v1/chat/completions", json=CHAT)
            assert second.status_code == 429
            assert second.json()["error"]["code"] == "rate_limit_exceeded"
            assert second.headers["retry-after"] == "1"
            assert 1 <= int(second.headers["retry-after-ms"]) <= 250
            missing = await http.get("/v1/models/nope")  # errors carry the headers too
            assert "x-ratelimit-remaining-requests" in missing.headers
            assert (await http.get("/health")).status_code == 200  # never limited
        async with openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="x",
                                      max_retries=3) as sdk:  # fmt: skip
            replies = await asyncio.wait_for(asyncio.gather(*(
                sdk.chat.completions.create(**CHAT) for _ in range(3)  # type: ignore[call-overload]
            )), TIMEOUT)  # fmt: skip
        assert all(r.choices[0].message.content for r in replies)  # retried after 429s


async def test_a_key_may_hold_only_so_many_streams() -> None:
    async with (
        running(max_concurrent_streams=1, sim_itl_ms=2) as server,
        httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT) as http,
    ):
        body = {**CHAT, "stream": True, "max_tokens": 2000}
        async with http.stream("POST", "/v1/chat/completions", json=body) as first:
            assert first.status_code == 200
            second = await http.post("/v1/chat/completions", json=body)
            assert second.status_code == 429
            assert "streams" in second.json()["error"]["message"]
            plain = await http.post("/v1/chat/completions", json=CHAT)
            assert plain.status_code == 200
        for _ in range(500):  # bounded: the closed stream's slot frees as its writer ends
            again = await http.post("/v1/chat/completions", json={**body, "max_tokens": 3})
            if again.status_code == 200:
                break
        assert again.status_code == 200
