"""Tests of the simulator engine (oxiserve.engine.sim) and its text helpers (sim_text)."""

from __future__ import annotations

import asyncio
import gc
import itertools
import math
import re
from collections.abc import Mapping
from random import Random
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oxiserve.config import Config
from oxiserve.engine import sim_text
from oxiserve.engine.base import (
    ChatMessage,
    EngineError,
    GenerationRequest,
    ResponseFormat,
    ToolCall,
    ToolSpec,
    request_digest,
)
from oxiserve.engine.sim import MODEL_CREATED, SimEngine, SimStream
from oxiserve.engine.sim_json import sample_json
from oxiserve.engine.sim_text import count_tokens, split_pieces
from tests.conftest import (
    MockClockLoop,
    is_blocked,
    run_on_mock_clock,
    wait_all_tasks_blocked,
    wait_until,
)

TIMEOUT = 5.0
# Which of 20 requests ("prompt 0".."prompt 19", simulator seed 0) a 0.5 failure rate fails:
# computed once from the simulator, which is deterministic for a seed.
FAILED_OF_20 = [0, 1, 2, 3, 4, 5, 6, 7, 8, 12, 15, 17, 19]


def engine(**overrides: Any) -> SimEngine:
    return SimEngine(Config(**overrides))


def request(**fields: Any) -> GenerationRequest:
    fields.setdefault("model", "oxiserve-sim")
    fields.setdefault("prompt", "Tell me something")
    return GenerationRequest(**fields)


async def collect(stream: SimStream) -> list[str]:
    return [token async for token in stream]


async def text_of(sim: SimEngine, **fields: Any) -> str:
    return "".join(await collect(sim.generate(request(**fields))))


async def fails_with(stream: SimStream) -> tuple[EngineError, list[str]]:
    """The error a stream ends with and the tokens produced before it."""
    tokens: list[str] = []
    try:
        async for token in stream:
            tokens.append(token)
    except EngineError as error:
        return error, tokens
    raise AssertionError(f"the stream ended without an error after {tokens!r}")


# --- models, tokenizer ------------------------------------------------------------------------


def test_models_lists_the_configured_model() -> None:
    sim = engine(model_name="my-sim")
    assert sim.name == "sim"
    [info] = sim.models()
    assert (info.id, info.created) == ("my-sim", MODEL_CREATED)
    assert engine(model_name="my-sim").models() == sim.models()


@given(st.text())
def test_split_pieces_round_trips_and_matches_count_tokens(text: str) -> None:
    pieces = split_pieces(text)
    assert "".join(pieces) == text
    assert len(pieces) == count_tokens(text)
    assert all(pieces)


def test_count_tokens_counts_pieces() -> None:
    assert count_tokens("") == 0
    assert count_tokens("   ") == 1
    assert count_tokens("Hello, world!\n  How are you?") == 9
    assert split_pieces("Hello, world!\n  How") == ["Hello", ",", " world", "!\n", " ", " How"]


def test_the_engine_memoizes_counts_of_short_texts_only(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = sim_text.count_tokens

    def counting(text: str) -> int:
        calls.append(len(text))
        return real(text)

    monkeypatch.setattr(sim_text, "count_tokens", counting)
    sim = engine()
    short, long = "Hello, world! " * 10, "word " * 5000  # 140 and 25,000 characters
    assert [sim.count_tokens(short) for _ in range(3)] == [real(short)] * 3
    assert [sim.count_tokens(long) for _ in range(2)] == [real(long)] * 2
    assert calls == [140, 25_000, 25_000]  # the short one once, the long one every time
    for i in range(300):  # more texts than the memo keeps: the oldest go
        sim.count_tokens(f"text {i}")
    calls.clear()
    sim.count_tokens(short)
    assert calls == [140]


# --- lengths and modes ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("max_tokens", "output_len", "expected", "reason"),
    [
        (37, 0, 37, "length"),  # the client's limit cuts lorem, which has no end of its own
        (None, 0, 16, "stop"),  # sim_default_max_tokens is the simulator's choice, not a limit
        (37, 5, 5, "stop"),  # sim_output_len is the answer's own length
        (5, 5, 5, "stop"),
        (10, 50, 10, "length"),
        (None, 3, 3, "stop"),
        (0, 0, 0, "length"),
        (600, 0, 600, "length"),
    ],
)
async def test_lorem_produces_exactly_the_limit(
    max_tokens: int | None, output_len: int, expected: int, reason: str
) -> None:
    sim = engine(sim_output_len=output_len)
    stream = sim.generate(request(max_tokens=max_tokens))
    tokens = await collect(stream)
    assert len(tokens) == expected
    assert stream.finish_reason == reason
    assert stream.usage.completion_tokens == expected == sim.tokens_produced
    assert count_tokens("".join(tokens)) == expected
    assert all(t.startswith(" ") or t in (".", ",") for t in tokens[1:])
    assert not tokens or not tokens[0].startswith(" ")


async def test_usage_counts_the_prompt() -> None:
    stream = engine().generate(request(prompt="one two  three\nfour"))
    assert stream.usage.prompt_tokens == 6
    await collect(stream)
    assert stream.usage.prompt_tokens == 6


async def test_echo_repeats_the_last_user_message() -> None:
    sim = engine(sim_mode="echo")
    messages = (
        ChatMessage("user", "first question"),
        ChatMessage("assistant", "an answer"),
        ChatMessage("user", "Echo  me,\nplease!"),
        ChatMessage("system", "be brief"),
    )
    stream = sim.generate(request(messages=messages))
    assert await collect(stream) == ["Echo", " ", " me", ",\n", "please", "!"]
    assert stream.finish_reason == "stop"
    assert await text_of(sim, prompt="no messages here") == "no messages here"


@pytest.mark.parametrize(
    ("max_tokens", "output_len", "expected", "reason"),
    [(None, 0, 4, "stop"), (4, 0, 4, "stop"), (3, 0, 3, "length"), (None, 2, 2, "stop")],
)
async def test_echo_is_cut_at_the_limit(
    max_tokens: int | None, output_len: int, expected: int, reason: str
) -> None:
    sim = engine(sim_mode="echo", sim_output_len=output_len)
    stream = sim.generate(request(prompt="one two three four", max_tokens=max_tokens))
    tokens = await collect(stream)
    assert tokens == ["one", " two", " three", " four"][:expected]
    assert stream.finish_reason == reason


