"""The simulator as a loaded server: running slots and a queue, prefill, load factor, context
window and latency distributions."""

from __future__ import annotations

import asyncio
import json
import statistics
from random import Random
from typing import Any

import httpx
import openai
import pytest

from oxiserve.config import Config
from oxiserve.engine.base import EngineError
from oxiserve.engine.sim import SimStream
from oxiserve.engine.sim_plan import make_plan, spread
from oxiserve.engine.sim_text import count_tokens
from tests.conftest import TIMEOUT, running, wait_all_tasks_blocked, wait_until
from tests.test_metrics import sample, scrape
from tests.test_sim_engine import engine, request

CHAT: Any = [{"role": "user", "content": "Hello there"}]


async def test_64_requests_on_8_running_slots_queue_first_come_first_served() -> None:
    sim = engine(sim_max_running=8, sim_default_max_tokens=4)
    order: list[int] = []
    streams = [sim.generate(request(prompt=f"request {i}")) for i in range(64)]

    async def first_token(i: int) -> None:
        await anext(streams[i])
        order.append(i)

    tasks = [asyncio.create_task(first_token(i)) for i in range(64)]
    await wait_all_tasks_blocked()
    assert sorted(order) == list(range(8))  # the first 8 run; the others wait
    assert (sim.active_generations, sim.waiting) == (8, 56)
    for done in range(56):  # each answer that ends lets exactly the next one in
        await streams[done].aclose()
        await wait_all_tasks_blocked()
        assert order[-1] == 8 + done
        assert (sim.active_generations, sim.waiting) == (8, 55 - done)
    await asyncio.wait_for(asyncio.gather(*tasks), TIMEOUT)
    for stream in streams[56:]:
        assert len([t async for t in stream]) == 3  # the rest of its answer
    assert (sim.active_generations, sim.waiting) == (0, 0)


async def test_a_request_closed_while_it_waits_leaves_the_queue() -> None:
    sim = engine(sim_max_running=1, sim_default_max_tokens=3)
    first = sim.generate(request())
    await anext(first)
    waiting = sim.generate(request())
    task = asyncio.create_task(anext(waiting))
    await wait_all_tasks_blocked()
    assert sim.waiting == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (sim.waiting, waiting.finish_reason) == (0, "cancelled")
    third = sim.generate(request())
    pending = asyncio.create_task(anext(third))
    await wait_all_tasks_blocked()
    await first.aclose()  # its slot goes to the third, not to the one that left
    assert await asyncio.wait_for(pending, TIMEOUT)
    assert sim.active_generations == 1
    await third.aclose()
    assert sim.active_generations == 0


@pytest.mark.parametrize(
    ("status", "code"), [(429, "rate_limit_exceeded"), (503, "engine_overloaded")]
)
async def test_a_full_queue_refuses_with_the_configured_status(status: int, code: str) -> None:
    sim = engine(sim_max_running=1, sim_max_waiting=1, sim_queue_full_status=status)
    running_one, queued = sim.generate(request()), sim.generate(request())
    await anext(running_one)
    task = asyncio.create_task(anext(queued))
    await wait_all_tasks_blocked()
    with pytest.raises(EngineError) as caught:
        await anext(sim.generate(request()))
    assert (caught.value.status, caught.value.code, caught.value.retry_after) == (status, code, 1.0)
    task.cancel()
    await running_one.aclose()


