"""What the harness knows by name: the scenarios and the servers it can start."""

from __future__ import annotations

import sys
from dataclasses import dataclass

from bench.assistants import Fanout, RunsStream
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
)
SCENARIOS: dict[str, type[Scenario]] = {cls.name: cls for cls in _ALL}


@dataclass(frozen=True, slots=True)
class ServerSpec:
    """A server the harness starts as a subprocess (it prints ``... listening on URL``)."""

    key: str
    label: str
    module: str  # run as ``python -m <module>``; also what the import-time figure imports
    args: tuple[str, ...] = ()
    peer: bool = True  # peers take --burst and serve only /health and chat completions

    def argv(self, extra: tuple[str, ...] = ()) -> list[str]:
        host_port = ("--host", "127.0.0.1", "--port", "0")
        return [sys.executable, "-m", self.module, *host_port, *self.args, *extra]


OXISERVE = ServerSpec(
    "oxiserve",
    "oxiserve (asyncio loop)",
    "oxiserve",
    # The asyncio loop, as aiohttp and the raw peer run on (--loop auto would pick uvloop).
    ("--log-level", "warning", "--no-access-log", "--sim-mode", "lorem", "--loop", "asyncio"),
    peer=False,
)
PEERS = (
    ServerSpec(
        "fastapi-sse",
        "FastAPI + sse-starlette (uvicorn, uvloop, httptools)",
        "bench.peers.fastapi_peer",
    ),
    ServerSpec("aiohttp", "aiohttp", "bench.peers.aiohttp_peer"),
    ServerSpec("raw", "naive raw asyncio.Protocol", "bench.peers.raw_peer"),
)
SERVERS: dict[str, ServerSpec] = {s.key: s for s in (OXISERVE, *PEERS)}