async def test_fixed_mode_says_the_fixed_text() -> None:
    sim = engine(sim_mode="fixed", sim_fixed_text="Always the same answer.")
    stream = sim.generate(request(prompt="anything"))
    assert "".join(await collect(stream)) == "Always the same answer."
    assert stream.finish_reason == "stop"
    cut = sim.generate(request(max_tokens=2))
    assert await collect(cut) == ["Always", " the"]
    assert cut.finish_reason == "length"


async def test_the_servers_limit_cuts_an_echo_with_length() -> None:
    sim = engine(sim_mode="echo", max_tokens_limit=3)
    stream = sim.generate(request(prompt="one two three four five"))
    assert await collect(stream) == split_pieces("one two three four five")[:3]
    assert stream.finish_reason == "length"


# --- structured output ------------------------------------------------------------------------

POINT = {
    "type": "object",
    "properties": {
        "x": {"type": "integer"},
        "label": {"anyOf": [{"type": "string"}, {"type": "null"}]},
    },
    "required": ["x", "label"],
    "additionalProperties": False,
}


@pytest.mark.parametrize("mode", ["lorem", "echo", "fixed"])
async def test_a_json_schema_answer_replaces_every_mode(mode: str) -> None:
    fmt = ResponseFormat("json_schema", POINT, "point", strict=True)
    stream = engine(sim_mode=mode).generate(request(response_format=fmt))
    tokens = await collect(stream)
    value = orjson.loads("".join(tokens))
    assert set(value) == {"x", "label"}
    assert isinstance(value["x"], int)
    assert isinstance(value["label"], str)
    assert stream.finish_reason == "stop"
    assert stream.usage.completion_tokens == len(tokens) > 1
    cut = engine(sim_mode=mode).generate(request(response_format=fmt, max_tokens=len(tokens) - 1))
    assert await collect(cut) == tokens[:-1]
    assert cut.finish_reason == "length"


async def test_sim_output_len_does_not_cut_json() -> None:
    fmt = ResponseFormat("json_schema", POINT, "point")
    text = await text_of(engine(sim_output_len=1), response_format=fmt)
    assert set(orjson.loads(text)) == {"x", "label"}


async def test_json_object_without_a_schema_is_an_object() -> None:
    stream = engine().generate(request(response_format=ResponseFormat("json_object")))
    value = orjson.loads("".join(await collect(stream)))
    assert isinstance(value, dict)
    assert value


async def test_a_schema_with_no_instance_fails_only_when_the_client_sent_it() -> None:
    impossible = {"type": "array", "minItems": 100_000}
    sent = ResponseFormat("json_schema", impossible, "lots")
    error, tokens = await fails_with(engine().generate(request(response_format=sent)))
    assert (error.status, error.code, tokens) == (400, "invalid_response_format", [])
    # From the prompt a schema is a hint: the answer is what the kind allows.
    hinted = ResponseFormat("json_object", impossible, from_prompt=True)
    assert isinstance(orjson.loads(await text_of(engine(), response_format=hinted)), dict)
    as_text = ResponseFormat("text", impossible, from_prompt=True)
    lorem = engine().generate(request(response_format=as_text))
    words = "".join(await collect(lorem))
    assert (lorem.usage.completion_tokens, lorem.finish_reason) == (16, "stop")
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(words)


async def test_json_choices_differ_and_repeat() -> None:
    fmt = ResponseFormat("json_schema", POINT, "point")
    texts = [await text_of(engine(), response_format=fmt, choice_index=i) for i in range(4)]
    assert len(set(texts)) > 1
    assert texts == [await text_of(engine(), response_format=fmt, choice_index=i) for i in range(4)]


async def test_empty_echo_finishes_without_tokens() -> None:
    stream = engine(sim_mode="echo").generate(request(prompt=""))
    assert await collect(stream) == []
    assert stream.finish_reason == "stop"


# --- determinism ------------------------------------------------------------------------------


async def test_same_seed_and_request_give_the_same_output() -> None:
    fields: dict[str, Any] = {"max_tokens": 40, "logprobs": True, "top_logprobs": 3}
    first = engine(sim_seed=7).generate(request(**fields))
    second = engine(sim_seed=7).generate(request(**fields))
    assert await collect(first) == await collect(second)
    assert first.logprobs == second.logprobs


async def test_a_precomputed_digest_answers_as_without() -> None:
    fields: dict[str, Any] = {"max_tokens": 20, "seed": 3, "choice_index": 2}
    plain = await text_of(engine(), **fields)
    made = request(**fields)
    digest = request_digest(made.seed, made.model, made.prompt, made.messages)
    assert await text_of(engine(), digest=digest, **fields) == plain
    assert await text_of(engine(), digest=b"another request", **fields) != plain


async def test_seed_request_and_choice_change_the_output() -> None:
    base = await text_of(engine(sim_seed=1), max_tokens=20)
    assert await text_of(engine(sim_seed=2), max_tokens=20) != base
    assert await text_of(engine(sim_seed=1), max_tokens=20, seed=5) != base
    assert await text_of(engine(sim_seed=1), max_tokens=20, prompt="other") != base
    assert await text_of(engine(sim_seed=1), max_tokens=20, choice_index=1) != base


async def test_failure_injection_leaves_the_text_alone() -> None:
    calm, flaky = engine(), engine(sim_failure_rate=0.5)
    succeeded, failed = [], []
    for i in range(20):
        stream = flaky.generate(request(prompt=f"prompt {i}"))
        try:
            text = "".join(await collect(stream))
        except EngineError:
            failed.append(i)
            continue
        succeeded.append(i)
        assert text == await text_of(calm, prompt=f"prompt {i}")
    # The simulator is deterministic for a seed: these are the requests the 0.5 rate fails.
    assert failed == FAILED_OF_20
    assert len(succeeded) == 20 - len(FAILED_OF_20)


# --- timing -----------------------------------------------------------------------------------


