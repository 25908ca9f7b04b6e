"""GET /metrics: vLLM's names and types, counts that move, one registry per server."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from oxiserve.metrics import Histogram
from tests.conftest import TIMEOUT, running

VLLM = {
    "vllm:num_requests_running": "gauge",
    "vllm:num_requests_waiting": "gauge",
    "vllm:kv_cache_usage_perc": "gauge",
    "vllm:time_to_first_token_seconds": "histogram",
    "vllm:inter_token_latency_seconds": "histogram",
    "vllm:time_per_output_token_seconds": "histogram",
    "vllm:e2e_request_latency_seconds": "histogram",
    "vllm:request_queue_time_seconds": "histogram",
    "vllm:request_prompt_tokens": "histogram",
    "vllm:request_generation_tokens": "histogram",
    "vllm:prompt_tokens": "counter",
    "vllm:generation_tokens": "counter",
    "vllm:request_success": "counter",
}
OURS = {
    "oxiserve_requests": "counter",
    "oxiserve_request_duration_seconds": "histogram",
    "oxiserve_active_streams": "gauge",
    "oxiserve_open_connections": "gauge",
    "oxiserve_rate_limited": "counter",
    "oxiserve_runs": "gauge",
    "oxiserve_broadcast_lagged": "counter",
}
CHAT = {"model": "oxiserve-sim", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8}


async def scrape(http: httpx.AsyncClient, **headers: str) -> dict[str, Any]:
    response = await http.get("/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {f.name: f for f in text_string_to_metric_families(response.text)}


def sample(families: dict[str, Any], name: str, suffix: str = "", **labels: str) -> float:
    family = families[name]
    return sum(
        s.value for s in family.samples
        if s.name == name + suffix and all(s.labels.get(k) == v for k, v in labels.items())
    )  # fmt: skip


async def test_every_vllm_metric_is_there_with_its_type() -> None:
    async with running() as server, httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT) as http:
        families = await scrape(http)
    for name, kind in {**VLLM, **OURS}.items():
        assert name in families, name
        assert families[name].type == kind, name


async def test_counts_move_with_requests_streamed_and_not() -> None:
    async with running() as server, httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT) as http:
        before = await scrape(http)
        assert (await http.post("/v1/chat/completions", json=CHAT)).status_code == 200
        streamed = await http.post("/v1/chat/completions", json={**CHAT, "stream": True})
        assert streamed.status_code == 200
        assert (await http.get("/v1/models/nope")).status_code == 404
        after = await scrape(http)
    model = {"model_name": "oxiserve-sim"}
    assert sample(after, "vllm:generation_tokens", "_total", **model) == 16  # 8 + 8
    assert sample(before, "vllm:generation_tokens", "_total", **model) == 0
    assert sample(after, "vllm:prompt_tokens", "_total", **model) > 0
    assert sample(after, "vllm:request_success", "_total", finished_reason="length", **model) == 2
    assert sample(after, "vllm:time_to_first_token_seconds", "_count", **model) == 2
    assert sample(after, "vllm:inter_token_latency_seconds", "_count", **model) == 14  # 7 + 7
    assert sample(after, "vllm:e2e_request_latency_seconds", "_count", **model) == 2
    assert sample(after, "vllm:request_generation_tokens", "_sum", **model) == 16
    routes = {"route": "/v1/chat/completions", "method": "POST", "status": "200"}
    assert sample(after, "oxiserve_requests", "_total", **routes) == 2
    unknown = {"route": "/v1/models/{model}", "method": "GET", "status": "404"}
    assert sample(after, "oxiserve_requests", "_total", **unknown) == 1  # the pattern, not the path
    assert sample(after, "oxiserve_request_duration_seconds", "_count",
                  route="/v1/chat/completions") == 2  # fmt: skip


async def test_two_servers_keep_their_own_counts() -> None:
    async with running() as one, running() as two:
        async with httpx.AsyncClient(base_url=one.url, timeout=TIMEOUT) as http:
            await http.post("/v1/chat/completions", json=CHAT)
            first = await scrape(http)
        async with httpx.AsyncClient(base_url=two.url, timeout=TIMEOUT) as http:
            second = await scrape(http)
    assert sample(first, "vllm:generation_tokens", "_total", model_name="oxiserve-sim") == 8
    assert sample(second, "vllm:generation_tokens", "_total", model_name="oxiserve-sim") == 0


async def test_metrics_need_a_key_unless_public() -> None:
    async with (
        running(api_key=("sk-m",)) as server,
        httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT) as http,
    ):
        assert (await http.get("/metrics")).status_code == 401
        await scrape(http, authorization="Bearer sk-m")
    async with (
        running(api_key=("sk-m",), metrics_public=True) as server,
        httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT) as http,
    ):
        await scrape(http)


async def test_429s_are_counted() -> None:
    async with (
        running(rate_limit_rps=0.5, rate_limit_burst=1) as server,
        httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT) as http,
    ):
        await http.post("/v1/chat/completions", json=CHAT)
        assert (await http.post("/v1/chat/completions", json=CHAT)).status_code == 429
        families = await scrape(http)
    assert sample(families, "oxiserve_rate_limited", "_total") == 1


def test_a_histogram_counts_a_value_many_times_at_once() -> None:
    hist = Histogram((0.1, 1.0))
    hist.observe(0.05)
    hist.observe(0.5, 3)
    hist.observe(5.0)
    assert hist.buckets() == [("0.1", 1), ("1.0", 4), ("+Inf", 5)]
    assert hist.total == 0.05 + 1.5 + 5.0


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the SDK marks Assistants deprecated
async def test_active_runs_are_counted_by_status() -> None:
    async with (
        running(sim_itl_ms=5) as server,
        openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0) as sdk,
        httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT) as http,
    ):
        assistant = await sdk.beta.assistants.create(model="oxiserve-sim")
        thread = await sdk.beta.threads.create(messages=[{"role": "user", "content": "Hi"}])
        run = await sdk.beta.threads.runs.create(
            thread_id=thread.id, assistant_id=assistant.id, max_completion_tokens=5000
        )
        busy = await scrape(http)
        await sdk.beta.threads.runs.cancel(run_id=run.id, thread_id=thread.id)
        for _ in range(500):  # bounded: the cancelled run leaves memory within a few polls
            done = await scrape(http)
            if sum(s.value for s in done["oxiserve_runs"].samples) == 0:
                break
    statuses = {s.labels["status"]: s.value for s in busy["oxiserve_runs"].samples}
    assert statuses["queued"] + statuses["in_progress"] == 1
    assert sum(s.value for s in done["oxiserve_runs"].samples) == 0


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the SDK marks Assistants deprecated
async def test_runs_and_responses_are_recorded_too() -> None:
    async with (
        running() as server,
        openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0) as sdk,
        httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT) as http,
    ):
        response = await sdk.responses.create(model="oxiserve-sim", input="Hi")
        assistant = await sdk.beta.assistants.create(model="oxiserve-sim")
        thread = await sdk.beta.threads.create(messages=[{"role": "user", "content": "Hi"}])
        run = await sdk.beta.threads.runs.create_and_poll(
            thread_id=thread.id, assistant_id=assistant.id, poll_interval_ms=5
        )
        families = await scrape(http)
    assert response.usage is not None
    assert run.usage is not None
    generated = response.usage.output_tokens + run.usage.completion_tokens
    model = {"model_name": "oxiserve-sim"}
    assert sample(families, "vllm:generation_tokens", "_total", **model) == generated
    assert sample(families, "vllm:request_success", "_total", **model) == 2


async def test_an_overrun_reader_is_counted() -> None:
    async with (
        running(stream_buffer=2) as server,
        httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT) as http,
    ):
        body = {"model": "oxiserve-sim", "input": "Hi", "background": True, "stream": True}
        first = await http.post("/v1/responses", json=body)  # read whole: never overrun
        created = json.loads(first.text.split("data: ", 2)[1].split("\n", 1)[0])
        response_id = created["response"]["id"]
        before = await scrape(http)
        resumed = await http.get(f"/v1/responses/{response_id}",
                                 params={"stream": "true", "starting_after": "0"})  # fmt: skip
        assert resumed.status_code == 200  # frame 1 on is long gone from a 2-frame ring
        after = await scrape(http)
    assert sample(before, "oxiserve_broadcast_lagged", "_total") == 0
    assert sample(after, "oxiserve_broadcast_lagged", "_total") == 1
