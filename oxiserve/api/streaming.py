"""Engine token streams -> chunk frames in a broadcast topic (streaming) or results (non-stream).

Shared by chat completions and completions; each supplies a ChunkEncoder for
its wire shape.  The per-token hot path (no stop sequences, no logprobs) is a
template concatenation and one ``Topic.publish_text``.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import orjson

from oxiserve.api.sampling import SamplingParams
from oxiserve.api.shapes import api_error
from oxiserve.api.state import AppState
from oxiserve.api.stops import StopMatcher
from oxiserve.broadcast import Topic
from oxiserve.engine.base import (
    Engine,
    EngineAbort,
    EngineError,
    GenerationRequest,
    TokenLogprob,
    TokenStream,
    ToolCall,
    Usage,
)
from oxiserve.errors import APIError, ServerError, error_for_status
from oxiserve.http import sse
from oxiserve.http.messages import BodyWriter, ResetConnection, StreamResponse
from oxiserve.jobs import Job
from oxiserve.metrics import Metrics

log = logging.getLogger("oxiserve.api")


class ChunkEncoder(Protocol):
    """Encodes one stream's frames (already SSE-framed) for a given wire shape."""

    def text_template(self, index: int) -> tuple[bytes, bytes]:
        """(prefix, suffix) such that prefix + orjson.dumps(text) + suffix is a text frame."""
        ...

    def text(self, index: int, text: str) -> bytes: ...

    def open(self, index: int) -> bytes | None: ...

    def text_logprobs(self, index: int, text: str, logprobs: Sequence[TokenLogprob]) -> bytes: ...

    def tool_calls(self, index: int, calls: Sequence[ToolCall]) -> list[bytes]: ...

    def finish(self, index: int, reason: str) -> bytes: ...

    def usage(self, usage: Usage) -> bytes: ...

    def error(self, error: APIError) -> bytes: ...


@dataclass(slots=True)
class ChoiceResult:
    """What one choice produced (text is collected only when not streaming)."""

    index: int
    finish_reason: str = "stop"
    text: str = ""
    logprobs: list[TokenLogprob] = field(default_factory=list)
    tool_calls: list[ToolCall] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    queue_time: float = 0.0  # seconds it waited for the engine (an engine may tell)

    def take_outcome(self, stream: TokenStream) -> None:
        """Usage, tool calls and finish reason of a stream that has ended."""
        self.usage = stream.usage
        self.queue_time = float(getattr(stream, "queue_time", 0.0))
        self.tool_calls = list(stream.tool_calls)
        self.finish_reason = stream.finish_reason or "stop"


def total_usage(results: Sequence[ChoiceResult], per_prompt: int = 1) -> Usage:
    """The request's usage: each prompt counted once (``per_prompt`` choices share one, in
    order), every choice's completion."""
    prompt = sum(r.usage.prompt_tokens for r in results[::per_prompt])
    return Usage(prompt, sum(r.usage.completion_tokens for r in results))


async def run_choice(
    stream: TokenStream,
    result: ChoiceResult,
    stops: tuple[str, ...],
    emit: Callable[[str, list[TokenLogprob]], None],
    on_first: Callable[[], None] | None = None,
) -> None:
    """Drive one engine stream through stop handling; ``emit`` gets safe text (+ its logprobs)."""
    matcher = StopMatcher(stops) if stops else None
    pending: list[TokenLogprob] = []
    logprobs = stream.logprobs
    started = False
    try:
        async for text in stream:
            if not started:
                started = True
                if on_first is not None:
                    on_first()
            if logprobs:
                pending.extend(logprobs)
                logprobs.clear()
            safe = matcher.feed(text) if matcher is not None else text
            if safe:
                emit(safe, pending)
                pending = []
            if matcher is not None and matcher.stopped:
                break
        if not started and on_first is not None:
            on_first()
        if matcher is not None:
            tail = matcher.flush()
            if tail:
                emit(tail, pending)
    finally:
        await stream.aclose()
    result.take_outcome(stream)
    if matcher is not None and matcher.stopped:
        result.finish_reason = "stop"  # we closed the stream: its own reason is "cancelled"


async def collect(
    engine: Engine, requests: Sequence[GenerationRequest], stops: tuple[str, ...]
) -> list[ChoiceResult]:
    """Non-streaming: run every choice to the end and return the results."""

    try:
        if len(requests) == 1:
            return [await collect_choice(engine, requests[0], stops)]
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(collect_choice(engine, r, stops)) for r in requests]
        return [t.result() for t in tasks]
    except EngineAbort:
        raise ResetConnection from None
    except EngineError as exc:
        raise api_error(exc) from None
    except ExceptionGroup as group_error:
        if group_error.subgroup(EngineAbort) is not None:
            raise ResetConnection from None
        raise _first_api_error(group_error) from None