async def test_each_token_costs_one_loop_iteration() -> None:
    # The sleep(0)s here are the measure, not waits: the ticker counts loop iterations.
    count = 0
    done = False

    async def ticker() -> None:
        nonlocal count
        while not done and count < 10_000:
            count += 1
            await asyncio.sleep(0)  # one loop iteration per count

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)  # exactly one iteration, so the ticker is counting from here
    start = count
    tokens = await collect(engine().generate(request(max_tokens=300)))
    done = True
    await task
    assert len(tokens) == 300
    assert 299 <= count - start <= 301


# These run on a virtual clock (tests/conftest.py MockClockLoop): the engine reads time only
# through loop.time() and call_later, so each token arrives at exactly the loop time the
# engine scheduled it for, and a test asserts that time, not a lower bound of wall time.


async def arrival_times(stream: SimStream, busy: dict[int, float] | None = None) -> list[float]:
    """The loop time (from the first ``__anext__``) at which each token arrived; ``busy``
    maps a token's index to how long the consumer then works before asking for the next."""
    loop = asyncio.get_running_loop()
    assert isinstance(loop, MockClockLoop)
    start, times = loop.time(), []
    async for _ in stream:
        times.append(loop.time() - start)
        loop.advance((busy or {}).get(len(times) - 1, 0.0))
    return times


def times_of(busy: dict[int, float] | None = None, **fields: Any) -> list[float]:
    config = {k: fields.pop(k) for k in list(fields) if k.startswith("sim_")}
    stream = engine(**config).generate(request(**fields))
    return run_on_mock_clock(lambda: arrival_times(stream, busy))


def test_time_to_first_token_is_waited() -> None:
    times = times_of(sim_ttft_ms=20, max_tokens=3)
    assert times == pytest.approx([0.020, 0.020, 0.020])  # no inter-token latency configured


def test_inter_token_latency_is_waited() -> None:
    times = times_of(sim_ttft_ms=20, sim_itl_ms=10, max_tokens=4)
    assert times == pytest.approx([0.020, 0.030, 0.040, 0.050])


def test_inter_token_jitter_adds_to_each_gap_reproducibly() -> None:
    times = times_of(sim_ttft_ms=20, sim_itl_ms=20, sim_itl_jitter_ms=5, max_tokens=6)
    assert times[0] == pytest.approx(0.020)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(0.020 - 1e-9 <= gap <= 0.025 + 1e-9 for gap in gaps), gaps
    assert len({round(gap, 9) for gap in gaps}) > 1  # jittered, not a fixed gap
    assert times_of(sim_ttft_ms=20, sim_itl_ms=20, sim_itl_jitter_ms=5, max_tokens=6) == times


def test_jitter_adds_to_the_first_token_time() -> None:
    firsts = [
        times_of(sim_ttft_ms=10, sim_ttft_jitter_ms=10, prompt=f"p{i}", max_tokens=1)[0]
        for i in range(10)
    ]
    assert all(0.010 - 1e-9 <= t <= 0.020 + 1e-9 for t in firsts), firsts
    assert len({round(t, 9) for t in firsts}) > 1  # each request draws its own jitter


def test_a_consumer_that_fell_behind_catches_up_with_the_schedule() -> None:
    # Tokens keep to their schedule (10, 20, 30, 40, 50 ms): a consumer busy for 35 ms after
    # the first gets the overdue ones at once, then waits for the next as usual.
    times = times_of({0: 0.035}, sim_ttft_ms=10, sim_itl_ms=10, max_tokens=5)
    assert times == pytest.approx([0.010, 0.045, 0.045, 0.045, 0.050])


# --- failures ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "status", "code", "retry_after"),
    [
        ("server_error", 500, "server_error", None),
        ("rate_limit", 429, "rate_limit_exceeded", 1),
        ("overloaded", 503, "engine_overloaded", 1),
        ("invalid_api_key", 401, "invalid_api_key", None),
        ("context_length", 400, "context_length_exceeded", None),
        ("model_not_found", 404, "model_not_found", None),
    ],
)
async def test_failures_before_the_first_token(
    kind: str, status: int, code: str, retry_after: float | None
) -> None:
    sim = engine(sim_failure_rate=1.0, sim_failure_types=(kind,))
    stream = sim.generate(request())
    error, tokens = await fails_with(stream)
    assert (tokens, error.status, error.code, error.retry_after) == ([], status, code, retry_after)
    assert sim.tokens_produced == 0
    assert sim.active_generations == 0
    with pytest.raises(StopAsyncIteration):
        await anext(stream)


async def test_mid_stream_failure_after_half_the_tokens() -> None:
    sim = engine(sim_failure_rate=1.0, sim_failure_types=("mid_stream",))
    error, tokens = await fails_with(sim.generate(request(max_tokens=16)))
    assert (len(tokens), error.status, error.code) == (8, 500, "server_error")
    assert sim.active_generations == 0
    error, tokens = await fails_with(sim.generate(request(max_tokens=1)))
    assert len(tokens) == 1


async def test_failure_rate_picks_a_deterministic_subset() -> None:
    async def failures(sim: SimEngine) -> set[int]:
        failed = set()
        for i in range(200):
            try:
                await collect(sim.generate(request(prompt=f"request {i}", max_tokens=2)))
            except EngineError:
                failed.add(i)
        return failed

    first = await failures(engine(sim_failure_rate=0.5))
    assert 60 <= len(first) <= 140
    assert await failures(engine(sim_failure_rate=0.5)) == first
    assert await failures(engine(sim_failure_rate=0.0)) == set()


@pytest.mark.parametrize(
    ("status", "code", "retry_after"),
    [
        ("503", "engine_overloaded", 1),
        ("429", "rate_limit_exceeded", 1),
        ("418", "engine_error", None),
    ],
)
async def test_x_sim_error_fails_before_the_first_token(
    status: str, code: str, retry_after: float | None
) -> None:
    stream = engine().generate(request(headers={"x-sim-error": status}))
    error, tokens = await fails_with(stream)
    assert (tokens, error.status, error.code, error.retry_after) == (
        [],
        int(status),
        code,
        retry_after,
    )


