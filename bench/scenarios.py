"""The request kinds the load generator can send, and how each response is measured.

A scenario turns a request index into pre-built request bytes and reads the response on a
connection, filling in a :class:`RequestResult`.  Streaming scenarios count one token per
content-bearing chunk (or take the server's usage figure when it sends one), and time every
token on arrival.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from time import perf_counter
from typing import Any, ClassVar
from urllib.parse import urlsplit

import orjson

from bench.client import (
    HTTPConnection,
    ProtocolError,
    ResponseHead,
    SSESplitter,
    build_request,
    parse_frame,
)
from bench.stats import RequestResult

_LOREM = (
    "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor incididunt ut "
    "labore et dolore magna aliqua enim ad minim veniam quis nostrud exercitation ullamco"
)
WORDS = tuple(_LOREM.split())


class NotAvailable(Exception):
    """The server does not implement an endpoint a scenario needs (404 or 405)."""

    def __init__(self, method: str, path: str, status: int) -> None:
        super().__init__(f"endpoint not available ({status}): {method} {path}")
        self.status = status


class BadResponse(Exception):
    """A response with the right status but a body the scenario cannot use."""


@dataclass(frozen=True, slots=True)
class Target:
    """Where requests go: ``http://host:port`` plus an optional path prefix."""

    host: str
    port: int
    prefix: str = ""

    @classmethod
    def parse(cls, url: str) -> Target:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"only http://host:port URLs are supported, got {url!r}")
        prefix = parts.path.rstrip("/")
        if prefix.endswith("/v1"):  # OpenAI-style base URLs name /v1; our paths include it
            prefix = prefix[:-3]
        return cls(parts.hostname, parts.port or 80, prefix)

    @property
    def authority(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.authority}{self.prefix}"


@dataclass(frozen=True, slots=True)
class Workload:
    """What every request of a run asks for."""

    model: str = "oxiserve-sim"
    prompt_tokens: int = 32
    max_tokens: int = 16
    include_usage: bool = True
    seed: int = 0
    api_key: str | None = None
    sim_error: int | None = None  # send ``x-sim-error: <status>`` ...
    sim_error_every: int = 1  # ... on every n-th request (index 0, n, 2n, ...)
    subscribers: int = 4  # fanout: re-attached readers per run

    def prompt(self) -> str:
        rng = random.Random(self.seed)
        return " ".join(rng.choice(WORDS) for _ in range(self.prompt_tokens))

    def injects_error(self, index: int) -> bool:
        return self.sim_error is not None and index % max(1, self.sim_error_every) == 0


def error_kind(exc: BaseException) -> str | None:
    """The error kind a failed request is counted under (None: not a request failure)."""
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, ProtocolError):
        return "protocol"
    if isinstance(exc, BadResponse | ValueError | LookupError | TypeError):
        return "bad_response"
    if isinstance(exc, OSError | EOFError):  # ConnectionError is an OSError
        return "connection"
    return None


async def record_failure(exc: Exception, result: RequestResult, conn: HTTPConnection) -> None:
    """Count ``exc`` as the request's error and drop the connection; re-raise anything that is
    not a request failure (a bug in the tool, not the server's doing)."""
    kind = error_kind(exc)
    if kind is None:
        raise exc
    result.error = kind
    await conn.close()


