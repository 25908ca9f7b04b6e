"""What the harness knows by name: the scenarios and the servers it can start."""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass

from bench.assistants import Fanout, RunsStream
from bench.peers.common import LOOPS as LOOPS  # every server here takes --loop NAME
from bench.responses import ResponsesStream, ResumeLagged, ResumeRing
from bench.scenarios import (
    Chat,
    ChatStream,
    Completions,
    CompletionsStream,
    Embeddings,
    Health,
    Scenario,
)

_ALL: tuple[type[Scenario], ...] = (
    ChatStream,
    Chat,
    CompletionsStream,
    Completions,
    Embeddings,
    Health,
    RunsStream,
    Fanout,
    ResponsesStream,
    ResumeRing,
    ResumeLagged,
)
SCENARIOS: dict[str, type[Scenario]] = {cls.name: cls for cls in _ALL}


def installed_loops() -> tuple[str, ...]:
    """The ``LOOPS`` (every server here takes ``--loop NAME``) this machine has."""
    return tuple(n for n in LOOPS if n == "asyncio" or importlib.util.find_spec(n) is not None)


@dataclass(frozen=True, slots=True)
class ServerSpec:
    """A server the harness starts as a subprocess (it prints ``... listening on URL``, and
    ``loop=NAME`` after it; it takes ``--loop NAME`` for each name of ``LOOPS``)."""

    key: str
    label: str
    module: str  # run as ``python -m <module>``; also what the import-time figure imports
    args: tuple[str, ...] = ()
    peer: bool = True  # peers take --burst and serve only /health and chat completions

    def argv(self, extra: tuple[str, ...] = (), loop: str | None = None) -> list[str]:
        """The command line; ``loop`` None leaves the server's own default loop."""
        host_port = ("--host", "127.0.0.1", "--port", "0")
        on = ("--loop", loop) if loop is not None else ()
        return [sys.executable, "-m", self.module, *host_port, *self.args, *on, *extra]


OXISERVE = ServerSpec(
    "oxiserve",
    "oxiserve",
    "oxiserve",
    ("--log-level", "warning", "--no-access-log", "--sim-mode", "lorem", "--db", ":memory:"),
    peer=False,
)
PEERS = (
    ServerSpec(
        "fastapi-sse",
        "FastAPI + sse-starlette (uvicorn, httptools)",
        "bench.peers.fastapi_peer",
    ),
    ServerSpec("aiohttp", "aiohttp", "bench.peers.aiohttp_peer"),
    ServerSpec("raw", "naive raw asyncio.Protocol", "bench.peers.raw_peer"),
)
SERVERS: dict[str, ServerSpec] = {s.key: s for s in (OXISERVE, *PEERS)}