@pytest.mark.parametrize(("at", "produced"), [("3", 3), ("0", 0), ("99", 10)])
async def test_x_sim_error_at_fails_after_n_tokens(at: str, produced: int) -> None:
    headers = {"x-sim-error": "502", "x-sim-error-at": at}
    error, tokens = await fails_with(engine().generate(request(max_tokens=10, headers=headers)))
    assert (len(tokens), error.status) == (produced, 502)


@pytest.mark.parametrize(
    "headers",
    [
        {"x-sim-error": "abc"},
        {"x-sim-error": "200"},
        {"x-sim-error": "600"},
        {"x-sim-error": ""},
        {"x-sim-error": "500", "x-sim-error-at": "-1"},
        {"x-sim-error": "500", "x-sim-error-at": "two"},
    ],
)
async def test_invalid_sim_headers_are_rejected(headers: dict[str, str]) -> None:
    error, tokens = await fails_with(engine().generate(request(headers=headers)))
    assert (tokens, error.status, error.code) == ([], 400, "invalid_sim_header")
    assert "x-sim-error" in error.message


# --- text(): the whole answer at once (the non-stream path) -----------------------------------

_WEATHER = ToolSpec(
    "get_weather", "", {"type": "object", "properties": {"city": {"type": "string"}}}
)
TEXT_CASES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "lorem over many chunks": ({}, {"max_tokens": 300}),
    "echo": ({"sim_mode": "echo"}, {"messages": (ChatMessage("user", "say this back"),)}),
    "fixed": ({"sim_mode": "fixed", "sim_fixed_text": "Fixed, as configured."}, {}),
    "json": ({}, {"response_format": ResponseFormat("json_object")}),
    "logprobs": ({}, {"max_tokens": 40, "logprobs": True, "top_logprobs": 2}),
    "tool call": ({}, {"tools": (_WEATHER,), "tool_choice": "required"}),
    "mid-stream failure": ({"sim_failure_rate": 1.0, "sim_failure_types": ("mid_stream",)}, {}),
    "x-sim-error-at": ({}, {"max_tokens": 90, "headers": {"x-sim-error": "502",
                                                          "x-sim-error-at": "70"}}),
    "paced": ({"sim_ttft_ms": 1, "sim_itl_ms": 0.01}, {"max_tokens": 20}),
    "nothing to say": ({"sim_mode": "echo"}, {"messages": (ChatMessage("user", ""),)}),
}  # fmt: skip


async def _outcome(sim: SimEngine, fields: dict[str, Any], how: str) -> tuple[Any, ...]:
    stream = sim.generate(request(**fields))
    error: EngineError | None = None
    try:
        if how == "text":
            text = await stream.text()
        elif how == "pipe":
            pieces: list[str] = []
            await stream.pipe(pieces.append)
            text = "".join(pieces)
        else:
            text = "".join(await collect(stream))
    except EngineError as exc:
        text, error = "", exc
    failure = error and (error.status, error.code, error.message)
    return (text, stream.usage, stream.finish_reason, stream.tool_calls, stream.logprobs,
            failure, sim.tokens_produced, sim.active_generations)  # fmt: skip


@pytest.mark.parametrize("case", list(TEXT_CASES))
@pytest.mark.parametrize("how", ["text", "pipe"])
async def test_text_and_pipe_are_what_iterating_gives(case: str, how: str) -> None:
    config, fields = TEXT_CASES[case]
    iterated = await _outcome(engine(**config), fields, "iterate")
    assert await _outcome(engine(**config), fields, how) == iterated
    assert iterated[0] or iterated[3] or iterated[5] or case == "nothing to say"


async def test_text_costs_one_loop_iteration_per_token() -> None:
    # The sleep(0)s here are the measure, not waits: the ticker counts loop iterations.
    count, done = 0, False

    async def ticker() -> None:
        nonlocal count
        while not done and count < 10_000:
            count += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    start = count
    text = await engine().generate(request(max_tokens=300)).text()
    done = True
    await task
    assert len(split_pieces(text)) == 300
    assert 299 <= count - start <= 301


