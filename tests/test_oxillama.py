"""The oxillama engine behind every endpoint, on tiny GGUF models built at test time."""

from __future__ import annotations

import asyncio
import math
import subprocess
import sys
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from oxiserve import Server
from oxiserve.config import Config
from oxiserve.engine.base import EngineError, GenerationRequest
from oxiserve.engine.oxillama import EngineStartError, OxillamaEngine
from oxiserve.engine.tiny_gguf import (
    PARROT_TEXT,
    build_parrot,
    build_random,
    parrot_pieces,
    read_metadata,
)
from tests.conftest import TIMEOUT, running, wait_until


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("gguf")
    parrot, rand = root / "parrot.gguf", root / "random.gguf"
    build_parrot(str(parrot), PARROT_TEXT)
    build_random(str(rand))
    return {"parrot": parrot, "random": rand}


def _config(model: Path, **overrides: Any) -> dict[str, Any]:
    return {"engine": "oxillama", "model": str(model), "threads": 1, **overrides}


def _sdk(server: Server) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)


@pytest.fixture
async def parrot(models: dict[str, Path]) -> AsyncIterator[openai.AsyncOpenAI]:
    """The official SDK on a server of the parrot model."""
    async with running(**_config(models["parrot"])) as server, _sdk(server) as sdk:
        yield sdk


CHAT = [{"role": "user", "content": "Say something."}]


async def test_the_model_is_listed_by_its_file_name(parrot: openai.AsyncOpenAI) -> None:
    models = await parrot.models.list()
    assert [m.id for m in models.data] == ["parrot"]


async def test_chat_gives_exactly_the_models_text(parrot: openai.AsyncOpenAI) -> None:
    reply = await parrot.chat.completions.create(model="parrot", messages=CHAT)  # type: ignore[arg-type]
    assert reply.choices[0].message.content == PARROT_TEXT
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage is not None
    assert reply.usage.completion_tokens == len(parrot_pieces(PARROT_TEXT))  # one token a piece
    assert reply.usage.prompt_tokens > 0
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


async def test_a_stream_joins_to_the_same_text(parrot: openai.AsyncOpenAI) -> None:
    stream = await parrot.chat.completions.create(
        model="parrot", messages=CHAT, stream=True,  # type: ignore[arg-type]
        stream_options={"include_usage": True},
    )  # fmt: skip
    text, usage, finish = "", None, None
    async for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage is not None:
            usage = chunk.usage
    assert (text, finish) == (PARROT_TEXT, "stop")
    assert usage is not None
    assert usage.completion_tokens > 0


async def test_a_stop_sequence_cuts_without_leaking(parrot: openai.AsyncOpenAI) -> None:
    stop = "parrot"
    reply = await parrot.chat.completions.create(model="parrot", messages=CHAT, stop=stop)  # type: ignore[arg-type]
    assert reply.choices[0].message.content == PARROT_TEXT[: PARROT_TEXT.index(stop)]
    assert reply.choices[0].finish_reason == "stop"


async def test_max_tokens_gives_length(parrot: openai.AsyncOpenAI) -> None:
    reply = await parrot.chat.completions.create(model="parrot", messages=CHAT, max_tokens=3)  # type: ignore[arg-type]
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage is not None
    assert reply.usage.completion_tokens == 3
    assert PARROT_TEXT.startswith(reply.choices[0].message.content or "")


async def test_a_prompt_longer_than_the_context_is_refused(parrot: openai.AsyncOpenAI) -> None:
    long = [{"role": "user", "content": "word " * 5000}]
    with pytest.raises(openai.BadRequestError) as caught:
        await parrot.chat.completions.create(model="parrot", messages=long)  # type: ignore[arg-type]
    assert caught.value.code == "context_length_exceeded"


async def test_completions_continue_the_prompt(parrot: openai.AsyncOpenAI) -> None:
    reply = await parrot.completions.create(model="parrot", prompt="Once")
    assert reply.choices[0].text == PARROT_TEXT


