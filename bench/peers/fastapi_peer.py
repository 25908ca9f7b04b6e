"""Peer: FastAPI with sse-starlette's EventSourceResponse on uvicorn (httptools), on the
loop chosen with ``--loop`` (uvicorn's own loop setting makes it).

python -m bench.peers.fastapi_peer --port 0 [--burst] [--loop asyncio|uvloop]
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator

import uvicorn
from fastapi import FastAPI, Request, Response
from sse_starlette.sse import EventSourceResponse

from bench.peers.common import (
    ChatRequest,
    announce,
    chat_completion,
    chat_payloads,
    listening_socket,
    parse_args,
    run_on,
)


def create_app(burst: bool) -> FastAPI:
    app = FastAPI()

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        params = ChatRequest.parse(await request.body())
        if not params.stream:
            body = await chat_completion(params, burst)
            return Response(content=body, media_type="application/json")

        async def events() -> AsyncIterator[str]:
            async for payload in chat_payloads(params, burst):
                yield payload.decode()

        return EventSourceResponse(events(), sep="\n")

    return app


async def serve(config: uvicorn.Config, sock: socket.socket) -> None:
    announce("fastapi-peer", sock)
    await uvicorn.Server(config).serve(sockets=[sock])


def main() -> None:
    args = parse_args(__doc__ or "")
    sock = listening_socket(args.host, args.port)
    config = uvicorn.Config(
        create_app(args.burst),
        loop=args.loop,
        http="httptools",
        lifespan="off",
        log_level="warning",
        access_log=False,
    )
    # What uvicorn.Server.run does, with the ready line printed on the loop it made.
    factory = config.get_loop_factory()
    assert factory is not None  # "asyncio" and "uvloop" both name a factory
    run_on(factory, serve(config, sock))


if __name__ == "__main__":
    main()
