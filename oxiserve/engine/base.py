"""The Engine protocol: what the API layer needs from any inference engine.

An engine knows no HTTP and no OpenAI wire shapes.  It turns a prompt into a
stream of text pieces (one per token) and inputs into embedding vectors.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

FinishReason = Literal["stop", "length", "tool_calls", "cancelled"]


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """One model an engine serves."""

    id: str
    created: int
    owned_by: str = "oxiserve"


@dataclass(frozen=True, slots=True)
class ChatMessage:
    """One message of a conversation, content already flattened to text."""

    role: str
    content: str


def chatml(messages: Sequence[ChatMessage]) -> str:
    """ChatML rendering of a conversation, ending with the assistant's turn (the prompt an
    engine without a template of its own continues)."""
    turns = [f"<|im_start|>{m.role}\n{m.content}<|im_end|>\n" for m in messages]
    return "".join(turns) + "<|im_start|>assistant\n"


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """A function the model may call (name, description, JSON schema of the arguments)."""

    name: str
    description: str = ""
    parameters: Mapping[str, Any] = field(default_factory=dict)


ResponseFormatKind = Literal["text", "json_object", "json_schema"]


@dataclass(frozen=True, slots=True)
class ResponseFormat:
    """The form an answer must take (OpenAI's ``response_format``, validated by the API layer).

    ``kind`` is what the client asked for: "json_object" (a JSON object) or "json_schema"
    (an instance of ``schema``; ``strict`` means every property present and no other, and
    the API layer has checked the schema allows exactly that).  ``from_prompt`` marks a
    ``schema`` the client did not send as a parameter but wrote into the conversation's
    instructions, as instructor's JSON modes and pydantic-ai's PromptedOutput do; then
    ``kind`` may also be "text".  An engine that constrains generation does so for the
    json kinds only: a "text" answer stays free text for a real model.
    """

    kind: ResponseFormatKind
    schema: Mapping[str, Any] | None = None
    name: str = ""
    strict: bool = False
    from_prompt: bool = False


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """Everything an engine needs to produce one completion (one choice).

    ``prompt`` is the text the engine continues; for chat requests it is the
    rendered conversation and ``messages`` carries the structured form (the
    simulator's echo mode answers with the last user message).  ``max_tokens``
    None means "engine default".  ``stop`` handling is the API layer's job
    (it must also catch stop strings split across tokens); engines may stop
    early on them as an optimisation.  ``headers`` carries request metadata
    an engine may honour (the simulator's ``x-sim-error``).

    The n choices of one API request differ only in ``choice_index``; what is
    proportional to the request's size is computed once for all of them:
    ``digest`` is :func:`request_digest` of the request (empty: not computed,
    the engine computes it) and ``prompt_tokens`` the prompt's token count by
    the engine's ``count_tokens`` (None: not counted yet).
    """

    model: str
    prompt: str
    messages: tuple[ChatMessage, ...] = ()
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()
    logprobs: bool = False
    top_logprobs: int = 0
    presence_penalty: float = 0.0  # OpenAI's: -2.0 to 2.0, 0 is none
    frequency_penalty: float = 0.0
    repetition_penalty: float | None = None  # vLLM's multiplicative one: None or 1.0 is none
    choice_index: int = 0
    tools: tuple[ToolSpec, ...] = ()
    tool_choice: str | None = None  # None, "none", "auto" or "required"
    forced_tool: str | None = None  # tool_choice naming one function: call exactly that one
    response_format: ResponseFormat | None = None  # None: free text
    headers: Mapping[str, str] = field(default_factory=dict)
    digest: bytes = b""
    prompt_tokens: int | None = None


def request_digest(
    seed: int | None, model: str, prompt: str, messages: Sequence[ChatMessage] = ()
) -> bytes:
    """A stable 16-byte hash of what makes two requests ask the same thing, whatever the
    choice (not ``hash()``: that is salted per process).  It reads the whole prompt, so it
    is computed once per API request (see ``GenerationRequest.digest``).  ``max_tokens`` is
    left out: as with a model, a lower limit cuts the same answer shorter.  Chat messages
    count by role and length only: their text is in the prompt already."""
    digest = hashlib.blake2b(digest_size=16)
    parts = [str(seed), model, prompt]
    parts += [f"{m.role}:{len(m.content)}" for m in messages]
    for part in parts:
        data = part.encode("utf-8", "surrogatepass")
        digest.update(b"%d:" % len(data))  # unambiguous
        digest.update(data)
    return digest.digest()


@dataclass(frozen=True, slots=True)
class TopLogprob:
    token: str
    logprob: float


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    """Log-probability of one produced token and its best alternatives."""

    token: str
    logprob: float
    top: tuple[TopLogprob, ...] = ()


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A tool call an engine decided to make (arguments as a JSON string)."""

    id: str
    name: str
    arguments: str


@dataclass(slots=True)
class Usage:
    """Token counts, filled in by the engine while it generates."""

    prompt_tokens: int = 0
    completion_tokens: int = 0


class EngineError(Exception):
    """An engine failed to serve a request.

    ``status`` is the HTTP status the API layer should answer with (429 and
    503 are retryable and may carry ``retry_after`` seconds).
    """

    def __init__(
        self,
        message: str,
        *,
        status: int = 500,
        code: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.retry_after = retry_after


class EngineAbort(EngineError):
    """The generation ends by dropping the client's connection (the simulator's ``abort``):
    an attached chat or completion resets it; a run or a response fails with this error."""

    def __init__(self, message: str) -> None:
        super().__init__(message, status=500, code="connection_reset")


class TokenStream(Protocol):
    """The result of :meth:`Engine.generate`: an async iterator of text pieces.

    Each item is the text of one token.  While iterating, ``usage`` is kept
    current; after exhaustion ``finish_reason`` is set and ``tool_calls`` holds
    any tool calls the engine made (then ``finish_reason == "tool_calls"``).
    When ``request.logprobs`` is set, ``logprobs`` gets one entry per token,
    appended before the token is yielded.  ``aclose()`` cancels generation at
    once: no token is produced after it returns.
    """

    usage: Usage
    finish_reason: FinishReason | None
    tool_calls: list[ToolCall]
    logprobs: list[TokenLogprob]

    def __aiter__(self) -> AsyncIterator[str]: ...

    def __anext__(self) -> Any: ...

    def text(self) -> Awaitable[str]:
        """The rest of the generation's text: what iterating to the end would join, with the
        same ``usage``, ``finish_reason``, ``tool_calls``, ``logprobs`` and errors when it
        returns (an engine may get there faster than token by token)."""
        ...

    def pipe(self, emit: Callable[[str], None]) -> Awaitable[None]:
        """Call ``emit`` with every remaining piece, in order, and return when the stream
        ends, with the outcome and errors iterating would give.  A batching engine calls
        the emits of all its streams from one place instead of waking a task per piece
        (``emit`` must not block; it may close this or any stream)."""
        ...

    async def aclose(self) -> None: ...


class Engine(Protocol):
    """What every engine provides."""

    name: str

    def models(self) -> Sequence[ModelInfo]: ...

    def generate(self, request: GenerationRequest) -> TokenStream:
        """Start a generation.  Errors before the first token are raised from the
        first ``__anext__``; errors later from the ``__anext__`` that hits them."""
        ...

    def count_tokens(self, text: str) -> int: ...

    async def embed(
        self,
        model: str,
        inputs: Sequence[str],
        dimensions: int | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> list[list[float]]:
        """One vector per input; ``headers`` as in GenerationRequest.headers."""
        ...

    async def close(self) -> None: ...