async def test_embeddings_have_the_hidden_size_and_unit_length(
    parrot: openai.AsyncOpenAI, models: dict[str, Path]
) -> None:
    hidden = read_metadata(str(models["parrot"])).embedding_length
    result = await parrot.embeddings.create(model="parrot", input=["a", "bb"])
    assert len(result.data) == 2
    for item in result.data:
        assert len(item.embedding) == hidden
        assert math.isclose(math.fsum(v * v for v in item.embedding), 1.0, rel_tol=1e-4)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the SDK marks Assistants deprecated
async def test_a_run_and_a_response_stream_the_same_text(parrot: openai.AsyncOpenAI) -> None:
    sdk = parrot
    assistant = await sdk.beta.assistants.create(model="parrot")
    thread = await sdk.beta.threads.create(messages=[{"role": "user", "content": "Hi"}])
    run = await sdk.beta.threads.runs.create_and_poll(
        thread_id=thread.id, assistant_id=assistant.id, poll_interval_ms=5
    )
    assert run.status == "completed"
    messages = await sdk.beta.threads.messages.list(thread_id=thread.id, run_id=run.id)
    block = messages.data[0].content[0]
    assert block.type == "text"
    assert block.text.value == PARROT_TEXT
    async with sdk.responses.stream(model="parrot", input="Hi") as stream:
        deltas = [e.delta async for e in stream if e.type == "response.output_text.delta"]
        final = await stream.get_final_response()
    assert "".join(deltas) == final.output_text == PARROT_TEXT


@pytest.mark.parametrize("workers", [1, 2])
async def test_concurrent_requests_all_complete_exactly(
    models: dict[str, Path], workers: int
) -> None:
    async with (
        running(**_config(models["parrot"], engine_workers=workers)) as server,
        _sdk(server) as sdk,
    ):
        replies = await asyncio.wait_for(asyncio.gather(*(
            sdk.chat.completions.create(model="parrot", messages=CHAT)  # type: ignore[arg-type]
            for _ in range(6)
        )), TIMEOUT)  # fmt: skip
    assert [r.choices[0].message.content for r in replies] == [PARROT_TEXT] * 6


def _engine(model: Path, **overrides: Any) -> OxillamaEngine:
    from oxiserve.config import Config

    return OxillamaEngine(Config(**_config(model, **overrides)))


def _request(**fields: Any) -> GenerationRequest:
    fields.setdefault("model", "random")
    fields.setdefault("prompt", "Hello")
    return GenerationRequest(**fields)


async def test_closing_a_stream_cancels_the_generation_at_once(models: dict[str, Path]) -> None:
    engine = _engine(models["random"])
    try:
        stream = engine.generate(_request(max_tokens=1500, temperature=0.7, seed=1))
        first = await asyncio.wait_for(anext(stream), TIMEOUT)
        assert first
        await asyncio.wait_for(stream.aclose(), TIMEOUT)
        assert stream.finish_reason == "cancelled"
        assert (engine.running, engine.waiting) == (0, 0)  # the engine is free again
        again = engine.generate(_request(max_tokens=5, temperature=0.7, seed=1))
        text = await asyncio.wait_for(again.text(), TIMEOUT)
        assert again.usage.completion_tokens == 5
        assert text
    finally:
        await engine.close()


async def test_a_full_queue_is_503_with_retry_after(models: dict[str, Path]) -> None:
    engine = _engine(models["random"], max_queue=0)
    try:
        busy = engine.generate(_request(max_tokens=1500))
        await asyncio.wait_for(anext(busy), TIMEOUT)
        second = engine.generate(_request(max_tokens=5))
        with pytest.raises(EngineError) as caught:
            await asyncio.wait_for(second.text(), TIMEOUT)
        assert (caught.value.status, caught.value.retry_after) == (503, 1.0)
        await busy.aclose()
    finally:
        await engine.close()


class PanicException(BaseException):
    """Stands in for pyo3's PanicException (a BaseException of that name)."""