async def test_cancelling_text_stops_the_generation_and_counts_what_was_made() -> None:
    sim = engine(sim_max_running=1, sim_max_waiting=0, sim_queue_full_status=503)
    stream = sim.generate(request(max_tokens=1_000_000))
    task = asyncio.create_task(stream.text())
    await wait_until(lambda: sim.tokens_produced > 0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    produced = sim.tokens_produced
    assert 0 < produced < 1_000_000
    assert produced == stream.usage.completion_tokens
    assert (stream.finish_reason, sim.active_generations) == ("cancelled", 0)
    await wait_all_tasks_blocked()
    assert sim.tokens_produced == produced


async def test_aclose_ends_text_with_what_came_before() -> None:
    sim = engine()
    stream = sim.generate(request(max_tokens=1_000_000))
    task = asyncio.create_task(stream.text())
    for _ in range(50):  # the measure, not a wait: 50 loop iterations make about 50 tokens
        await asyncio.sleep(0)
    await stream.aclose()
    text = await asyncio.wait_for(task, TIMEOUT)
    assert 45 <= len(split_pieces(text)) <= 51  # far from the end of the chunk (CHUNK = 256)
    assert len(split_pieces(text)) == sim.tokens_produced == stream.usage.completion_tokens
    assert stream.finish_reason == "cancelled"


# --- the driver: every piped stream stepped from one callback ---------------------------------


class _Ticks:
    """Counts loop iterations (the sleep(0) is the measure, not a wait) and records, per
    piped stream, the iteration each of its pieces arrived in."""

    def __init__(self) -> None:
        self.count = 0
        self.done = False
        self.seen: dict[int, list[int]] = {}

    async def run(self) -> None:
        while not self.done and self.count < 100_000:
            self.count += 1
            await asyncio.sleep(0)

    def emit(self, key: int) -> Any:
        self.seen[key] = []
        return lambda _text: self.seen[key].append(self.count)


async def test_piped_streams_share_one_step_per_loop_iteration() -> None:
    sim, ticks = engine(), _Ticks()
    ticker = asyncio.create_task(ticks.run())
    await asyncio.sleep(0)
    streams = [sim.generate(request(prompt=f"p{i}", max_tokens=300)) for i in range(8)]
    start = ticks.count
    pipes: list[asyncio.Task[None]] = []
    blocked: list[bool] = []  # at each piece of stream 0 after its first: all pipes waiting?

    record = ticks.emit(0)

    def watch(text: str) -> None:
        record(text)
        blocked.append(all(is_blocked(task) for task in pipes))

    pipes += [asyncio.create_task(s.pipe(watch if i == 0 else ticks.emit(i)))
              for i, s in enumerate(streams)]  # fmt: skip
    await asyncio.gather(*pipes)
    ticks.done = True
    await ticker
    # No piping task woke per token: from the third piece on, each waits for its stream's end.
    assert len(blocked) == 300
    assert all(blocked[2:])
    # 300 tokens each, all 8 in step: 300 iterations and a few to start and end the tasks
    # (gather's, the first token's, joining the driver, the last wake-up), not 8 x 300.
    assert 300 <= ticks.count - start <= 310
    for i, stream in enumerate(streams):
        ticked = ticks.seen[i]
        assert len(ticked) == 300 == stream.usage.completion_tokens
        assert len(set(ticked)) == 300  # never two tokens of one stream in one iteration
        assert stream.finish_reason == "length"
    assert (sim.tokens_produced, sim.active_generations) == (2400, 0)


async def test_a_stream_joining_a_running_driver_gets_one_token_per_iteration() -> None:
    sim, ticks = engine(), _Ticks()
    ticker = asyncio.create_task(ticks.run())
    first = asyncio.create_task(sim.generate(request(max_tokens=2000)).pipe(ticks.emit(0)))
    await wait_until(lambda: len(ticks.seen[0]) > 10)
    late = [sim.generate(request(prompt=f"late {i}", max_tokens=40)) for i in range(5)]
    for i, stream in enumerate(late, start=1):  # joining at different points of the loop
        await stream.pipe(ticks.emit(i))
        assert len(ticks.seen[i]) == len(set(ticks.seen[i])) == 40
    first.cancel()
    ticks.done = True
    await ticker
    with pytest.raises(asyncio.CancelledError):
        await first
    assert len(ticks.seen[0]) == len(set(ticks.seen[0]))
    assert sim.active_generations == 0


async def test_a_failing_emit_fails_only_its_own_stream() -> None:
    sim = engine()
    good, bad = sim.generate(request(max_tokens=50)), sim.generate(request(max_tokens=50))
    pieces: list[str] = []
    bad_count = 0

    def explode(_text: str) -> None:
        nonlocal bad_count
        bad_count += 1
        if bad_count == 5:
            raise ValueError("the sink broke")

    results = await asyncio.gather(good.pipe(pieces.append), bad.pipe(explode),
                                   return_exceptions=True)  # fmt: skip
    assert results[0] is None
    assert isinstance(results[1], ValueError)
    assert str(results[1]) == "the sink broke"
    assert (len(pieces), good.finish_reason) == (50, "length")
    assert (bad.usage.completion_tokens, bad.finish_reason, bad_count) == (5, None, 5)
    assert sim.active_generations == 0


async def test_an_emit_may_close_another_piped_stream() -> None:
    sim = engine()
    victim, closer = sim.generate(request(max_tokens=500)), sim.generate(request(max_tokens=20))
    kept: list[str] = []
    closed_at: list[int] = []

    def close_victim(_text: str) -> None:
        if not closed_at:
            closed_at.append(victim.usage.completion_tokens)
            asyncio.get_running_loop().create_task(victim.aclose())

    await asyncio.gather(victim.pipe(kept.append), closer.pipe(close_victim))
    assert victim.finish_reason == "cancelled"
    assert len(kept) == victim.usage.completion_tokens < 500
    assert len(kept) <= closed_at[0] + 2
    assert closer.finish_reason == "length"


async def test_a_failure_at_a_token_reaches_the_pipe_with_the_tokens_before_it() -> None:
    sim = engine()
    headers = {"x-sim-error": "502", "x-sim-error-at": "300"}  # past the first chunk
    failing = sim.generate(request(max_tokens=400, headers=headers))
    other = sim.generate(request(max_tokens=400))
    got: list[str] = []
    results = await asyncio.gather(failing.pipe(got.append), other.pipe(lambda _t: None),
                                   return_exceptions=True)  # fmt: skip
    assert isinstance(results[0], EngineError)
    assert results[0].status == 502
    assert (len(got), failing.usage.completion_tokens, failing.finish_reason) == (300, 300, None)
    assert (results[1], other.finish_reason) == (None, "length")


def test_one_engine_pipes_on_one_loop_after_another() -> None:
    sim = engine()

    async def one() -> int:
        pieces: list[str] = []
        await asyncio.wait_for(sim.generate(request(max_tokens=30)).pipe(pieces.append), TIMEOUT)
        return len(pieces)

    assert asyncio.run(one()) == 30
    assert asyncio.run(one()) == 30  # a new loop: a new driver, not the old loop's


def test_paced_text_keeps_the_schedule() -> None:
    stream = engine(sim_ttft_ms=20, sim_itl_ms=10).generate(request(max_tokens=4))

    async def timed() -> float:
        loop = asyncio.get_running_loop()
        start = loop.time()
        await stream.text()
        return loop.time() - start

    assert run_on_mock_clock(timed) == pytest.approx(0.050)


# --- concurrency and cancellation -------------------------------------------------------------


async def test_concurrency_limit_and_slot_release() -> None:
    sim = engine(sim_max_running=2, sim_max_waiting=0, sim_queue_full_status=503)
    first, second = sim.generate(request(max_tokens=3)), sim.generate(request(max_tokens=3))
    await anext(first)
    await anext(second)
    assert sim.active_generations == 2
    error, _ = await fails_with(sim.generate(request()))
    assert (error.status, error.code, error.retry_after) == (503, "engine_overloaded", 1)
    await collect(first)  # finishing frees a slot
    assert sim.active_generations == 1
    third = sim.generate(request(max_tokens=3))
    await anext(third)
    await third.aclose()  # closing frees a slot
    await second.aclose()
    assert sim.active_generations == 0
    assert third.finish_reason == "cancelled"
    assert await collect(sim.generate(request(max_tokens=2)))


@pytest.mark.parametrize("itl_ms", [0, 60_000])
async def test_cancelled_consumer_releases_its_slot(itl_ms: float) -> None:
    sim = engine(sim_max_running=1, sim_max_waiting=0, sim_queue_full_status=503, sim_itl_ms=itl_ms)
    stream = sim.generate(request(max_tokens=1_000_000))
    first = asyncio.Event()

    async def consume() -> None:
        async for _ in stream:
            first.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first.wait(), TIMEOUT)
    assert sim.active_generations == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sim.active_generations == 0
    assert stream.finish_reason == "cancelled"