async def collect_choice(
    engine: Engine, request: GenerationRequest, stops: tuple[str, ...]
) -> ChoiceResult:
    result = ChoiceResult(request.choice_index)
    stream = engine.generate(request)
    if not stops and not request.logprobs:  # the common case: just gather the text
        try:
            result.text = await stream.text()
        finally:
            await stream.aclose()
        result.take_outcome(stream)
        return result
    pieces: list[str] = []

    def emit(text: str, logprobs: list[TokenLogprob]) -> None:
        pieces.append(text)
        result.logprobs.extend(logprobs)

    await run_choice(stream, result, stops, emit)
    result.text = "".join(pieces)
    return result


class StreamJob:
    """One streamed generation: n engine streams publishing into one topic.

    Created before generation starts, so its subscriber sees every frame; :meth:`run` is
    the job the server's supervisor runs.  An engine failure before any frame is kept in
    ``error`` (answered as a plain JSON error); after frames went out it becomes an
    in-stream error frame.
    """

    def __init__(
        self,
        engine: Engine,
        requests: Sequence[GenerationRequest],
        encoder: ChunkEncoder,
        *,
        stops: tuple[str, ...],
        include_usage: bool,
        capacity: int,
        done_frame: bytes = sse.DONE,
        per_prompt: int = 1,
    ) -> None:
        self._per_prompt = per_prompt
        logprobs = any(r.logprobs for r in requests)
        # Frames carrying logprobs can't be rebuilt from text alone: keep what recovery needs.
        self._logprobs = _LogprobIndex(encoder) if logprobs else None
        self.topic = Topic(
            capacity, encoder.text, self._logprobs.catch_up if self._logprobs else None
        )
        self.error: APIError | None = None
        self.aborted = False  # the engine asked for the connection to be reset
        self.results: list[ChoiceResult] = []
        self._engine = engine
        self._requests = requests
        self._encoder = encoder
        self._stops = stops
        self._include_usage = include_usage
        self._done_frame = done_frame
        self._streaming = False  # True once the response head may have gone out
        self.started = asyncio.get_running_loop().time()
        self.first_token: float | None = None  # when the first choice's first token came
        # What ends the stream if the job is cancelled with subscribers left (shutdown).
        self.terminal = encoder.error(
            error_for_status(503, "The server is shutting down; retry.", code="shutting_down")
        )

    async def wait_started(self, timeout: float) -> None:
        """Wait for the first frame (or failure), at most ``timeout`` (0: no limit); raise a
        pre-stream error as it is (a JSON error response)."""
        if timeout > 0:
            # A slow first token: start the stream anyway, pings keep it alive.
            # (asyncio.timeout, unlike wait_for, needs no extra task per request.)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self.topic.wait_first()
        else:  # no pings: the head waits for the first token however long it takes
            await self.topic.wait_first()
        if self.error is not None:
            raise self.error
        if self.aborted:
            raise ResetConnection
        self._streaming = True  # from here on, failures go into the stream

    def response(
        self, job: Job, keepalive: float, headers: tuple[tuple[str, str], ...] = ()
    ) -> StreamResponse:
        async def produce(writer: BodyWriter) -> None:
            try:
                await sse.pump(self.topic, writer, keepalive)
            finally:
                job.release()  # the client left (or the stream ended): stop generating now
            if self.aborted:
                raise ResetConnection

        return StreamResponse(produce, headers=sse.SSE_HEADERS + headers)

    async def run(self) -> None:
        """Generate every choice into the topic, then close it (the job's coroutine)."""
        topic, encoder = self.topic, self._encoder
        try:
            if len(self._requests) == 1:
                self.results = [await self._choice(self._requests[0])]
            else:
                async with asyncio.TaskGroup() as group:
                    tasks = [group.create_task(self._choice(r)) for r in self._requests]
                self.results = [t.result() for t in tasks]
            if self._include_usage:
                topic.publish(encoder.usage(total_usage(self.results, self._per_prompt)))
            topic.close(self._done_frame)
        except EngineAbort:
            self._abort()
        except EngineError as exc:
            self._fail(api_error(exc))
        except ExceptionGroup as group_error:
            if group_error.subgroup(EngineAbort) is not None:
                self._abort()
            else:
                self._fail(_first_api_error(group_error))
        except Exception:
            log.exception("generation failed")
            self._fail(ServerError("The engine failed while generating."))

    def _abort(self) -> None:
        """The engine dropped the connection: no error frame, the client's connection is
        reset (before the head: by the handler; after it: by the pump's producer)."""
        self.aborted = True
        self.topic.close()

    def _fail(self, error: APIError) -> None:
        if not self._streaming:
            self.error = error
            self.topic.close()
        else:
            self.topic.close(self._encoder.error(error))

    async def _choice(self, request: GenerationRequest) -> ChoiceResult:
        index = request.choice_index
        topic, encoder = self.topic, self._encoder
        result = ChoiceResult(index)
        stream = self._engine.generate(request)
        opened = False

        def open_choice() -> None:
            nonlocal opened
            opened = True
            if self.first_token is None:
                self.first_token = asyncio.get_running_loop().time()
            frame = encoder.open(index)
            if frame is not None:
                topic.publish(frame)

        if self._stops or request.logprobs:
            index_of = self._logprobs

            def emit(text: str, logprobs: list[TokenLogprob]) -> None:
                if logprobs:
                    if index_of is not None:
                        index_of.add(index, topic.length(index), logprobs)
                    topic.publish_text(text, index, encoder.text_logprobs(index, text, logprobs))
                else:
                    topic.publish_text(text, index)

            await run_choice(stream, result, self._stops, emit, open_choice)
        else:
            await self._fast_choice(stream, index, result, open_choice)
        if result.tool_calls:
            for frame in encoder.tool_calls(index, result.tool_calls):
                topic.publish(frame)
        topic.publish(encoder.finish(index, result.finish_reason))
        return result

    async def _fast_choice(
        self, stream: TokenStream, index: int, result: ChoiceResult, open_choice: Callable[[], None]
    ) -> None:
        """The hot path: one template concatenation and one publish per token, called by the
        engine (``pipe``) rather than by this task waking up for each token."""
        prefix, suffix = self._encoder.text_template(index)
        publish, dumps = self.topic.publish_text, orjson.dumps

        def emit(text: str) -> None:
            publish(text, index, prefix + dumps(text) + suffix)

        try:
            try:
                text = await stream.__aiter__().__anext__()
            except StopAsyncIteration:
                open_choice()
            else:
                open_choice()
                emit(text)
                await stream.pipe(emit)
        finally:
            await stream.aclose()
        result.take_outcome(stream)