class Scenario:
    """One kind of request.  Subclasses say what to send and how to read the answer."""

    name: ClassVar[str]
    description: ClassVar[str]
    streams: ClassVar[bool] = False
    # (method, path) of an API peers may lack: a 404/405 there ends the run as "not
    # available" instead of being counted as an error.
    optional_api: ClassVar[tuple[str, str] | None] = None

    def __init__(self, target: Target, workload: Workload) -> None:
        self.target = target
        self.workload = workload
        self._plain: bytes | None = None
        self._failing: bytes | None = None

    # -- request bytes ---------------------------------------------------------------
    def headers(self) -> list[tuple[str, str]]:
        headers = [("accept", "text/event-stream" if self.streams else "application/json")]
        if self.workload.api_key:
            headers.append(("authorization", f"Bearer {self.workload.api_key}"))
        return headers

    def request(self, method: str, path: str, body: Any = None, *, fail: bool = False) -> bytes:
        data = b"" if body is None else orjson.dumps(body)
        headers = self.headers()
        if data:
            headers.append(("content-type", "application/json"))
        if fail:
            headers.append(("x-sim-error", str(self.workload.sim_error)))
        return build_request(
            method, self.target.prefix + path, self.target.authority, data, headers
        )

    def request_for(self, index: int) -> bytes:
        """The bytes of request ``index`` (built once per variant)."""
        if self.workload.injects_error(index):
            if self._failing is None:
                self._failing = self.build(fail=True)
            return self._failing
        if self._plain is None:
            self._plain = self.build(fail=False)
        return self._plain

    def build(self, *, fail: bool) -> bytes:
        raise NotImplementedError

    # -- running ---------------------------------------------------------------------
    async def setup(self, conn: HTTPConnection) -> None:
        """Prepare server-side state once before the measured load (default: nothing)."""

    async def close(self) -> None:
        """Release what :meth:`setup` acquired (default: nothing)."""

    async def execute(
        self, conn: HTTPConnection, result: RequestResult, index: int
    ) -> list[RequestResult]:
        """Send request ``index`` and measure it into ``result``; return any extra results."""
        conn.send(self.request_for(index))
        head = await conn.read_head()
        result.ttfb = perf_counter() - result.start
        result.status = head.status
        if head.status >= 400:
            await conn.read_body(head)
            if self.optional_api is not None and head.status in (404, 405):
                raise NotAvailable(*self.optional_api, head.status)
            result.error = f"status:{head.status}"
        else:
            await self.consume(conn, head, result)
        result.end = perf_counter()
        return []

    async def consume(
        self, conn: HTTPConnection, head: ResponseHead, result: RequestResult
    ) -> None:
        """Read a successful response's body into ``result``."""
        raise NotImplementedError


class JSONScenario(Scenario):
    """A request answered with one JSON body."""

    async def consume(
        self, conn: HTTPConnection, head: ResponseHead, result: RequestResult
    ) -> None:
        body = await conn.read_body(head)
        try:
            result.tokens = self.tokens_of(orjson.loads(body))
        except (orjson.JSONDecodeError, LookupError, TypeError, AttributeError) as exc:
            raise BadResponse(f"{self.name}: unexpected body {body[:80]!r}") from exc

    def tokens_of(self, obj: Any) -> int:
        usage = obj.get("usage") or {}
        return int(usage.get("completion_tokens", 0))


class Health(Scenario):
    """``GET /health``: any 2xx counts (some servers answer with an empty body)."""

    name = "health"
    description = "GET /health"

    def build(self, *, fail: bool) -> bytes:
        return self.request("GET", "/health", fail=fail)

    async def consume(
        self, conn: HTTPConnection, head: ResponseHead, result: RequestResult
    ) -> None:
        await conn.read_body(head)


def _messages(workload: Workload) -> list[dict[str, str]]:
    return [{"role": "user", "content": workload.prompt()}]


class Chat(JSONScenario):
    name = "chat"
    description = "POST /v1/chat/completions, stream false"

    def build(self, *, fail: bool) -> bytes:
        w = self.workload
        body = {
            "model": w.model,
            "messages": _messages(w),
            "max_tokens": w.max_tokens,
            "seed": w.seed,
        }
        return self.request("POST", "/v1/chat/completions", body, fail=fail)

    def tokens_of(self, obj: Any) -> int:
        if "message" not in obj["choices"][0]:
            raise BadResponse("a chat completion without a message")
        return super().tokens_of(obj)


class Completions(JSONScenario):
    name = "completions"
    description = "POST /v1/completions, stream false"

    def build(self, *, fail: bool) -> bytes:
        w = self.workload
        body = {"model": w.model, "prompt": w.prompt(), "max_tokens": w.max_tokens, "seed": w.seed}
        return self.request("POST", "/v1/completions", body, fail=fail)

    def tokens_of(self, obj: Any) -> int:
        if "text" not in obj["choices"][0]:
            raise BadResponse("a completion without text")
        return super().tokens_of(obj)


class Embeddings(JSONScenario):
    name = "embeddings"
    description = "POST /v1/embeddings, one input"

    def build(self, *, fail: bool) -> bytes:
        body = {"model": self.workload.model, "input": self.workload.prompt()}
        return self.request("POST", "/v1/embeddings", body, fail=fail)

    def tokens_of(self, obj: Any) -> int:
        if not obj["data"][0]["embedding"]:
            raise BadResponse("empty embedding")
        return 0