async def test_a_panic_fails_that_request_and_the_server_serves_on(
    models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running(**_config(models["parrot"])) as server:
        assert server.state is not None
        engine = server.state.engine
        assert isinstance(engine, OxillamaEngine)
        worker = engine._workers[0]
        real = worker.engine

        class Panicking:
            def __getattr__(self, name: str) -> Any:
                return getattr(real, name)

            def generate_detailed(self, *args: Any, **kwargs: Any) -> Any:
                raise PanicException("injected")

        worker.engine = Panicking()
        async with httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT) as http:
            body = {"model": "parrot", "messages": CHAT}
            failed = await http.post("/v1/chat/completions", json=body)
            assert failed.status_code == 500
            assert failed.json()["error"]["code"] == "engine_panic"
            await wait_until(lambda: not isinstance(worker.engine, Panicking))  # reloaded
            ok = await http.post("/v1/chat/completions", json=body)
            assert ok.json()["choices"][0]["message"]["content"] == PARROT_TEXT


def test_startup_errors_are_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "nope.gguf"
    with pytest.raises(EngineStartError, match="model file not found"):
        _engine(missing)
    bogus = tmp_path / "bogus.gguf"
    bogus.write_bytes(b"not a model at all")
    with pytest.raises(EngineStartError, match="not a GGUF"):
        _engine(bogus)
    done = subprocess.run(
        [sys.executable, "-m", "oxiserve", "--engine", "oxillama", "--model", str(missing),
         "--port", "0", "--db", ":memory:"],
        capture_output=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    lines = done.stderr.decode().strip().splitlines()
    assert lines == [f"oxiserve: model file not found: {missing}"]


CALL_TEXT = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                       "required": ["city"]},
    },
}  # fmt: skip