def record(
    metrics: Metrics | None,
    results: Sequence[ChoiceResult],
    model: str,
    started: float,
    first_token: float | None,
) -> None:
    """Each ended choice in the metrics (a non-stream answer's first token is the answer)."""
    if metrics is None:
        return
    now = asyncio.get_running_loop().time()
    first = now if first_token is None else first_token
    for result in results:
        metrics.generation(model, prompt=result.usage.prompt_tokens,
                           generated=result.usage.completion_tokens, ttft=first - started,
                           e2e=now - started, finish=result.finish_reason,
                           queue=result.queue_time)  # fmt: skip


async def start_stream(
    state: AppState,
    requests: Sequence[GenerationRequest],
    encoder: ChunkEncoder,
    sampling: SamplingParams,
) -> StreamResponse:
    """Start an attached job generating into a topic; answer once the first token (or an
    error) is there.  A cancelled job's topic is closed by the supervisor (with the
    stream's terminal error frame, if anyone still listens)."""
    config = state.config
    stream = StreamJob(
        state.engine, requests, encoder,
        stops=sampling.stop, include_usage=sampling.include_usage,
        capacity=config.stream_buffer, per_prompt=sampling.n,
    )  # fmt: skip
    if state.metrics is not None:
        stream.topic.on_lag = state.metrics.lagged
    job = state.jobs.start(_recorded(state, stream, requests[0].model), stream.topic,
                           terminal=stream.terminal)  # fmt: skip
    try:
        await stream.wait_started(config.sse_keepalive)
    except BaseException:
        job.cancel()
        raise
    return stream.response(job, config.sse_keepalive)


async def _recorded(state: AppState, stream: StreamJob, model: str) -> None:
    await stream.run()
    if stream.error is None:
        record(state.metrics, stream.results, model, stream.started, stream.first_token)


class _LogprobIndex:
    """Per choice, where each published piece starts and its logprobs: lag recovery re-sends
    missed text with exactly the logprobs that went with it."""

    def __init__(self, encoder: ChunkEncoder) -> None:
        self._encoder = encoder
        self._starts: dict[int, list[int]] = {}
        self._entries: dict[int, list[list[TokenLogprob]]] = {}

    def add(self, key: int, start: int, logprobs: list[TokenLogprob]) -> None:
        self._starts.setdefault(key, []).append(start)
        self._entries.setdefault(key, []).append(logprobs)

    def catch_up(self, key: int, text: str, start: int) -> bytes:
        starts = self._starts.get(key, [])
        first = bisect.bisect_left(starts, start)
        last = bisect.bisect_left(starts, start + len(text))
        entries = [lp for piece in self._entries.get(key, [])[first:last] for lp in piece]
        if not entries:
            return self._encoder.text(key, text)
        return self._encoder.text_logprobs(key, text, entries)


def _first_api_error(group_error: BaseExceptionGroup[BaseException]) -> APIError:
    for exc in group_error.exceptions:
        if isinstance(exc, EngineError):
            return api_error(exc)
        if isinstance(exc, APIError):
            return exc
        if isinstance(exc, BaseExceptionGroup):
            return _first_api_error(exc)
    log.error("generation failed", exc_info=group_error)
    return ServerError("The engine failed while generating.")
