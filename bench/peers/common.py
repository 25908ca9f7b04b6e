"""What every peer server shares, so they differ only in their HTTP stack.

The same token source (one event-loop iteration per token, or none with ``--burst``), the
same chunk bytes (each chunk dict serialised whole with orjson, as OpenAI-style servers
commonly do), the same non-stream body, the same command line and ready line.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import orjson

_LOREM = (
    "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor "
    "incididunt ut labore et dolore magna aliqua"
)
WORDS = tuple(f"{w} " for w in _LOREM.split())
HEALTH_BODY = b'{"status":"ok"}'
DEFAULT_MAX_TOKENS = 16
LOOPS = ("asyncio", "uvloop")
LoopFactory = Callable[[], asyncio.AbstractEventLoop]


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """The fields of a chat completion request a peer honours."""

    model: str
    max_tokens: int
    stream: bool
    include_usage: bool
    prompt_tokens: int

    @classmethod
    def parse(cls, body: bytes) -> ChatRequest:
        obj: dict[str, Any] = orjson.loads(body)
        messages = obj.get("messages") or []
        prompt = sum(len(str(m.get("content", "")).split()) for m in messages)
        options = obj.get("stream_options") or {}
        return cls(
            model=str(obj.get("model", "peer")),
            max_tokens=int(obj.get("max_tokens") or DEFAULT_MAX_TOKENS),
            stream=bool(obj.get("stream")),
            include_usage=bool(options.get("include_usage")),
            prompt_tokens=prompt,
        )


async def tokens(count: int, burst: bool) -> AsyncIterator[str]:
    """The zero-latency token source: one loop iteration per token unless ``burst``."""
    words = WORDS
    for i in range(count):
        if not burst:
            await asyncio.sleep(0)
        yield words[i % len(words)]


class _Completion:
    """Ids and the chunk encoder of one completion."""

    __slots__ = ("created", "id", "request")

    def __init__(self, request: ChatRequest) -> None:
        self.request = request
        self.id = "chatcmpl-" + secrets.token_hex(12)
        self.created = int(time.time())

    def chunk(self, delta: dict[str, str], finish_reason: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return orjson.dumps(
            {
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.request.model,
                "choices": [choice],
            }
        )

    def usage(self) -> dict[str, int]:
        p, c = self.request.prompt_tokens, self.request.max_tokens
        return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


async def chat_payloads(request: ChatRequest, burst: bool) -> AsyncIterator[bytes]:
    """The ``data:`` payloads of a streamed chat completion, ending with ``[DONE]``."""
    completion = _Completion(request)
    chunk = completion.chunk
    yield chunk({"role": "assistant", "content": ""})
    async for text in tokens(request.max_tokens, burst):
        yield chunk({"content": text})
    yield chunk({}, "length")
    if request.include_usage:
        yield orjson.dumps(
            {
                "id": completion.id,
                "object": "chat.completion.chunk",
                "created": completion.created,
                "model": request.model,
                "choices": [],
                "usage": completion.usage(),
            }
        )
    yield b"[DONE]"


async def sse_frames(request: ChatRequest, burst: bool) -> AsyncIterator[bytes]:
    """``chat_payloads`` framed as SSE events (``data: ...\\n\\n``)."""
    async for payload in chat_payloads(request, burst):
        yield b"data: " + payload + b"\n\n"


async def chat_completion(request: ChatRequest, burst: bool) -> bytes:
    """The JSON body of a non-stream chat completion (same token source)."""
    completion = _Completion(request)
    text = "".join([t async for t in tokens(request.max_tokens, burst)])
    message = {"role": "assistant", "content": text}
    return orjson.dumps(
        {
            "id": completion.id,
            "object": "chat.completion",
            "created": completion.created,
            "model": request.model,
            "choices": [
                {"index": 0, "message": message, "logprobs": None, "finish_reason": "length"}
            ],
            "usage": completion.usage(),
        }
    )


def parse_args(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    parser.add_argument("--burst", action="store_true", help="stream without yielding per token")
    parser.add_argument("--loop", choices=LOOPS, default="asyncio", help="event loop to serve on")
    return parser.parse_args()


def loop_factory(name: str) -> LoopFactory:
    """The factory of the event loop called ``name`` (one of ``LOOPS``)."""
    if name == "asyncio":
        return asyncio.new_event_loop
    try:
        import uvloop
    except ImportError:
        raise SystemExit("--loop uvloop needs uvloop (pip install uvloop)") from None
    return uvloop.new_event_loop


def run_on(factory: LoopFactory, main: Coroutine[Any, Any, None]) -> None:
    """Run ``main`` to completion on a new loop made by ``factory``."""
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main)


def running_loop_name() -> str:
    """``asyncio`` or ``uvloop``: the package of the running loop's class."""
    return type(asyncio.get_running_loop()).__module__.split(".")[0]


def listening_socket(host: str, port: int) -> socket.socket:
    """A bound, listening TCP socket (so the real port is known before serving).

    TCP_NODELAY is set here because accepted sockets inherit it, and asyncio only sets it
    itself on sockets it created (``socket.create_server`` leaves ``proto`` 0, which
    asyncio's check skips): without it Nagle plus delayed ACKs stall small writes by 40 ms.
    """
    sock = socket.create_server((host, port), backlog=2048)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setblocking(False)
    return sock


def announce(name: str, sock: socket.socket) -> None:
    """Print the ready line the bench harness waits for, naming the loop it runs on (called on
    that loop, so the name is the loop's, not the one asked for)."""
    host, port = sock.getsockname()[:2]
    where = f"http://{host}:{port} (loop={running_loop_name()})"
    print(f"{name} listening on {where}", file=sys.stderr, flush=True)