async def test_abandoned_stream_releases_its_slot() -> None:
    sim = engine(sim_max_running=1, sim_max_waiting=0, sim_queue_full_status=503)
    stream = sim.generate(request(max_tokens=100))
    await anext(stream)
    assert sim.active_generations == 1
    del stream
    gc.collect()
    assert sim.active_generations == 0


async def test_no_token_after_aclose() -> None:
    sim = engine()
    stream = sim.generate(request(max_tokens=1_000_000))
    ended = asyncio.Event()

    async def consume() -> None:
        async for _ in stream:
            pass
        ended.set()

    task = asyncio.create_task(consume())
    await wait_until(lambda: sim.tokens_produced > 0)
    await stream.aclose()
    produced = sim.tokens_produced
    assert 0 < produced < 1_000_000
    await asyncio.wait_for(ended.wait(), TIMEOUT)
    await task
    assert sim.tokens_produced == produced == stream.usage.completion_tokens
    assert stream.finish_reason == "cancelled"


async def test_aclose_wakes_a_waiting_consumer() -> None:
    stream = engine(sim_itl_ms=60_000).generate(request(max_tokens=5))
    await anext(stream)
    task = asyncio.create_task(collect(stream))
    await wait_all_tasks_blocked()  # the consumer waits for a token due in a minute
    assert not task.done()
    await stream.aclose()
    assert await asyncio.wait_for(task, TIMEOUT) == []
    assert stream.usage.completion_tokens == 1


# --- tool calls -------------------------------------------------------------------------------

WEATHER = ToolSpec(
    "get_weather",
    "Current weather",
    {
        "type": "object",
        "properties": {
            "city": {"type": "string", "minLength": 2},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            "days": {"type": "integer", "minimum": 1, "maximum": 7},
        },
        "required": ["city"],
        "additionalProperties": False,
    },
)
SEARCH = ToolSpec(
    "search",
    parameters={
        "type": "object",
        "$defs": {"range": {"type": "array", "items": {"type": "number"}, "minItems": 2}},
        "properties": {
            "query": {"type": ["string", "null"], "maxLength": 12},
            "span": {"$ref": "#/$defs/range"},
            "when": {"type": "string", "format": "date-time"},
            "mode": {"oneOf": [{"type": "null"}, {"const": "fast"}]},
            "filters": {
                "type": "object",
                "properties": {"tags": {"type": "array", "items": {"type": "string"}}},
                "required": ["tags"],
            },
            "flag": {"anyOf": [{"type": "boolean"}, {"type": "string"}]},
        },
        "required": ["query", "filters"],
    },
)
NO_ARGS = ToolSpec("ping")


def test_a_tool_call_waits_the_first_token_time() -> None:
    async def main() -> tuple[float, list[ToolCall]]:
        loop = asyncio.get_running_loop()
        stream = engine(sim_ttft_ms=20).generate(request(tools=(WEATHER,), tool_choice="required"))
        start = loop.time()
        assert await collect(stream) == []
        return loop.time() - start, stream.tool_calls

    elapsed, calls = run_on_mock_clock(main)
    assert elapsed == pytest.approx(0.020)
    assert [call.name for call in calls] == ["get_weather"]


@pytest.mark.parametrize("tool", [WEATHER, SEARCH, NO_ARGS])
async def test_required_tool_call_has_valid_arguments(tool: ToolSpec) -> None:
    sim = engine()
    stream = sim.generate(request(tools=(tool,), tool_choice="required"))
    assert await collect(stream) == []
    assert stream.finish_reason == "tool_calls"
    [call] = stream.tool_calls
    assert call.name == tool.name
    assert re.fullmatch(r"call_[0-9a-f]{24}", call.id)
    arguments = orjson.loads(call.arguments)
    assert isinstance(arguments, dict)
    assert conforms(arguments, tool.parameters or {}, tool.parameters)
    assert stream.usage.completion_tokens == count_tokens(call.arguments)
    again = engine().generate(request(tools=(tool,), tool_choice="required"))
    await collect(again)
    assert again.tool_calls == stream.tool_calls


async def test_tool_choice_by_name_auto_and_none() -> None:
    sim = engine()
    tools = (WEATHER, SEARCH)
    named = sim.generate(request(tools=tools, tool_choice="required", forced_tool="search"))
    await collect(named)
    assert [c.name for c in named.tool_calls] == ["search"]
    for choice in (None, "none"):
        plain = sim.generate(request(tools=tools, tool_choice=choice))
        assert await collect(plain)
        assert (plain.tool_calls, plain.finish_reason) == ([], "stop")
    called = 0
    for i in range(100):
        auto = sim.generate(request(prompt=f"question {i}", tools=tools, tool_choice="auto"))
        tokens = await collect(auto)
        assert bool(tokens) != bool(auto.tool_calls)
        called += bool(auto.tool_calls)
    assert 25 <= called <= 75


async def test_unknown_tool_choice_is_an_error() -> None:
    stream = engine().generate(
        request(tools=(WEATHER,), tool_choice="required", forced_tool="nope")
    )
    error, _ = await fails_with(stream)
    assert (error.status, error.code) == (400, "invalid_tool_choice")


def resolve(root: Mapping[str, Any], ref: str) -> Any:
    node: Any = root
    for part in ref.lstrip("#").split("/")[1:]:
        node = node[part]
    return node


