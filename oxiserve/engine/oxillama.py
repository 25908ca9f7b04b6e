"""The real engine: GGUF models through ``oxillama`` (the ``[oxillama]`` extra).

Each loaded ``oxillama_py.Engine`` runs one generation at a time, on a thread of its own (an
engine raises "Already borrowed" on a concurrent call, and generation releases the GIL).
``--engine-workers N`` loads N engines; requests wait in a bounded queue in front of them
(full: 503 with Retry-After).  Every generation starts with ``reset()`` (the KV cache is not
reset between calls) and a fresh cancellation token.  Text pieces reach the event loop in
batches: the worker thread appends to a list and wakes the loop only if it is not already
woken, so a fast engine costs one loop wake-up per batch, not per piece.

    engine = OxillamaEngine(config)          # loads the model(s); errors say what is wrong
    stream = engine.generate(request)        # a TokenStream
    await stream.pipe(emit)                  # pieces as they come, in batches
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from oxiserve.config import Config
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
from oxiserve.engine.guided import Outcome, Sampling, TokenTable, decode
from oxiserve.engine.json_guide import JsonGuide, SchemaTooLarge, nested
from oxiserve.engine.tool_parse import CallWatch, parse_tool_calls, rest_to_send
from oxiserve.errors import StartupError

log = logging.getLogger("oxiserve.engine")

COUNT_ENGINE_MAX_BYTES = 256 * 1024 * 1024  # models a second copy is cheap for
BATCH_SECONDS = 0.002  # as --stream-coalesce-ms: a reader sees no difference
INSTALL_HINT = "the oxillama engine needs the [oxillama] extra: pip install 'oxiserve[oxillama]'"
# FinishReason as str(): eos / stopped -> stop, max_tokens / context_full -> length.
_FINISH: dict[str, FinishReason] = {
    "eos": "stop", "stopped": "stop", "max_tokens": "length", "context_full": "length",
    "cancelled": "cancelled",
}  # fmt: skip


class EngineStartError(StartupError):
    """The engine cannot start (extra missing, model file missing or invalid): one line."""


def _module() -> ModuleType:
    try:
        import oxillama_py
    except ImportError:
        raise EngineStartError(INSTALL_HINT) from None
    return oxillama_py


def _is_panic(exc: BaseException) -> bool:
    return type(exc).__name__ == "PanicException"


@dataclass(frozen=True, slots=True)
class Guidance:
    """A generation held to a JSON schema (see ``engine/guided.py``)."""

    guide: JsonGuide
    opener: str = ""  # written after the prompt: the model has begun its tool call with it
    call: bool = False  # the instance is a tool call (sent whole at the end), not the answer


class _Worker:
    """One loaded engine and the thread that alone calls it."""

    def __init__(self, ox: ModuleType, config: Config, model: str, index: int) -> None:
        self._ox, self._config, self._model = ox, config, model
        self.executor = ThreadPoolExecutor(1, thread_name_prefix=f"oxillama-{index}")
        self.engine = self._load()
        self.table = TokenTable(self.engine)  # for guided decoding, filled as it goes

    def _load(self) -> Any:
        ox, config = self._ox, self._config
        kwargs: dict[str, Any] = {"num_threads": config.threads}
        if config.context_size:
            kwargs["context_size"] = config.context_size
        if config.tokenizer:
            kwargs["tokenizer_path"] = config.tokenizer
        try:
            engine = ox.Engine(ox.EngineConfig(self._model, **kwargs))
            engine.load_model()
        except BaseException as exc:  # a malformed file may panic (a BaseException)
            if isinstance(exc, KeyboardInterrupt | SystemExit):
                raise
            raise EngineStartError(
                f"cannot load the model {self._model}: {type(exc).__name__}: {exc}"
            ) from None
        return engine

    def reload(self) -> None:
        """After a panic the engine's state is unknown: load it again (on its thread)."""
        try:
            self.engine = self._load()
            self.table = TokenTable(self.engine)
        except EngineStartError:
            log.exception("reloading the engine after a panic failed")