async def test_queueing_shows_in_the_metrics_and_the_sdk_sees_a_full_queue() -> None:
    async with (
        running(
            sim_max_running=2, sim_max_waiting=4, sim_itl_ms=20, sim_default_max_tokens=50
        ) as server,
        httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT) as http,
        openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0) as sdk,
    ):
        await sdk.models.list()  # the SDK's first call sets it up (it blocks the loop a while)
        body = {"model": "oxiserve-sim", "messages": CHAT}
        calls = [asyncio.create_task(http.post("/v1/chat/completions", json=body))
                 for _ in range(6)]  # fmt: skip
        engine_ = server.state.engine  # type: ignore[union-attr]
        await wait_until(lambda: engine_.waiting == 4)  # type: ignore[attr-defined]
        during = await scrape(http)
        assert sample(during, "vllm:num_requests_running") == 2
        assert sample(during, "vllm:num_requests_waiting") == 4
        with pytest.raises(openai.RateLimitError) as caught:
            await sdk.chat.completions.create(model="oxiserve-sim", messages=CHAT)
        assert caught.value.response.headers["retry-after"] == "1"
        assert [r.status_code for r in await asyncio.gather(*calls)] == [200] * 6
        after = await scrape(http)
    assert sample(after, "vllm:request_queue_time_seconds", "_count") == 6
    # four of them waited for one 50-token answer (1 s) or two; the queue stays full for a
    # second, so a slow machine still sends the SDK's request while it is
    assert sample(after, "vllm:request_queue_time_seconds", "_sum") > 4 * 0.5


def test_the_first_token_waits_for_the_prefill_of_the_prompt() -> None:
    config = Config(sim_ttft_ms=5, sim_prefill_overhead_ms=20, sim_prefill_ms_per_token=0.5)
    for prompt in ("Hi", "word " * 400):
        n = count_tokens(prompt)
        plan = make_plan(config, request(prompt=prompt, prompt_tokens=n))
        assert plan.ttft == pytest.approx((5 + 20 + 0.5 * n) / 1000)


async def test_a_long_prompts_first_token_comes_after_its_prefill() -> None:
    async with (
        running(sim_prefill_ms_per_token=1.0) as server,
        openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0) as sdk,
    ):
        loop = asyncio.get_running_loop()
        for words in (1, 150):
            prompt: Any = [{"role": "user", "content": "word " * words}]
            started = loop.time()
            stream = await sdk.chat.completions.create(
                model="oxiserve-sim", messages=prompt, stream=True,
                stream_options={"include_usage": True},
            )  # fmt: skip
            first, usage = None, None
            async for chunk in stream:
                if first is None and chunk.choices and chunk.choices[0].delta.content:
                    first = loop.time() - started
                usage = chunk.usage or usage
            assert first is not None
            assert usage is not None
            assert first >= usage.prompt_tokens * 0.001  # never before the prefill is done


async def test_latencies_stretch_with_the_running_sequences() -> None:
    sim = engine(sim_max_running=5, sim_time_factor_under_load=3.0)
    assert sim.load_factor() == 1.0
    streams: list[SimStream] = []
    factors = []
    for _ in range(5):
        streams.append(sim.generate(request(max_tokens=3)))
        await anext(streams[-1])
        factors.append(sim.load_factor())
    assert factors == [1.0, 1.5, 2.0, 2.5, 3.0]  # linear, 3x at max-running
    for stream in streams:
        await stream.aclose()
    assert engine(sim_max_running=1, sim_time_factor_under_load=3.0).load_factor() == 1.0


async def test_the_context_window_refuses_what_does_not_fit() -> None:
    async with (
        running(sim_max_model_len=100) as server,
        openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0) as sdk,
    ):
        ok = await sdk.chat.completions.create(model="oxiserve-sim", messages=CHAT, max_tokens=50)
        assert ok.choices[0].finish_reason in ("stop", "length")
        with pytest.raises(openai.BadRequestError) as caught:
            await sdk.chat.completions.create(model="oxiserve-sim", messages=CHAT, max_tokens=99)
        error = caught.value.body
        assert isinstance(error, dict)
        assert error["code"] == "context_length_exceeded"
        assert error["message"].startswith("This model's maximum context length is 100 tokens.")
        with pytest.raises(openai.BadRequestError):
            await sdk.responses.create(model="oxiserve-sim", input="word " * 200)


