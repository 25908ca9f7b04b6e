"""How one simulated generation will go, decided when it is created: text or JSON, length,
finish reason, tool call, failure and first-token time, all from the request's seed.

The seed is a 32-byte key (a hash of the request, the simulator's seed and the choice).
The rolls every plan makes and the lorem text come straight from it (:class:`KeyedBytes`);
a seeded ``Random``, ~7 µs to set up, is made only for requests with tools or a response
format, whose sampling needs one.

:class:`~oxiserve.engine.sim.SimStream` plays a :class:`Plan` back.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from random import Random
from typing import Any

from oxiserve.config import Config
from oxiserve.engine import sim_json, sim_text
from oxiserve.engine.base import (
    EngineAbort,
    EngineError,
    FinishReason,
    GenerationRequest,
    ResponseFormat,
    ToolSpec,
    request_digest,
)

_NO_FAILURE = -1
# json_object with no schema to follow: any object will do; this one reads like an answer.
_ANY_OBJECT: Mapping[str, Any] = {
    "type": "object",
    "properties": {"answer": {"type": "string"}},
    "required": ["answer"],
    "additionalProperties": False,
}
_Answer = tuple[list[str] | None, int, bool]  # pieces (None: lorem), count, complete


@dataclass(frozen=True, slots=True)
class Failure:
    """What the plan says a generation runs into after ``Plan.fail_at`` tokens: an error
    (an HTTP error before the first token, an error event after it), ``abort`` (the
    connection is reset) or ``stall`` (nothing for ``--sim-stall-ms``, then the rest)."""

    message: str
    status: int = 500
    code: str = "engine_error"
    retry_after: float | None = None
    action: str = "error"  # "error", "abort" or "stall"
    midway: bool = False  # by rate, it happens halfway through the answer (else before it)

    def error(self) -> EngineError:
        if self.action == "abort":
            return EngineAbort(self.message)
        return EngineError(
            self.message, status=self.status, code=self.code, retry_after=self.retry_after
        )


# The failure types, each as OpenAI answers it (status, code; Retry-After where it sends one).
_KIND_FAILURES = {
    "rate_limit": Failure("Rate limit reached for requests (simulated).", 429,
                          "rate_limit_exceeded", 1.0),
    "invalid_api_key": Failure("Incorrect API key provided (simulated).", 401, "invalid_api_key"),
    "context_length": Failure("This model's maximum context length was exceeded by this "
                              "request (simulated).", 400, "context_length_exceeded"),
    "server_error": Failure("The server had an error while processing your request "
                            "(simulated).", 500, "server_error"),
    "overloaded": Failure("The engine is currently overloaded, please try again later "
                          "(simulated).", 503, "engine_overloaded", 1.0),
    "model_not_found": Failure("The model does not exist or you do not have access to it "
                               "(simulated).", 404, "model_not_found"),
    "mid_stream": Failure("The server had an error while generating (simulated).", 500,
                          "server_error", midway=True),
    "abort": Failure("The connection was reset (simulated).", action="abort", midway=True),
    "stall": Failure("The generation stalled (simulated).", action="stall", midway=True),
}  # fmt: skip
_STATUS_CODES = {429: "rate_limit_exceeded", 503: "engine_overloaded"}


class KeyedBytes:
    """Seeded random bytes, as many as asked each time: SHAKE-256 of a key and a counter."""

    __slots__ = ("_calls", "_key")

    def __init__(self, key: bytes) -> None:
        self._key = key
        self._calls = 0

    def randbytes(self, n: int) -> bytes:
        self._calls += 1
        return hashlib.shake_256(b"%d:%s" % (self._calls, self._key)).digest(n)


@dataclass(frozen=True, slots=True)
class Plan:
    """What one generation will do; ``fail_at`` tokens are produced before ``failure``."""

    rng: Random | None  # None when nothing in the request needs one (see the module doc)
    lorem: KeyedBytes
    seed: int
    count: int  # text tokens to produce
    reason: FinishReason  # finish reason once they are produced
    pieces: list[str] | None  # echo/fixed text or JSON; None means lorem
    tool: ToolSpec | None
    fail_at: int
    failure: Failure | None
    ttft: float  # seconds


def _request_key(config: Config, request: GenerationRequest) -> bytes:
    """The request's digest (computed once for all its choices) mixed with the simulator's
    seed and the choice index: n choices differ, the same request repeats exactly."""
    digest = request.digest or request_digest(
        request.seed, request.model, request.prompt, request.messages
    )
    material = b"%d:%d:" % (config.sim_seed, request.choice_index) + digest
    return hashlib.blake2b(material, digest_size=32).digest()


def _roll(key: bytes, at: int) -> float:
    """A number in [0, 1) from 5 bytes of the key."""
    return int.from_bytes(key[at : at + 5], "little") / 2**40


def header_failure(headers: Mapping[str, str], count: int) -> tuple[Failure, int] | None:
    """The failure ``x-sim-error: <status or type>`` (and ``x-sim-error-at: <n>``, after how
    many tokens; for a type that happens midway, halfway by default) ask for."""
    status_text, at_text = headers.get("x-sim-error"), headers.get("x-sim-error-at")
    if status_text is None and at_text is None:
        return None
    kind = _KIND_FAILURES.get((status_text or "").strip().lower())
    if kind is not None:
        at = _midway(count) if kind.midway else 0
        if at_text is not None:
            at = min(_header_int("x-sim-error-at", at_text), count)
        return kind, at
    status = 500 if status_text is None else _header_int("x-sim-error", status_text)
    if not 400 <= status <= 599:
        raise ValueError(f"x-sim-error must be an HTTP status in 400..599, got {status_text!r}")
    at = 0 if at_text is None else min(_header_int("x-sim-error-at", at_text), count)
    retry_after = 1.0 if status in (429, 503) else None
    code = _STATUS_CODES.get(status, "engine_error")
    return Failure(f"simulated error {status} (x-sim-error)", status, code, retry_after), at


def spread(mean: float, jitter: float, dist: str, rng: Random | float) -> float:
    """A latency around ``mean`` (ms): uniform adds 0..``jitter`` (``rng`` may be a number in
    [0, 1) for it); normal and lognormal have ``jitter`` as standard deviation, never below 0
    (lognormal: with mean ``mean``)."""
    if jitter <= 0:
        return mean
    if dist == "uniform":
        return mean + (rng if isinstance(rng, float) else rng.random()) * jitter
    assert isinstance(rng, Random)
    if dist == "normal":
        return max(0.0, rng.gauss(mean, jitter))
    if mean <= 0:
        return 0.0
    sigma2 = math.log1p((jitter / mean) ** 2)
    return rng.lognormvariate(math.log(mean) - sigma2 / 2, math.sqrt(sigma2))


def _context_failure(config: Config, request: GenerationRequest) -> Failure | None:
    """400 ``context_length_exceeded`` when the prompt and the tokens asked for do not fit
    ``--sim-max-model-len`` (OpenAI's message)."""
    limit = config.sim_max_model_len
    if not limit:
        return None
    prompt = request.prompt_tokens
    if prompt is None:
        prompt = sim_text.count_tokens(request.prompt)
    completion = request.max_tokens or 1
    if prompt + completion <= limit:
        return None
    return Failure(
        f"This model's maximum context length is {limit} tokens. However, you requested "
        f"{prompt + completion} tokens ({prompt} in the messages, {completion} in the "
        f"completion). Please reduce the length of the messages or completion.",
        400, "context_length_exceeded",
    )  # fmt: skip


def _header_int(name: str, text: str) -> int:
    digits = text.strip()
    if not (digits.isascii() and digits.isdigit()) or len(digits) > 9:
        kinds = ", ".join(_KIND_FAILURES) if name == "x-sim-error" else ""
        also = f" or one of {kinds}" if kinds else ""
        raise ValueError(f"{name} must be a non-negative integer{also}, got {text[:20]!r}")
    return int(digits)


def _midway(count: int) -> int:
    return min(max(1, count // 2), count)


def _rate_failure(
    config: Config, request: GenerationRequest, roll: float, count: int
) -> tuple[Failure, int]:
    """The failure of a request the rate picked (``roll`` < the rate): one of the types,
    chosen by where the roll fell (so each type gets its share, deterministically)."""
    kinds = config.sim_failure_types
    kind = kinds[min(len(kinds) - 1, int(roll / config.sim_failure_rate * len(kinds)))]
    failure = _KIND_FAILURES[kind]
    if kind == "model_not_found":
        message = f"The model `{request.model}` does not exist or you do not have access to it."
        failure = replace(failure, message=message[:-1] + " (simulated).")
    return failure, _midway(count) if failure.midway else 0


def _pick_tool(request: GenerationRequest, roll: float, rng: Random | None) -> ToolSpec | None:
    """The tool the request makes the simulator call, if any (``rng``: there are tools)."""
    choice = request.tool_choice
    if request.tools and request.forced_tool is not None:
        for tool in request.tools:
            if tool.name == request.forced_tool:
                return tool
        raise LookupError(f"tool_choice names {request.forced_tool!r}, not one of the tools")
    if not request.tools or choice in (None, "none"):
        return None
    if choice == "auto" and (roll >= 0.5 or _answers_a_tool(request)):
        return None  # a tool's result is answered in words, as a model does: agent loops end
    assert rng is not None
    return rng.choice(request.tools)


def _answers_a_tool(request: GenerationRequest) -> bool:
    return bool(request.messages) and request.messages[-1].role in ("tool", "function")


def _answer(config: Config, request: GenerationRequest, rng: Random | None) -> _Answer:
    """What to say: an instance of the response format's schema when the request asks for
    structured output (whatever the mode), else the mode's text.

    The answer's own length is the simulator's choice (the text or JSON, ``sim_output_len``,
    or ``sim_default_max_tokens`` of lorem when the client sets no limit): reaching it is a
    complete answer, "stop".  Only the client's ``max_tokens`` or the server's
    ``max_tokens_limit`` cut an answer short ("length").  Lorem without a length of its own
    fills the client's limit, so load tests set output length per request.
    """
    hard = config.max_tokens_limit if request.max_tokens is None else request.max_tokens
    pieces = _json_pieces(request.response_format, rng, hard)
    if pieces is not None:  # sim_output_len does not cut JSON: a client could not parse it
        return _cut(pieces, hard)
    cap = config.sim_output_len or None
    if config.sim_mode == "lorem":
        default = config.sim_default_max_tokens
        natural = cap if request.max_tokens is not None else min(default, cap or default)
        if natural is None or natural > hard:
            return None, max(0, hard), False
        return None, natural, True
    if config.sim_mode == "fixed":
        text = config.sim_fixed_text
    else:
        users = [m.content for m in request.messages if m.role == "user"]
        text = users[-1] if users else request.prompt
    pieces = leading_pieces(text, hard if cap is None else min(cap, hard))
    return _cut(pieces[:cap] if cap is not None else pieces, hard)


def leading_pieces(text: str, wanted: int) -> list[str]:
    """The first ``wanted`` + 1 pieces of ``text`` (enough to tell that it is longer than
    ``wanted``), or all of them: echoing the start of a 10 MB prompt splits only its start."""
    window = (wanted + 4) * 16
    if len(text) > window:
        # Cutting the text can change only the last pieces of the window (a word or a run
        # of spaces cut in two): those are not used.
        pieces = sim_text.split_pieces(text[:window])
        if len(pieces) > wanted + 3:
            return pieces[: wanted + 1]
    return sim_text.split_pieces(text)


def _cut(pieces: list[str], hard: int) -> _Answer:
    if len(pieces) > hard:
        return pieces, max(0, hard), False
    return pieces, len(pieces), True


class _FormatError(ValueError):
    """The client's response_format schema has no instance the simulator can make."""


def _json_pieces(fmt: ResponseFormat | None, rng: Random | None, hard: int) -> list[str] | None:
    """The JSON answer ``fmt`` asks for, as tokens; None: answer free text.

    A schema found in the prompt is only a hint: when it has no instance the answer is
    what the kind allows (any object, or free text).  The client's own schema must work.
    """
    if fmt is None or (fmt.kind == "text" and fmt.schema is None):
        return None
    assert rng is not None  # made for every request with a response format
    try:
        value = sim_json.sample_json(_ANY_OBJECT if fmt.schema is None else fmt.schema, rng)
        if fmt.kind == "json_object" and not isinstance(value, dict):
            raise ValueError("the schema's instances are not JSON objects")
        text = sim_json.checked_size(json.dumps(value, ensure_ascii=False, allow_nan=False))
    except (ValueError, TypeError, ArithmeticError, RecursionError) as exc:
        if not fmt.from_prompt:
            raise _FormatError(
                f"The simulator cannot generate an instance of the schema of response_format "
                f"'{fmt.name}': {exc}"
            ) from None
        if fmt.kind == "text":
            return None
        text = json.dumps(sim_json.sample_json(_ANY_OBJECT, rng))
    return leading_pieces(text, hard)


def make_plan(config: Config, request: GenerationRequest) -> Plan:
    key = _request_key(config, request)
    seed = int.from_bytes(key[:16], "little")
    # Each from its own bytes of the key, so turning a knob changes nothing else.
    fail_roll, tool_roll, ttft_roll = _roll(key, 16), _roll(key, 21), _roll(key, 26)
    wants_rng = request.tools or request.response_format is not None
    rng = Random(seed) if wants_rng else None
    failure: Failure | None = None
    fail_at = _NO_FAILURE
    pieces, count, complete = None, 0, True
    try:
        tool = _pick_tool(request, tool_roll, rng)
        if tool is None:
            pieces, count, complete = _answer(config, request, rng)
    except LookupError as exc:
        tool, failure, fail_at = None, Failure(str(exc), 400, "invalid_tool_choice"), 0
    except _FormatError as exc:
        failure, fail_at = Failure(str(exc), 400, "invalid_response_format"), 0
    reason: FinishReason = "tool_calls" if tool else "stop" if complete else "length"
    if failure is None:
        failure = _context_failure(config, request)
        fail_at = 0 if failure is not None else fail_at
    if failure is None:
        try:
            forced = header_failure(request.headers, count) if request.headers else None
        except ValueError as exc:
            forced = Failure(str(exc), 400, "invalid_sim_header"), 0
        if forced is not None:
            failure, fail_at = forced
        elif fail_roll < config.sim_failure_rate:
            failure, fail_at = _rate_failure(config, request, fail_roll, count)
    dist = config.sim_latency_dist
    draw = ttft_roll if dist == "uniform" else Random(seed + 3)
    ttft = spread(config.sim_ttft_ms, config.sim_ttft_jitter_ms, dist, draw)
    if config.sim_prefill_ms_per_token or config.sim_prefill_overhead_ms:
        prompt = request.prompt_tokens
        if prompt is None:
            prompt = sim_text.count_tokens(request.prompt)
        ttft += config.sim_prefill_overhead_ms + prompt * config.sim_prefill_ms_per_token
    ttft /= 1000.0
    return Plan(rng, KeyedBytes(key), seed, count, reason, pieces, tool, fail_at, failure, ttft)