class OxillamaEngine:
    """The :class:`~oxiserve.engine.base.Engine` for GGUF models (see the module docstring)."""

    name = "oxillama"

    def __init__(self, config: Config, *, load: bool = True) -> None:
        """Check the model file (one-line errors); ``load=False`` leaves loading to
        :meth:`load` (the server listens meanwhile, not ready: see ``ready``)."""
        ox = _module()
        path = Path(config.model)
        if not config.model:
            raise EngineStartError("--engine oxillama needs --model PATH.gguf")
        if not path.is_file():
            raise EngineStartError(f"model file not found: {config.model}")
        self.config = config
        self._ox = ox
        from oxiserve.engine import chat_templates, tiny_gguf

        try:
            info = tiny_gguf.read_metadata(str(path))
        except ValueError as exc:
            raise EngineStartError(str(exc)) from None
        self._template = chat_templates.load_template(config.chat_template or None,
                                                      info.chat_template)  # fmt: skip
        self._path = path
        self._workers: list[_Worker] = []
        self._context = config.context_size or info.context_length or 2048
        self._counter = threading.Lock()
        self._count_engine: _Worker | None = None
        self._count: Callable[[str], int] = _approximate_count
        self._embedder: _Worker | None = None
        self.ready = False  # loaded: until then generations and embeddings get 503
        if load:
            self.load()
        created = int(path.stat().st_mtime)  # named by its file unless given names
        self._models = tuple(
            ModelInfo(id=n, created=created) for n in config.served_names(path.stem)
        )
        self._idle: asyncio.Queue[_Worker] | None = None
        self.waiting = 0  # generations waiting for an engine (for the metrics)
        self.running = 0

    def load(self) -> None:
        """Load the engines (seconds for a large model; blocking: call it off the loop)."""
        ox, config, path = self._ox, self.config, self._path
        workers = [_Worker(ox, config, str(path), i) for i in range(config.engine_workers)]
        count = self._token_counter(ox, config, path)
        embedder = (
            _Worker(ox, config, config.embedding_model, -2) if config.embedding_model else None
        )
        self._workers, self._count, self._embedder = workers, count, embedder
        self.ready = True

    # --- the Engine protocol -------------------------------------------------------------------

    def models(self) -> Sequence[ModelInfo]:
        return self._models

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` for request checks (lengths, budgets, embeddings usage); the
        usage of a generation comes from the engine itself."""
        with self._counter:
            return self._count(text)

    def _token_counter(self, ox: ModuleType, config: Config, path: Path) -> Callable[[str], int]:
        """A busy engine cannot tokenize ("Already borrowed"): count with ``--tokenizer``'s
        file, else with an engine of its own for a small model, else approximately (a second
        copy of a large model is not worth exact counts of request checks)."""
        if config.tokenizer:
            tokenizer = ox.Tokenizer.from_file(config.tokenizer)
            return lambda text: len(tokenizer.encode(text))
        if path.stat().st_size <= COUNT_ENGINE_MAX_BYTES:
            counter = self._count_engine = _Worker(ox, config, str(path), -1)
            return lambda text: len(counter.engine.tokenize(text))
        log.info("request token counts are approximate (no --tokenizer file)")
        return _approximate_count

    def generate(self, request: GenerationRequest) -> OxillamaStream:
        return OxillamaStream(self, request)

    async def embed(
        self,
        model: str,
        inputs: Sequence[str],
        dimensions: int | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> list[list[float]]:
        worker = self._embedder or await self._acquire()
        try:
            loop = asyncio.get_running_loop()
            vectors = []
            for text in inputs:
                vector = await loop.run_in_executor(worker.executor, worker.engine.embed, text)
                vectors.append(_shorten(list(vector), dimensions))
            return vectors
        finally:
            if worker is not self._embedder:
                self._release(worker)

    async def close(self) -> None:
        for worker in [*self._workers, self._count_engine, self._embedder]:
            if worker is not None:
                worker.executor.shutdown(wait=False, cancel_futures=True)

    # --- scheduling ----------------------------------------------------------------------------

    async def _acquire(self) -> _Worker:
        if not self.ready:
            raise EngineError("The model is still loading; retry shortly.", status=503,
                              code="model_loading", retry_after=1.0)  # fmt: skip
        idle = self._idle
        if idle is None:
            idle = self._idle = asyncio.Queue()
            for worker in self._workers:
                idle.put_nowait(worker)
        if idle.empty() and self.waiting >= self.config.max_queue:
            raise EngineError(
                f"all {len(self._workers)} engines are busy and {self.waiting} requests wait",
                status=503, code="engine_overloaded", retry_after=1.0,
            )  # fmt: skip
        self.waiting += 1
        try:
            worker = await idle.get()
        finally:
            self.waiting -= 1
        self.running += 1
        return worker

    def _release(self, worker: _Worker) -> None:
        self.running -= 1
        assert self._idle is not None
        self._idle.put_nowait(worker)

    def render(self, request: GenerationRequest) -> str:
        """The prompt in the model's own chat template (a completion's prompt as it is)."""
        if not request.messages:
            return request.prompt
        tools = request.tools if request.tool_choice not in (None, "none") else ()
        prompt: str = self._template.render(request.messages, tools)
        return prompt

    def guidance(self, request: GenerationRequest) -> Guidance | None:
        """The schema a forced tool call (``required`` or a named function) or a JSON
        ``response_format`` holds the generation to; None: free text."""
        try:
            if request.tools and (request.forced_tool or request.tool_choice == "required"):
                return self._call_guidance(request)
            fmt = request.response_format
            if fmt is not None and fmt.kind in ("json_object", "json_schema"):
                return Guidance(JsonGuide(fmt.schema or {"type": "object"}))
        except (SchemaTooLarge, RecursionError) as exc:
            reason = "it is nested too deeply" if isinstance(exc, RecursionError) else str(exc)
            raise EngineError(f"The schema is too large to guide generation by: {reason}",
                              status=400, code="invalid_value") from None  # fmt: skip
        except (TypeError, ValueError) as exc:  # a keyword of the wrong kind ({"allOf": 5})
            raise EngineError(f"The schema is not a valid JSON schema: {exc}", status=400,
                              code="invalid_value") from None  # fmt: skip
        return None

    def _call_guidance(self, request: GenerationRequest) -> Guidance:
        tools = [
            t for t in request.tools if t.name == request.forced_tool or not request.forced_tool
        ]
        if not tools:
            raise EngineError(f"tool_choice names {request.forced_tool!r}, not one of the tools",
                              status=400, code="invalid_tool_choice")  # fmt: skip
        opener, key = self._template.call_format
        many = len(tools) > 1

        def call(i: int, tool: ToolSpec) -> dict[str, Any]:
            where = f"/anyOf/{i}" if many else ""
            arguments = nested(dict(tool.parameters) or {"type": "object"},
                               f"{where}/properties/{key}")  # fmt: skip
            return {"type": "object", "properties": {"name": {"const": tool.name}, key: arguments},
                    "required": ["name", key], "additionalProperties": False}  # fmt: skip

        options = [call(i, tool) for i, tool in enumerate(tools)]
        return Guidance(JsonGuide({"anyOf": options} if many else options[0]), opener, call=True)

    def parse_tools(self, text: str, request: GenerationRequest) -> tuple[str, list[ToolCall]]:
        if not request.tools or request.tool_choice in (None, "none"):
            return text, []
        return parse_tool_calls(text, request.tools)


def _approximate_count(text: str) -> int:
    from oxiserve.engine import sim_text

    return sim_text.count_tokens(text)


def _shorten(vector: list[float], dimensions: int | None) -> list[float]:
    if dimensions is None or dimensions >= len(vector):
        return vector
    if dimensions < 1:
        raise EngineError("dimensions must be at least 1", status=400, code="invalid_value")
    head = vector[:dimensions]
    norm = sum(v * v for v in head) ** 0.5 or 1.0
    return [v / norm for v in head]


class OxillamaStream:
    """One generation (a :class:`~oxiserve.engine.base.TokenStream`)."""

    def __init__(self, engine: OxillamaEngine, request: GenerationRequest) -> None:
        self._engine = engine
        self._request = request
        self.usage = Usage()
        self.finish_reason: FinishReason | None = None
        self.tool_calls: list[ToolCall] = []
        self.logprobs: list[TokenLogprob] = []
        self.queue_time = 0.0  # seconds it waited for an engine
        self._pieces: list[str] = []  # handed over by the worker thread, under _lock
        self._lock = threading.Lock()
        self._woken = False  # the loop has been told of pieces, or looks for them anyway
        self._timer: asyncio.TimerHandle | None = None
        self._watch: CallWatch | None = None  # when the model may call tools
        self._held_call = False  # a forced call: held whole for the end
        self._ready: list[str] = []  # taken by the loop, not yet handed out
        self._waiter: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._done = False
        self._error: BaseException | None = None
        self._token: Any = None
        self._closed = False
        self._generating = False  # an engine has it (cancel through the token, not the task)

    # --- the TokenStream protocol ---------------------------------------------------------------

    def __aiter__(self) -> OxillamaStream:
        return self

    async def __anext__(self) -> str:
        while not self._ready:
            if self._done:
                self._raise()
                raise StopAsyncIteration
            await self._wait()
        return self._ready.pop(0)

    async def text(self) -> str:
        pieces: list[str] = []
        await self.pipe(pieces.append)
        return "".join(pieces)

    async def pipe(self, emit: Callable[[str], None]) -> None:
        while True:
            if self._ready:
                batch, self._ready = self._ready, []
                for piece in batch:
                    emit(piece)
                continue
            if self._done:
                self._raise()
                return
            await self._wait()

    async def aclose(self) -> None:
        """Cancel the generation: a waiting one leaves the queue at once, a running one stops
        within about a millisecond (its text so far was handed out already)."""
        self._closed = True
        task = self._task
        if task is not None and not task.done():
            if not self._generating:
                task.cancel()
            elif self._token is not None:
                self._token.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.shield(task)
        if self.finish_reason is None and self._error is None:
            self.finish_reason = "cancelled"

    # --- the generation ---------------------------------------------------------------------------

    async def _wait(self) -> None:
        loop = asyncio.get_running_loop()
        if self._task is None:
            self._task = loop.create_task(self._run(loop))
        waiter = self._waiter = loop.create_future()
        try:
            await waiter
        finally:
            self._waiter = None

    def _wake(self) -> None:
        """The engine's first piece since the loop last found none (or the end): hand it out,
        then look for more every BATCH_SECONDS while they come, from the loop's own timer: a
        fast model's pieces go over in batches without its thread waking the loop for them
        (a cross-thread wake-up costs more than a small model's token)."""
        self._poll()

    def _poll(self) -> None:
        self._timer = None
        with self._lock:
            pieces, self._pieces = self._pieces, []
            if not pieces:
                self._woken = False  # the next piece wakes the loop at once
        if pieces:
            self._ready += pieces
            if not self._done:
                self._timer = asyncio.get_running_loop().call_later(BATCH_SECONDS, self._poll)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _raise(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    async def _run(self, loop: asyncio.AbstractEventLoop) -> None:
        engine = self._engine
        try:
            guidance = engine.guidance(self._request)
            asked = loop.time()
            worker = await engine._acquire()
            self.queue_time = loop.time() - asked
        except EngineError as exc:
            self._finish(exc)
            return
        except asyncio.CancelledError:  # closed while it waited for an engine
            self._finish(None)
            raise
        except Exception:  # whatever it is, the consumer must hear of it, not wait
            log.exception("preparing the generation failed")
            self._finish(EngineError("The engine failed while generating.", status=500))
            return
        self._generating = True
        try:
            if self._closed:
                self._finish(None)
                return
            prompt = engine.render(self._request) + (guidance.opener if guidance else "")
            outcome = await loop.run_in_executor(
                worker.executor, self._generate, worker, prompt, loop, guidance
            )
            self._finish(outcome)
        except BaseException as exc:
            if _is_panic(exc):
                log.error("the engine panicked: %s; reloading it", exc)
                await loop.run_in_executor(worker.executor, worker.reload)
                self._finish(EngineError("The engine failed while generating.", status=500,
                                         code="engine_panic"))  # fmt: skip
            elif isinstance(exc, EngineError):
                self._finish(exc)
            else:
                log.exception("generation failed")
                self._finish(EngineError("The engine failed while generating.", status=500))
        finally:
            engine._release(worker)

    def _generate(
        self,
        worker: _Worker,
        prompt: str,
        loop: asyncio.AbstractEventLoop,
        guidance: Guidance | None,
    ) -> Any:
        """On the worker's thread: one generation, pieces handed to the loop in batches."""
        ox, engine, request = self._engine._ox, worker.engine, self._request
        engine.reset()
        self._token = token = ox.CancellationToken()
        if self._closed:
            return None
        prompt_tokens = len(engine.tokenize(prompt))
        context = self._engine._context
        if prompt_tokens >= context:
            raise EngineError(
                f"This model's maximum context length is {context} tokens. However, your "
                f"messages resulted in {prompt_tokens} tokens.",
                status=400, code="context_length_exceeded",
            )  # fmt: skip
        self.usage = Usage(prompt_tokens=prompt_tokens)
        max_tokens = min(request.max_tokens or context, context - prompt_tokens)
        sampler = _sampler(ox, request, engine)
        config = ox.GenerationConfig(max_tokens=max_tokens, sampler=sampler,
                                     stop=list(request.stop) or None)  # fmt: skip
        # A forced call is sent whole at the end; with tools the model may call, text goes out
        # as it comes unless it may be a call (CallWatch), which waits for the end.
        holding = guidance is not None and guidance.call
        tools = bool(request.tools) and request.tool_choice not in (None, "none")
        watch = self._watch = CallWatch() if tools and guidance is None else None

        def on_piece(piece: str) -> None:
            # Wake the loop only when it is not looking for pieces already (see _wake).
            if watch is not None:
                piece = watch.feed(piece)
                if not piece:
                    return
            with self._lock:
                self._pieces.append(piece)
                if holding or self._woken:
                    return
                self._woken = True
            loop.call_soon_threadsafe(self._wake)

        self._held_call = holding
        if guidance is not None:
            return self._decode(worker, prompt, guidance, max_tokens, on_piece, prompt_tokens)
        try:
            return engine.generate_detailed(prompt, config, on_piece, cancel_token=token)
        except RuntimeError as exc:
            if "cancelled" in str(exc):
                return None
            raise

    def _decode(
        self,
        worker: _Worker,
        prompt: str,
        guidance: Guidance,
        max_tokens: int,
        on_piece: Callable[[str], None],
        prompt_tokens: int,
    ) -> Outcome | None:
        request, token = self._request, self._token
        temperature = 1.0 if request.temperature is None else request.temperature
        seed = _seed(request)
        top_p = 1.0 if request.top_p is None else request.top_p
        sampling = Sampling(temperature, top_p, seed)
        outcome = decode(worker.engine, worker.table, prompt, guidance.guide, sampling,
                         max_tokens=max_tokens, eog=frozenset(worker.engine.eog_token_ids()),
                         cancelled=token.is_cancelled, emit=on_piece,
                         prompt_tokens=prompt_tokens)  # fmt: skip
        return None if outcome.finish_reason == "cancelled" else outcome

    def _finish(self, outcome: Any) -> None:
        """Back on the loop: the outcome (or the error) of the generation."""
        if isinstance(outcome, BaseException):
            self._error = outcome
            self.finish_reason = None
        elif outcome is None:
            self.finish_reason = "cancelled"
        else:
            self._take(outcome)
        self._done = True
        if self._timer is not None:
            self._timer.cancel()
        self._poll()

    def _take(self, outcome: Any) -> None:
        request = self._request
        self.usage = Usage(int(outcome.prompt_tokens), int(outcome.completion_tokens()))
        reason = _FINISH.get(str(outcome.finish_reason).lower(), "stop")
        calls: list[ToolCall] = []
        if self._held_call:  # nothing of it went out: the text (if any) and the call, whole
            text, calls = self._engine.parse_tools(outcome.text, request)
            with self._lock:
                self._pieces = [text] if text else []
        elif self._watch is not None:  # what went out stays; the rest, without the calls
            tail, calls = rest_to_send(outcome.text, self._watch.released, request.tools)
            with self._lock:
                self._pieces += [tail] if tail else []
        self.tool_calls = calls
        self.finish_reason = "tool_calls" if calls else reason


def _sampler(ox: ModuleType, request: GenerationRequest, engine: Any) -> Any:
    temperature = 1.0 if request.temperature is None else request.temperature
    penalties = (request.frequency_penalty, request.presence_penalty, request.repetition_penalty)
    if temperature == 0 and not any(p not in (None, 0.0, 1.0) for p in penalties):
        return ox.SamplerConfig.greedy()
    kwargs: dict[str, Any] = {
        "temperature": temperature,
        "top_k": 0 if temperature else 1,  # 0: no top-k cut (OpenAI has none); 1: greedy
        "top_p": 1.0 if request.top_p is None else request.top_p,
        "repetition_penalty": request.repetition_penalty or 1.0,
        "frequency_penalty": request.frequency_penalty,
        "presence_penalty": request.presence_penalty,
        "eog_token_ids": list(engine.eog_token_ids()),
    }
    seed = _seed(request)
    if seed is not None:
        kwargs["seed"] = seed
    return ox.SamplerConfig(**kwargs)


def _seed(request: GenerationRequest) -> int | None:
    """The request's seed for this choice: the n choices of one seeded request differ, and
    the same request with the same seed gives the same n choices again."""
    if request.seed is None:
        return None
    return (request.seed + request.choice_index) & 0xFFFF_FFFF_FFFF_FFFF