@pytest.fixture(scope="module")
def caller(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A parrot whose one answer is a tool call in the Hermes format."""
    path = tmp_path_factory.mktemp("gguf") / "caller.gguf"
    build_parrot(str(path), CALL_TEXT)
    return path


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the SDK marks Assistants deprecated
async def test_a_models_tool_call_reaches_every_api(caller: Path) -> None:
    async with running(**_config(caller)) as server, _sdk(server) as sdk:
        chat = await sdk.chat.completions.create(
            model="caller",
            messages=CHAT,
            tools=[WEATHER],  # type: ignore[list-item, arg-type]
        )
        choice = chat.choices[0]
        assert choice.finish_reason == "tool_calls"
        assert choice.message.content is None
        (call,) = choice.message.tool_calls or []
        assert call.type == "function"
        assert (call.function.name, call.function.arguments) == ("get_weather", '{"city":"Paris"}')
        flat = {"type": "function", **WEATHER["function"]}  # type: ignore[dict-item]
        response = await sdk.responses.create(model="caller", input="Weather?", tools=[flat])  # type: ignore[list-item]
        (item,) = response.output
        assert item.type == "function_call"
        assert (item.name, item.arguments) == ("get_weather", '{"city":"Paris"}')
        assistant = await sdk.beta.assistants.create(model="caller", tools=[WEATHER])  # type: ignore[list-item]
        thread = await sdk.beta.threads.create(messages=[{"role": "user", "content": "Weather?"}])
        run = await sdk.beta.threads.runs.create_and_poll(
            thread_id=thread.id, assistant_id=assistant.id, poll_interval_ms=5
        )
        assert run.status == "requires_action"
        assert run.required_action is not None
        (pending,) = run.required_action.submit_tool_outputs.tool_calls
        assert pending.function.name == "get_weather"


async def test_without_tools_the_same_text_stays_text(caller: Path) -> None:
    async with running(**_config(caller)) as server, _sdk(server) as sdk:
        chat = await sdk.chat.completions.create(model="caller", messages=CHAT)  # type: ignore[arg-type]
    assert chat.choices[0].message.content == CALL_TEXT
    assert chat.choices[0].finish_reason == "stop"


async def test_a_large_model_gets_no_second_copy_for_counting(
    models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from oxiserve.engine import oxillama, sim_text

    small = _engine(models["random"])
    monkeypatch.setattr(oxillama, "COUNT_ENGINE_MAX_BYTES", 0)
    large = _engine(models["random"])
    try:
        assert small._count_engine is not None  # exact counts from an engine of its own
        assert small.count_tokens("Hello there") == len(
            small._count_engine.engine.tokenize("Hello there")
        )
        assert large._count_engine is None  # approximate, the model loaded once per worker
        assert large.count_tokens("Hello there") == sim_text.count_tokens("Hello there")
    finally:
        await small.close()
        await large.close()


async def test_penalties_and_seeds_reach_the_sampler(models: dict[str, Path]) -> None:
    async with running(**_config(models["random"])) as server, _sdk(server) as sdk:

        async def answer(**extra: Any) -> list[str]:
            reply = await sdk.chat.completions.create(
                model="random",
                messages=CHAT,
                max_tokens=40,
                **extra,  # type: ignore[arg-type]
            )
            return [c.message.content or "" for c in reply.choices]

        greedy = await answer(temperature=0)
        assert await answer(temperature=0) == greedy  # greedy is greedy
        # the random model repeats itself within 40 tokens: a penalty makes it say otherwise
        for penalty in ({"frequency_penalty": 2.0}, {"presence_penalty": 2.0},
                        {"extra_body": {"repetition_penalty": 1.5}}):  # fmt: skip
            assert await answer(temperature=0, **penalty) != greedy, penalty
        seeded = await answer(temperature=1.0, seed=7, n=2)
        assert seeded == await answer(temperature=1.0, seed=7, n=2)  # reproducible
        assert seeded[0] != seeded[1]  # and the n choices differ
        with pytest.raises(openai.BadRequestError):
            await answer(extra_body={"repetition_penalty": 0})


async def test_with_tools_offered_text_streams_and_a_call_never_shows_as_text(
    models: dict[str, Path], caller: Path
) -> None:
    async def stream(model: Path) -> tuple[list[str], list[Any], str | None]:
        async with running(**_config(model)) as server, _sdk(server) as sdk:
            chunks = await sdk.chat.completions.create(
                model=model.stem, messages=CHAT, tools=[WEATHER], stream=True,  # type: ignore[list-item, arg-type]
            )  # fmt: skip
            texts, calls, finish = [], [], None
            async for chunk in chunks:
                delta = chunk.choices[0].delta
                texts += [delta.content] if delta.content else []
                calls += delta.tool_calls or []
                finish = chunk.choices[0].finish_reason or finish
            return texts, calls, finish

    texts, calls, finish = await stream(models["parrot"])
    assert "".join(texts) == PARROT_TEXT
    assert len(texts) > 3  # piece by piece, not held for the end because tools were offered
    assert (calls, finish) == ([], "stop")
    texts, calls, finish = await stream(caller)
    assert texts == []  # the call's own text is not content
    assert [c.function.name for c in calls if c.function.name] == ["get_weather"]
    assert "".join(c.function.arguments or "" for c in calls) == '{"city":"Paris"}'
    assert finish == "tool_calls"


async def test_the_server_listens_while_the_model_loads_and_is_ready_after(
    models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from oxiserve.engine import oxillama

    loading, release = threading.Event(), threading.Event()
    real_load = oxillama.OxillamaEngine.load

    def slow_load(self: oxillama.OxillamaEngine) -> None:
        loading.set()
        release.wait(TIMEOUT)  # a large model takes its time
        real_load(self)

    monkeypatch.setattr(oxillama.OxillamaEngine, "load", slow_load)
    server = Server(Config(port=0, db=":memory:", access_log=False, **_config(models["parrot"])))
    starting = asyncio.create_task(server.start())
    try:
        await asyncio.wait_for(asyncio.to_thread(loading.wait, TIMEOUT), TIMEOUT)
        async with httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT) as http:
            assert (await http.get("/health")).status_code == 200  # alive while loading
            ready = await http.get("/health/ready")
            assert (ready.status_code, ready.json()) == (503, {"status": "loading"})
            chat = await http.post("/v1/chat/completions",
                                   json={"model": "parrot", "messages": CHAT})  # fmt: skip
            assert chat.status_code == 503
            assert chat.json()["error"]["code"] == "model_loading"
            assert chat.headers["retry-after"] == "1"
            release.set()
            await asyncio.wait_for(starting, TIMEOUT)
            assert (await http.get("/health/ready")).status_code == 200
            chat = await http.post("/v1/chat/completions",
                                   json={"model": "parrot", "messages": CHAT})  # fmt: skip
            assert chat.json()["choices"][0]["message"]["content"] == PARROT_TEXT
    finally:
        release.set()
        await asyncio.wait_for(starting, TIMEOUT)
        await server.stop(timeout=2)
