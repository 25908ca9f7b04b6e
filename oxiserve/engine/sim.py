"""The simulator engine: deterministic, model-free token streams for tests and load tests.

Everything a request gets (text or structured JSON, logprobs, failures, tool
calls) comes from a ``random.Random`` seeded with the simulator seed, the
request's digest (hashed once per API request, not per choice) and the choice
index, so the same request always gets the same answer.  A generation is
planned when it is created (:mod:`oxiserve.engine.sim_plan`) and played back by
:class:`SimStream`.

At zero latency each token costs exactly one event-loop iteration and little
else: tokens are made in chunks, the per-token path is a few attribute
updates, and anything rare (start, chunk refill, failure, finish) happens only
where the current chunk ends.  Iterating, a token is a bare ``yield`` to the
task (as ``asyncio.sleep(0)`` does); through :meth:`SimStream.pipe` (and
``text()``) one :class:`_Driver` callback steps every such generation once per
iteration, as a batching engine steps its batch, with no task switch per token.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import hashlib
import heapq
import math
import struct
import types
from collections.abc import Callable, Generator, Mapping, Sequence
from enum import Enum
from random import Random
from typing import Any

import orjson

from oxiserve.config import Config
from oxiserve.engine import sim_json, sim_text
from oxiserve.engine.base import (
    EngineError,
    FinishReason,
    GenerationRequest,
    ModelInfo,
    TokenLogprob,
    ToolCall,
    ToolSpec,
    Usage,
)
from oxiserve.engine.sim_plan import Plan, header_failure, make_plan, spread

CHUNK = 256  # tokens made at a time
MODEL_CREATED = 1_735_689_600  # 2025-01-01T00:00:00Z: fixed, so /v1/models is reproducible


class _State(Enum):
    NEW = "new"
    RUNNING = "running"
    DONE = "done"


_RUNNING = _State.RUNNING  # one global lookup on the per-token path


def _granted(waiter: asyncio.Future[Any]) -> bool:
    """Whether a queued stream's future was completed by ``release`` (a slot), not by
    ``_stop`` (closed while it waited)."""
    return (
        waiter.done()
        and not waiter.cancelled()
        and waiter.exception() is None
        and (waiter.result() is True)
    )


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class SimStream:
    """One simulated generation (implements :class:`~oxiserve.engine.base.TokenStream`).

    Cancelling a pending ``__anext__`` (its task is cancelled), ``aclose()`` and
    garbage collection all end the generation and give back its engine slot.
    """

    __slots__ = (
        "_chunk",
        "_due",
        "_emit",
        "_end",
        "_engine",
        "_gap_rng",
        "_itl_paced",
        "_loop",
        "_lp_rng",
        "_paced",
        "_plan",
        "_pos",
        "_slot",
        "_stalled",
        "_state",
        "_top_n",
        "_waiter",
        "finish_reason",
        "logprobs",
        "queue_time",
        "tool_calls",
        "usage",
    )

    def __init__(self, engine: SimEngine, plan: Plan, request: GenerationRequest) -> None:
        self._engine = engine
        self._plan = plan
        self._state = _State.NEW
        self._slot = False
        self._chunk: list[str] = []
        self._pos = 0
        self._end = 0  # 0 sends the first __anext__ down the slow path
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._emit: Callable[[str], None] | None = None  # the pipe's, while the driver steps it
        self._due = 0.0
        self._paced = False
        self._stalled = False  # a stall failure happens once
        config = engine.config
        jitter = config.sim_itl_jitter_ms > 0
        self._itl_paced = config.sim_itl_ms > 0 or jitter
        self._gap_rng = Random(plan.seed + 1) if jitter else None
        self._lp_rng = Random(plan.seed + 2) if request.logprobs else None
        self._top_n = request.top_logprobs
        prompt_tokens = request.prompt_tokens
        if prompt_tokens is None:
            prompt_tokens = sim_text.count_tokens(request.prompt)
        self.usage = Usage(prompt_tokens=prompt_tokens)
        self.finish_reason: FinishReason | None = None
        self.tool_calls: list[ToolCall] = []
        self.logprobs: list[TokenLogprob] = []
        self.queue_time = 0.0  # seconds it waited for a running slot

    def __aiter__(self) -> SimStream:
        return self

    @types.coroutine
    def __anext__(self) -> Generator[Any, Any, str]:
        if self._pos >= self._end:
            yield from self._advance()
        if self._paced:
            yield from self._pace()
        else:
            try:
                yield  # one event-loop iteration, like asyncio.sleep(0)
            except BaseException:
                self._stop("cancelled")
                raise
        if self._state is not _RUNNING:
            raise StopAsyncIteration  # closed while this token was on its way
        pos = self._pos
        self._pos = pos + 1
        self.usage.completion_tokens += 1
        self._engine.tokens_produced += 1
        token = self._chunk[pos]
        if self._lp_rng is not None:
            self.logprobs.append(sim_text.token_logprob(token, self._lp_rng, self._top_n))
        return token

    async def text(self) -> str:
        """The rest of the text (``TokenStream.text``): the pieces :meth:`pipe` hands out,
        joined."""
        pieces: list[str] = []
        await self.pipe(pieces.append)
        return "".join(pieces)

    async def pipe(self, emit: Callable[[str], None]) -> None:
        """Hand every remaining piece to ``emit`` (``TokenStream.pipe``).

        Without logprobs, the pieces after the first come from one of the engine's stepping
        callbacks instead of a task switch per token: unpaced, the :class:`_Driver` (one
        token per loop iteration, as iterating takes); with an inter-token latency, the
        :class:`_Pacer` (each token at its time, as iterating would give it)."""
        while True:
            while (
                self._state is _State.NEW
                or self._lp_rng is not None
                or (self._paced and not self._itl_paced)  # a first token's or a stall's wait
            ):
                try:
                    text = await self.__anext__()
                except StopAsyncIteration:
                    return
                emit(text)
            if self._state is not _RUNNING:
                return
            if self._pos >= self._end:  # the driver steps only streams with a token in hand
                try:
                    self._next_chunk()
                except StopAsyncIteration:
                    return
                if self._paced and not self._itl_paced:
                    continue  # a stall began: the paced path waits it out
            loop = self._loop
            assert loop is not None  # set by _start
            done = self._waiter = loop.create_future()
            self._emit = emit
            if self._itl_paced:
                self._engine.pacer(loop).add(self)
            else:
                self._engine.driver(loop).add(self)
            try:
                await done
            except BaseException:
                self._stop("cancelled")  # no-op if it failed: the failure is what we raise
                raise
            finally:
                self._waiter = None
                self._emit = None
            if self._state is not _RUNNING:
                return  # else the driver let it go for a stall: on, paced

    async def aclose(self) -> None:
        """Cancel the generation: no token is produced after this returns."""
        self._stop("cancelled")

    def __del__(self) -> None:
        if self._slot:
            self._slot = False
            self._engine.release()

    def _advance(self) -> Generator[Any, Any, None]:
        """The slow path of ``__anext__``: start, fail, finish or make the next chunk."""
        if self._state is _State.NEW:
            yield from self._start()
        if self._state is not _RUNNING:
            raise StopAsyncIteration
        self._next_chunk()

    def _next_chunk(self) -> None:
        """Fail, finish (StopAsyncIteration) or make the next chunk of a running stream."""
        plan = self._plan
        produced = self.usage.completion_tokens
        if produced == plan.fail_at and plan.failure is not None and not self._stalled:
            if plan.failure.action != "stall":
                error = plan.failure.error()
                self._stop(None, error)
                raise error
            self._stall()
            if self._pos < len(self._chunk):  # then the rest of this chunk, as without it
                self._end = len(self._chunk)
                return
        if produced >= plan.count:
            self._stop(plan.reason)
            raise StopAsyncIteration
        # Chunks are cut as if nothing failed (the text stays the same); a failure due
        # inside one ends it early.
        stop = min(plan.count, produced + CHUNK)
        if plan.pieces is None:
            self._chunk = sim_text.lorem_pieces(plan.lorem, stop - produced, produced == 0)
        else:
            self._chunk = plan.pieces[produced:stop]
        self._pos, self._end = 0, len(self._chunk)
        if plan.failure is not None and produced < plan.fail_at < stop:
            self._end = plan.fail_at - produced

    def _start(self) -> Generator[Any, Any, None]:
        plan, engine = self._plan, self._engine
        stall = plan.fail_at == 0 and plan.failure is not None and plan.failure.action == "stall"
        if plan.fail_at == 0 and plan.failure is not None and not stall:
            self._stop(None)
            raise plan.failure.error()
        try:
            waiter = engine.acquire()
        except EngineError:
            self._stop(None)
            raise
        self._loop = loop = asyncio.get_running_loop()
        if waiter is not None:
            queued = loop.time()
            self._waiter = waiter
            try:
                yield from waiter
            except BaseException:
                if _granted(waiter):
                    engine.release()  # the slot came as this was cancelled: pass it on
                engine.leave(waiter)
                self._stop("cancelled")
                raise
            finally:
                self._waiter = None
            if not _granted(waiter):  # closed while it waited (_stop woke it)
                engine.leave(waiter)
                raise StopAsyncIteration
            if self._state is _State.DONE:  # closed once the slot was on its way
                engine.release()
                raise StopAsyncIteration
            self.queue_time = loop.time() - queued
        self._slot = True
        self._state = _RUNNING
        ttft = plan.ttft * engine.load_factor()
        if stall:  # before the first token: a longer wait for it
            self._stalled = True
            ttft += engine.config.sim_stall_ms / 1000.0
        self._due = loop.time() + ttft
        self._paced = ttft > 0 or self._itl_paced
        if plan.count == 0:  # a tool call, or nothing to say: still the first-token wait
            yield from self._pace()
            if self._state is not _RUNNING:
                raise StopAsyncIteration
            if plan.tool is not None:
                self._call_tool(plan.tool)
            self._stop(plan.reason)
            raise StopAsyncIteration

    def _stall(self) -> None:
        """Send nothing for ``--sim-stall-ms``, then go on as before: the next token waits
        (a piped stream leaves the driver for the paced path, which waits it out)."""
        loop = self._loop
        assert loop is not None
        self._stalled = True
        self._due = max(self._due, loop.time()) + self._engine.config.sim_stall_ms / 1000.0
        self._paced = True
        waiter = self._waiter
        in_driver = self._emit is not None and not self._itl_paced  # (the pacer just waits)
        if in_driver and waiter is not None and not waiter.done():
            waiter.set_result(None)  # out of the driver

    def _call_tool(self, tool: ToolSpec) -> None:
        rng = self._plan.rng
        assert rng is not None  # made for every request with tools
        try:
            value = sim_json.sample_json(tool.parameters, rng)
            arguments = sim_json.checked_size(orjson.dumps(value).decode())
        except (ValueError, TypeError, ArithmeticError, RecursionError, orjson.JSONEncodeError):
            self._stop(None)
            raise EngineError(
                f"The simulator cannot generate arguments for the parameters schema of "
                f"tool '{tool.name}' (too large, infinite or malformed).",
                status=400,
                code="invalid_tool_schema",
            ) from None
        self.tool_calls.append(ToolCall(f"call_{rng.randbytes(12).hex()}", tool.name, arguments))
        self.usage.completion_tokens += sim_text.count_tokens(arguments)

    def _pace(self) -> Generator[Any, Any, None]:
        """Wait until the next token is due: tokens keep to a schedule (first-token time,
        then one inter-token gap each), so a consumer that fell behind catches up."""
        loop = self._loop
        assert loop is not None
        delay = self._due - loop.time()
        self._advance_due()
        self._paced = self._itl_paced
        try:
            if delay <= 0:
                yield
                return
            waiter = self._waiter = loop.create_future()
            timer = loop.call_later(delay, _wake, waiter)
            try:
                yield from waiter
            finally:
                timer.cancel()
                self._waiter = None
        except BaseException:
            self._stop("cancelled")
            raise

    def _advance_due(self) -> None:
        """The next token is due one inter-token gap (jittered, stretched by load) later."""
        engine = self._engine
        config = engine.config
        gap = config.sim_itl_ms
        if self._gap_rng is not None:
            gap = spread(gap, config.sim_itl_jitter_ms, config.sim_latency_dist, self._gap_rng)
        self._due += gap * engine.load_factor() / 1000.0

    def _stop(self, reason: FinishReason | None, error: BaseException | None = None) -> None:
        """End the generation (``None``: it failed with ``error``, which a pending
        :meth:`pipe` raises) and give its slot back."""
        if self._state is _State.DONE:
            return
        self._state = _State.DONE
        self.finish_reason = reason
        self._pos = self._end = 0
        if self._slot:
            self._slot = False
            self._engine.release()
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            if error is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(error)

    def _fail(self, error: BaseException) -> None:
        """What the driver does when stepping this stream raised: a finish
        (StopAsyncIteration) needs nothing more; anything else fails its pipe."""
        if not isinstance(error, StopAsyncIteration):
            self._stop(None, error)


class _Driver:
    """Steps every piped, unpaced generation of an engine by one token per loop iteration,
    from one self-rescheduling callback: what a batching engine does, and far cheaper than
    a task step per token per stream.

    A stream that joins while the driver runs is stepped from the next step on, so no
    stream gets two tokens in one iteration.  Its pipe is woken by ``_stop`` (finished,
    failed or closed); the driver drops it at its next step.
    """

    __slots__ = ("_engine", "_joining", "_scheduled", "_streams", "loop")

    def __init__(self, engine: SimEngine, loop: asyncio.AbstractEventLoop) -> None:
        self._engine = engine
        self.loop = loop
        self._streams: list[SimStream] = []
        self._joining: list[SimStream] = []
        self._scheduled = False

    def add(self, stream: SimStream) -> None:
        if self._scheduled:
            self._joining.append(stream)
        else:
            self._streams.append(stream)
            self._scheduled = True
            self.loop.call_soon(self._step)

    def _step(self) -> None:
        streams = self._streams
        made = 0
        ended = False
        for stream in streams:
            if stream._state is not _RUNNING:
                ended = True
                continue
            pos = stream._pos  # < _end: a chunk's end is dealt with as it is reached
            stream._pos = pos + 1
            stream.usage.completion_tokens += 1
            made += 1
            emit = stream._emit
            assert emit is not None
            try:
                emit(stream._chunk[pos])
                if pos + 1 >= stream._end and stream._state is _RUNNING:
                    stream._next_chunk()  # at once: a finish wakes the pipe this iteration
                    ended = ended or stream._paced  # a stall: it leaves the driver
            except Exception as exc:
                stream._fail(exc)
                ended = True
        self._engine.tokens_produced += made
        if ended:
            streams = self._streams = [s for s in streams if s._state is _RUNNING and not s._paced]
        if self._joining:
            streams += self._joining
            self._joining = []
        if streams:
            self.loop.call_soon(self._step)
        else:
            self._scheduled = False


PACER_SLACK = 0.0005  # tokens due this soon go out with the ones due now: one wake-up for all


class _Pacer:
    """Steps every piped generation that has an inter-token latency, each token at its due
    time, from one timer for all of them: a heap of due times instead of a timer and a task
    switch per token per stream.  Tokens due within PACER_SLACK of each other go out in one
    wake-up; one that is late (the loop was busy) goes out at once, one per step, so a
    stream catches up on its schedule as iterating would."""

    __slots__ = ("_armed", "_engine", "_heap", "_seq", "_timer", "loop")

    def __init__(self, engine: SimEngine, loop: asyncio.AbstractEventLoop) -> None:
        self._engine = engine
        self.loop = loop
        self._heap: list[tuple[float, int, SimStream]] = []
        self._seq = 0  # ties: first come, first served
        self._timer: asyncio.Handle | None = None  # (uvloop's has no when(): see _armed)
        self._armed = 0.0  # when the timer fires

    def add(self, stream: SimStream) -> None:
        self._push(stream)
        self._arm()

    def _push(self, stream: SimStream) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (stream._due, self._seq, stream))

    def _arm(self) -> None:
        heap, timer = self._heap, self._timer
        if not heap:
            return
        due = heap[0][0]
        if timer is not None:
            if self._armed <= due:
                return
            timer.cancel()
        self._timer, self._armed = self.loop.call_at(due, self._step), due

    def _step(self) -> None:
        self._timer = None
        heap = self._heap
        now = self.loop.time() + PACER_SLACK
        made = 0
        later: list[SimStream] = []
        while heap and heap[0][0] <= now:
            due, _, stream = heapq.heappop(heap)
            if stream._state is not _RUNNING or stream._emit is None:
                continue  # closed or ended: it left
            if stream._due != due:  # its schedule moved (a stall): wait for the new time
                later.append(stream)
                continue
            pos = stream._pos
            stream._pos = pos + 1
            stream.usage.completion_tokens += 1
            made += 1
            try:
                stream._emit(stream._chunk[pos])
                if pos + 1 >= stream._end and stream._state is _RUNNING:
                    stream._next_chunk()
            except Exception as exc:
                stream._fail(exc)
                continue
            if stream._state is _RUNNING:
                stream._advance_due()
                later.append(stream)  # after this step: one token per stream per step
        for stream in later:
            self._push(stream)
        self._engine.tokens_produced += made
        self._arm()


_MEMO_CHARS = 16 * 1024
_MEMO_ENTRIES = 256  # at most 16 MiB of text held, far less for ASCII prompts


def _count(text: str) -> int:
    return sim_text.count_tokens(text)


class SimEngine:
    """The simulator: implements :class:`~oxiserve.engine.base.Engine` from ``sim_*`` settings.

    ``tokens_produced`` counts every token handed out; ``active_generations`` the
    generations running (at most ``--sim-max-running``, when set); ``waiting`` the ones
    queued for a running slot, first come first served, as a loaded server queues them.
    """

    name = "sim"

    def __init__(self, config: Config) -> None:
        self.config = config
        self.tokens_produced = 0
        self.active_generations = 0
        self._queue: collections.deque[asyncio.Future[Any]] = collections.deque()
        self._models = tuple(ModelInfo(id=name, created=MODEL_CREATED)
                             for name in config.served_names(config.model_name))  # fmt: skip
        self._embed_key = f"oxiserve-sim-embedding\0{config.sim_seed}\0".encode()
        self._counts = functools.lru_cache(maxsize=_MEMO_ENTRIES)(_count)
        self._driver: _Driver | None = None
        self._pacer: _Pacer | None = None

    @property
    def waiting(self) -> int:
        return len(self._queue)  # a waiter that leaves is taken out at once (``leave``)

    def leave(self, waiter: asyncio.Future[Any]) -> None:
        """A queued request gave up (closed or cancelled): out of the queue now, so the
        queue holds only requests still waiting, however many come and go."""
        waiter.cancel()
        with contextlib.suppress(ValueError):
            self._queue.remove(waiter)

    def load_factor(self) -> float:
        """How much latencies stretch now: linearly from 1 with one sequence running to
        ``--sim-time-factor-under-load`` with ``--sim-max-running`` of them."""
        config = self.config
        top, limit = config.sim_time_factor_under_load, config.sim_max_running
        if top == 1.0 or limit <= 1:
            return 1.0
        running = min(max(self.active_generations, 1), limit)
        return 1.0 + (top - 1.0) * (running - 1) / (limit - 1)

    def acquire(self) -> asyncio.Future[Any] | None:
        """A running slot: None if taken at once, else the future that gets one when a
        running generation ends.  EngineError when the queue is full."""
        config = self.config
        limit = config.sim_max_running
        if not limit or self.active_generations < limit:
            self.active_generations += 1
            return None
        if self.waiting >= config.sim_max_waiting:
            status = config.sim_queue_full_status
            raise EngineError(
                f"{self.active_generations} sequences run and {self.waiting} requests wait: "
                f"the queue is full", status=status, retry_after=1.0,
                code="rate_limit_exceeded" if status == 429 else "engine_overloaded",
            )  # fmt: skip
        waiter = asyncio.get_running_loop().create_future()
        self._queue.append(waiter)
        return waiter

    def release(self) -> None:
        """A running generation ended: its slot goes to the first request still waiting."""
        queue = self._queue
        while queue:
            waiter = queue.popleft()
            if not waiter.done():
                with contextlib.suppress(RuntimeError):  # its loop is gone (garbage collected)
                    waiter.set_result(True)
                    return  # the slot changes hands: as many run as before
        self.active_generations -= 1

    def pacer(self, loop: asyncio.AbstractEventLoop) -> _Pacer:
        """The pacer of this engine's piped generations with an inter-token latency."""
        pacer = self._pacer
        if pacer is None or pacer.loop is not loop:
            pacer = self._pacer = _Pacer(self, loop)
        return pacer

    def driver(self, loop: asyncio.AbstractEventLoop) -> _Driver:
        """The driver stepping this engine's piped generations on ``loop`` (one per loop: an
        engine used from a new loop gets a new one)."""
        driver = self._driver
        if driver is None or driver.loop is not loop:
            driver = self._driver = _Driver(self, loop)
        return driver

    def models(self) -> Sequence[ModelInfo]:
        return self._models

    def generate(self, request: GenerationRequest) -> SimStream:
        return SimStream(self, make_plan(self.config, request), request)

    def count_tokens(self, text: str) -> int:
        """Tokens as a cl100k-like BPE would count them (see :mod:`oxiserve.engine.sim_text`).

        Counts of texts up to ``_MEMO_CHARS`` are memoized (the last ``_MEMO_ENTRIES``):
        load tests, retries and evaluation runs send one prompt many times, and counting
        costs more than the rest of the simulator's work on a short answer."""
        if len(text) <= _MEMO_CHARS:
            return self._counts(text)
        return sim_text.count_tokens(text)

    async def embed(
        self,
        model: str,
        inputs: Sequence[str],
        dimensions: int | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> list[list[float]]:
        """Unit vectors from a hash of each input; a shorter ``dimensions`` gives the
        renormalized prefix of the longer vector, as OpenAI's shortened embeddings do.
        ``x-sim-error: <status>`` in ``headers`` fails the request with that status."""
        if headers:
            try:
                forced = header_failure(headers, 0)
            except ValueError as exc:
                raise EngineError(str(exc), status=400, code="invalid_sim_header") from None
            if forced is not None:
                raise forced[0].error()
        size = self.config.sim_embedding_dim if dimensions is None else dimensions
        if size < 1:
            raise EngineError("dimensions must be at least 1", status=400, code="invalid_value")
        return [self._embedding(text, size) for text in inputs]

    def _embedding(self, text: str, size: int) -> list[float]:
        raw = hashlib.shake_256(self._embed_key + text.encode("utf-8", "surrogatepass"))
        values = struct.unpack(f"<{size}h", raw.digest(2 * size))
        norm = math.hypot(*values)
        if norm == 0.0:  # all 2*size hash bytes zero: never in practice
            return [1.0] + [0.0] * (size - 1)
        scale = 1.0 / norm
        return [v * scale for v in values]

    async def close(self) -> None:
        """Nothing to release: generations hold no resources beyond their slot count."""
