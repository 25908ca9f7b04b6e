"""Peer: FastAPI with sse-starlette's EventSourceResponse on uvicorn (uvloop, httptools).

python -m bench.peers.fastapi_peer --port 0 [--burst]
"""

from __future__ import annotations

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


def main() -> None:
    args = parse_args(__doc__ or "")
    sock = listening_socket(args.host, args.port)
    config = uvicorn.Config(
        create_app(args.burst),
        loop="uvloop",
        http="httptools",
        lifespan="off",
        log_level="warning",
        access_log=False,
    )
    announce("fastapi-peer", sock)
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    main()