class SSEScenario(Scenario):
    """A streamed response of ``data: {json}`` chunks ending with ``data: [DONE]``.

    Most chunks are classified without parsing: in compact JSON the bytes ``"content":"``
    (``text_key``) can only be the key itself, and the character after it says whether the
    token text is empty.  Chunks that may carry usage or an error, or are not compact, are
    parsed in full.
    """

    streams = True
    text_key: ClassVar[bytes]

    def text_of(self, choice: dict[str, Any]) -> Any:
        """The token text a parsed choice carries (empty or None: no token)."""
        raise NotImplementedError

    def classify(self, payload: bytes) -> tuple[int, int | None]:
        """Parse one chunk: (1 token / 0 none / -1 error, usage.completion_tokens or None)."""
        obj = orjson.loads(payload)
        usage = obj.get("usage")
        tokens = usage.get("completion_tokens") if usage else None
        choices = obj.get("choices")
        if choices:
            return (1 if self.text_of(choices[0]) else 0), tokens
        return (-1 if "error" in obj else 0), tokens

    async def consume(
        self, conn: HTTPConnection, head: ResponseHead, result: RequestResult
    ) -> None:
        key = self.text_key
        after_key = len(key)
        splitter = SSESplitter()
        start = result.start
        itl = result.itl
        last = 0.0
        chunks = events = 0
        usage: int | None = None
        done = False
        async for block in conn.iter_body(head):
            now = perf_counter()
            for frame in splitter.feed(block):
                if frame.startswith(b"data: ") and b"\n" not in frame:
                    payload = frame[6:]
                else:
                    event = parse_frame(frame)
                    if event is None:
                        continue
                    payload = event.data
                if payload == b"[DONE]":
                    done = True
                    continue
                events += 1
                at = payload.find(key)
                if at >= 0 and b'"usage"' not in payload and b'"error"' not in payload:
                    kind = 1 if payload[at + after_key] != 34 else 0  # 34: '"', empty text
                else:
                    kind, reported = self.classify(payload)
                    if reported is not None:
                        usage = reported
                if kind > 0:
                    if chunks:
                        itl.append(now - last)
                    else:
                        result.ttft = now - start
                    last = now
                    chunks += 1
                elif kind < 0:
                    result.error = "stream_error"
        result.events = events
        result.tokens = chunks if usage is None else usage
        if result.error is None and (not done or splitter.pending):
            result.error = "stream_incomplete"


class ChatStream(SSEScenario):
    name = "chat-stream"
    description = "POST /v1/chat/completions, stream true"
    text_key = b'"content":"'

    def text_of(self, choice: dict[str, Any]) -> Any:
        delta = choice.get("delta")
        return delta.get("content") if delta else None

    def build(self, *, fail: bool) -> bytes:
        w = self.workload
        body: dict[str, Any] = {
            "model": w.model,
            "messages": _messages(w),
            "max_tokens": w.max_tokens,
            "seed": w.seed,
            "stream": True,
        }
        if w.include_usage:
            body["stream_options"] = {"include_usage": True}
        return self.request("POST", "/v1/chat/completions", body, fail=fail)


class CompletionsStream(SSEScenario):
    name = "completions-stream"
    description = "POST /v1/completions, stream true"
    text_key = b'"text":"'

    def text_of(self, choice: dict[str, Any]) -> Any:
        return choice.get("text")

    def build(self, *, fail: bool) -> bytes:
        w = self.workload
        body: dict[str, Any] = {
            "model": w.model,
            "prompt": w.prompt(),
            "max_tokens": w.max_tokens,
            "seed": w.seed,
            "stream": True,
        }
        if w.include_usage:
            body["stream_options"] = {"include_usage": True}
        return self.request("POST", "/v1/completions", body, fail=fail)


async def discover_model(target: Target, default: str, timeout: float = 5.0) -> str:
    """The first model id ``GET /v1/models`` lists, or ``default`` if that fails."""
    conn = HTTPConnection(target.host, target.port)
    try:
        async with asyncio.timeout(timeout):
            await conn.connect()
            conn.send(build_request("GET", target.prefix + "/v1/models", target.authority))
            head = await conn.read_head()
            body = await conn.read_body(head)
        if head.status == 200:
            return str(orjson.loads(body)["data"][0]["id"])
    except (OSError, TimeoutError, ValueError, LookupError, TypeError):
        pass
    finally:
        await conn.close()
    return default