def has_type(value: Any, kind: str) -> bool:
    number = isinstance(value, int | float) and not isinstance(value, bool)
    return {
        "object": isinstance(value, dict),
        "array": isinstance(value, list),
        "string": isinstance(value, str),
        "integer": number and float(value).is_integer(),
        "number": number,
        "boolean": isinstance(value, bool),
        "null": value is None,
    }[kind]


FORMATS = {
    "date-time": r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ",
    "date": r"\d{4}-\d\d-\d\d",
    "email": r"[^@\s]+@[^@\s]+\.[a-z]+",
    "uri": r"https?://\S+",
    "uuid": r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}",
}


def conforms(value: Any, schema: Any, root: Mapping[str, Any]) -> bool:
    """A small JSON-schema validator for the subset tool definitions use."""
    if not isinstance(schema, Mapping):
        return True
    checks = [
        "$ref" not in schema or conforms(value, resolve(root, schema["$ref"]), root),
        "const" not in schema or value == schema["const"],
        "enum" not in schema or value in schema["enum"],
        all(conforms(value, s, root) for s in schema.get("allOf", ())),
        "anyOf" not in schema or any(conforms(value, s, root) for s in schema["anyOf"]),
        "oneOf" not in schema or sum(conforms(value, s, root) for s in schema["oneOf"]) == 1,
    ]
    kinds = schema.get("type")
    if kinds is not None:
        checks.append(
            any(has_type(value, k) for k in ([kinds] if isinstance(kinds, str) else kinds))
        )
    if isinstance(value, dict):
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties", True)
        checks += [all(r in value for r in schema.get("required", ()))]
        checks += [len(value) >= schema.get("minProperties", 0)]
        for key, item in value.items():
            sub = props.get(key, extra)
            checks.append(sub is not False and conforms(item, sub, root))
    if isinstance(value, list):
        prefix = schema.get("prefixItems", [])
        checks += [len(value) >= schema.get("minItems", 0)]
        checks += [len(value) <= schema.get("maxItems", math.inf)]
        checks += [
            not schema.get("uniqueItems") or len(set(map(orjson.dumps, value))) == len(value)
        ]
        for i, item in enumerate(value):
            sub = prefix[i] if i < len(prefix) else schema.get("items", True)
            checks.append(sub is not False and conforms(item, sub, root))
    if has_type(value, "number"):
        checks += [
            value >= schema.get("minimum", -math.inf),
            value <= schema.get("maximum", math.inf),
        ]
        checks += [value > schema.get("exclusiveMinimum", -math.inf)]
        checks += [value < schema.get("exclusiveMaximum", math.inf)]
        step = schema.get("multipleOf")
        checks += [step is None or abs(value / step - round(value / step)) < 1e-9]
    if isinstance(value, str):
        checks += [schema.get("minLength", 0) <= len(value) <= schema.get("maxLength", math.inf)]
        fmt = schema.get("format")
        checks += [fmt not in FORMATS or re.fullmatch(FORMATS[fmt], value) is not None]
    return all(checks)


def _numeric(kind: str) -> st.SearchStrategy[dict[str, Any]]:
    @st.composite
    def build(draw: st.DrawFn) -> dict[str, Any]:
        schema: dict[str, Any] = {"type": kind}
        low = draw(st.none() | st.integers(-1000, 1000))
        if low is not None:
            schema["exclusiveMinimum" if draw(st.booleans()) else "minimum"] = low
        if draw(st.booleans()):
            schema["maximum"] = (low or 0) + draw(st.integers(10, 1000))
        if draw(st.booleans()):
            schema["multipleOf"] = draw(
                st.sampled_from([2, 3, 5] if kind == "integer" else [0.5, 0.25, 2])
            )
        return schema

    return build()


@st.composite
def _string(draw: st.DrawFn) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    choice = draw(st.sampled_from(["plain", "enum", "format", "length"]))
    if choice == "enum":
        schema["enum"] = draw(st.lists(st.text(max_size=5), min_size=1, max_size=4))
    elif choice == "format":
        schema["format"] = draw(st.sampled_from(sorted(FORMATS)))
    elif choice == "length":
        low = draw(st.integers(0, 30))
        schema["minLength"] = low
        schema["maxLength"] = low + draw(st.integers(0, 30))
    return schema


json_scalars = st.none() | st.booleans() | st.integers(-100, 100) | st.text(max_size=5)
leaf_schemas = st.one_of(
    _string(),
    _numeric("integer"),
    _numeric("number"),
    st.just({"type": "boolean"}),
    st.just({"type": "null"}),
    st.just({}),
    st.builds(lambda v: {"const": v}, json_scalars),
    st.builds(lambda v: {"type": ["null", v]}, st.sampled_from(["string", "integer", "boolean"])),
)