@pytest.mark.parametrize("dist", ["uniform", "normal", "lognormal"])
def test_latency_distributions_are_seeded_and_never_negative(dist: str) -> None:
    draws = [spread(10.0, 30.0, dist, Random(seed)) for seed in range(2000)]
    assert draws == [spread(10.0, 30.0, dist, Random(seed)) for seed in range(2000)]
    assert min(draws) >= 0.0
    if dist == "lognormal":  # its mean is the mean asked for
        assert statistics.fmean(draws) == pytest.approx(10.0, rel=0.35)
    config = Config(sim_ttft_ms=50, sim_ttft_jitter_ms=20, sim_latency_dist=dist)  # type: ignore[arg-type]
    plans = [make_plan(config, request(prompt=f"p{i}")).ttft for i in range(50)]
    assert plans == [make_plan(config, request(prompt=f"p{i}")).ttft for i in range(50)]
    assert len(set(plans)) > 40  # spread, and the same again for the same seed


async def test_paced_streams_share_one_pacer_and_keep_their_schedule() -> None:
    sim = engine(sim_itl_ms=5, sim_itl_jitter_ms=2)
    loop = asyncio.get_running_loop()

    async def piped(i: int) -> tuple[str, float]:
        stream = sim.generate(request(prompt=f"stream {i}", max_tokens=10))
        pieces: list[str] = []
        started = loop.time()
        await stream.pipe(pieces.append)
        return "".join(pieces), loop.time() - started

    async def iterated(i: int) -> str:
        return "".join(
            [t async for t in sim.generate(request(prompt=f"stream {i}", max_tokens=10))]
        )

    results = await asyncio.wait_for(asyncio.gather(*(piped(i) for i in range(100))), TIMEOUT)
    assert sim._pacer is not None  # the piped ones went through the pacer
    for i, (text, took) in enumerate(results):
        assert text == await iterated(i)  # the same tokens as one at a time
        assert took >= 9 * 0.005 - 0.001  # nine gaps of at least 5 ms (jitter only adds)
    assert sim.active_generations == 0


async def test_the_same_seed_gives_the_same_stream_in_another_server() -> None:
    """Two server processes' worth of runs (two servers, one after the other): with the same
    --sim-seed every chunk is the same but for the response's id and time; another seed is
    another answer."""

    async def stream(seed: int) -> list[Any]:
        config = {"sim_seed": seed, "sim_itl_ms": 1, "sim_itl_jitter_ms": 2,
                  "sim_latency_dist": "lognormal"}  # fmt: skip
        async with (
            running(**config) as server,
            httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT) as http,
        ):
            body = {"model": "oxiserve-sim", "messages": CHAT, "max_tokens": 40, "stream": True,
                    "logprobs": True, "top_logprobs": 2,
                    "stream_options": {"include_usage": True}}  # fmt: skip
            text = (await http.post("/v1/chat/completions", json=body)).text
        chunks = [json.loads(line[6:]) for line in text.splitlines()
                  if line.startswith("data: {")]  # fmt: skip
        for chunk in chunks:
            del chunk["id"], chunk["created"]
        return chunks

    first = await stream(7)
    assert len(first) > 40
    assert await stream(7) == first
    assert await stream(8) != first


async def test_requests_that_give_up_while_queued_leave_no_trace() -> None:
    sim = engine(sim_max_running=1, sim_max_waiting=5)
    holder = sim.generate(request(max_tokens=3))
    await anext(holder)
    for _ in range(50):  # connect-and-drop, again and again: far more than the queue holds
        stream = sim.generate(request())
        task = asyncio.create_task(anext(stream))
        await wait_all_tasks_blocked()
        assert sim.waiting == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert sim.waiting == 0
    closed = sim.generate(request())
    task = asyncio.create_task(anext(closed))
    await wait_all_tasks_blocked()
    await closed.aclose()  # closed (not cancelled) while waiting
    with pytest.raises(StopAsyncIteration):
        await task
    assert sim.waiting == 0
    await holder.aclose()
    assert sim.active_generations == 0