def _containers(children: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[dict[str, Any]]:
    @st.composite
    def build_object(draw: st.DrawFn) -> dict[str, Any]:
        props = draw(st.dictionaries(st.text(min_size=1, max_size=6), children, max_size=4))
        required = draw(st.lists(st.sampled_from(sorted(props)), unique=True)) if props else []
        schema: dict[str, Any] = {"type": "object", "properties": props, "required": required}
        if draw(st.booleans()):
            schema["additionalProperties"] = False
        return schema

    @st.composite
    def build_array(draw: st.DrawFn) -> dict[str, Any]:
        low = draw(st.integers(0, 3))
        schema = {"type": "array", "items": draw(children), "minItems": low}
        if draw(st.booleans()):
            schema["maxItems"] = low + draw(st.integers(0, 3))
        return schema

    any_of = st.lists(children, min_size=1, max_size=3).map(lambda b: {"anyOf": b})
    return st.one_of(build_object(), build_array(), any_of)


schemas = st.recursive(leaf_schemas, _containers, max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(schemas, st.integers(0, 2**32))
def test_sampled_arguments_conform_to_their_schema(schema: dict[str, Any], seed: int) -> None:
    value = sample_json(schema, Random(seed))
    assert conforms(value, schema, schema), value
    orjson.dumps(value)  # serializable as the arguments string


def test_sample_json_edge_cases() -> None:
    rng = Random(1)
    assert sample_json({}, rng) == {}
    assert sample_json(None, rng) == {}
    deep = {"type": "object", "properties": {"next": {"$ref": "#"}}, "required": []}
    assert conforms(sample_json(deep, rng), deep, deep)
    unique = {"type": "array", "items": {"enum": [1, 2, 3]}, "minItems": 3, "uniqueItems": True}
    assert sorted(sample_json(unique, rng)) == [1, 2, 3]
    draft4 = {"type": "integer", "minimum": 1, "maximum": 2, "exclusiveMaximum": True}
    assert sample_json(draft4, rng) == 1
    typed = {
        "allOf": [{"type": "object", "properties": {"a": {"type": "integer"}}}, {"required": ["b"]}]
    }
    value = sample_json(typed, rng)
    assert set(value) == {"a", "b"}
    assert conforms(value, typed, typed)


def test_refs_keep_the_keywords_beside_them() -> None:
    import jsonschema

    defs = {
        "A": {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]},
    }
    composed = {
        "$defs": defs,
        "allOf": [
            {"$ref": "#/$defs/A"},
            {"properties": {"y": {"type": "string"}}, "required": ["y"]},
        ],
    }
    beside = {
        "$defs": defs,
        "$ref": "#/$defs/A",
        "properties": {"z": {"type": "boolean"}},
        "required": ["z"],
    }
    for schema, keys in ((composed, {"x", "y"}), (beside, {"x", "z"})):
        for seed in range(5):
            value = sample_json(schema, Random(seed))
            assert keys <= set(value)
            jsonschema.validate(value, schema)


def test_an_allof_of_many_branches_is_merged_in_one_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    from oxiserve.engine import sim_json

    calls = 0
    real = sim_json.merge_schemas

    def counting(*parts: Mapping[str, Any]) -> dict[str, Any]:
        nonlocal calls
        calls += 1
        return real(*parts)

    monkeypatch.setattr(sim_json, "merge_schemas", counting)
    branches = [
        {"properties": {f"p{i}": {"type": "integer"}}, "required": [f"p{i}"]} for i in range(2000)
    ]
    schema = {"type": "object", "allOf": branches}
    value = sample_json(schema, Random(0))
    assert set(value) == {f"p{i}" for i in range(2000)}
    assert calls == 1  # not once per branch, each copying all before it (quadratic)
    with pytest.raises(sim_json.SchemaTooLarge):  # more branches than work allowed: refused
        sample_json({"type": "object", "allOf": branches * 10}, Random(0))


def test_a_huge_const_is_refused_before_it_is_encoded() -> None:
    from oxiserve.engine import sim_json

    with pytest.raises(sim_json.SchemaTooLarge, match="characters"):
        sample_json({"const": "x " * 200_000}, Random(0))
    assert sample_json({"const": "small"}, Random(0)) == "small"


# --- logprobs ---------------------------------------------------------------------------------


@pytest.mark.parametrize("top", [0, 1, 5, 20])
async def test_logprobs_have_one_plausible_entry_per_token(top: int) -> None:
    stream = engine().generate(request(max_tokens=50, logprobs=True, top_logprobs=top))
    tokens = await collect(stream)
    assert [entry.token for entry in stream.logprobs] == tokens
    for entry in stream.logprobs:
        assert -3.0 <= entry.logprob < 0.0
        assert len(entry.top) == top
        if top:
            assert (entry.top[0].token, entry.top[0].logprob) == (entry.token, entry.logprob)
            values = [alt.logprob for alt in entry.top]
            assert values == sorted(values, reverse=True)
            assert len({alt.token for alt in entry.top}) == top
            assert sum(math.exp(v) for v in values) <= 1.0


async def test_logprobs_off_leaves_the_list_empty() -> None:
    stream = engine().generate(request(max_tokens=5))
    await collect(stream)
    assert stream.logprobs == []


async def test_logprobs_are_appended_before_the_token_is_yielded() -> None:
    stream = engine().generate(request(max_tokens=3, logprobs=True))
    token = await anext(stream)
    assert [e.token for e in stream.logprobs] == [token]


# --- embeddings -------------------------------------------------------------------------------


async def test_embeddings_are_deterministic_unit_vectors() -> None:
    sim = engine()
    vectors = await sim.embed("oxiserve-sim", ["hello", "world", "hello"])
    assert [len(v) for v in vectors] == [384] * 3
    assert all(math.isclose(math.hypot(*v), 1.0, rel_tol=1e-12) for v in vectors)
    assert vectors[0] == vectors[2] != vectors[1]
    assert await engine().embed("oxiserve-sim", ["hello"]) == vectors[:1]
    assert await engine(sim_seed=3).embed("oxiserve-sim", ["hello"]) != vectors[:1]


async def test_embedding_dimensions() -> None:
    sim = engine(sim_embedding_dim=16)
    [default] = await sim.embed("m", ["text"])
    [short] = await sim.embed("m", ["text"], dimensions=4)
    assert (len(default), len(short)) == (16, 4)
    assert math.isclose(math.hypot(*short), 1.0, rel_tol=1e-12)
    scale = math.hypot(*default[:4])
    assert all(math.isclose(a, b / scale) for a, b in zip(short, default[:4], strict=True))
    with pytest.raises(EngineError) as info:
        await sim.embed("m", ["text"], dimensions=0)
    assert info.value.status == 400
    assert await sim.embed("m", []) == []


async def test_auto_answers_a_tool_result_in_words() -> None:
    sim = engine()

    async def calls(messages: tuple[ChatMessage, ...]) -> list[bool]:
        made = []
        for i in range(20):
            stream = sim.generate(request(prompt=f"prompt {i}", messages=messages,
                                          tools=(_WEATHER,), tool_choice="auto"))  # fmt: skip
            text = await stream.text()
            made.append(bool(stream.tool_calls))
            assert bool(text) != bool(stream.tool_calls)
        return made

    asked = (ChatMessage("user", "weather in Paris?"),)
    answered = (*asked, ChatMessage("assistant", ""), ChatMessage("tool", '{"temp": 21}'))
    assert 0 < sum(await calls(asked)) < 20  # auto: sometimes a call
    assert sum(await calls(answered)) == 0  # after a tool's result: words, every time
