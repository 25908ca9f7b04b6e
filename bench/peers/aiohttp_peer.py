"""Peer: aiohttp's web server, streaming through ``StreamResponse.write``.

python -m bench.peers.aiohttp_peer --port 0 [--burst] [--loop asyncio|uvloop]
"""

from __future__ import annotations

import asyncio
import socket

from aiohttp import web

from bench.peers.common import (
    HEALTH_BODY,
    ChatRequest,
    announce,
    chat_completion,
    listening_socket,
    loop_factory,
    parse_args,
    run_on,
    sse_frames,
)

_SSE_HEADERS = {"content-type": "text/event-stream", "cache-control": "no-cache"}


def create_app(burst: bool) -> web.Application:
    async def health(request: web.Request) -> web.Response:
        return web.Response(body=HEALTH_BODY, content_type="application/json")

    async def chat(request: web.Request) -> web.StreamResponse:
        params = ChatRequest.parse(await request.read())
        if not params.stream:
            body = await chat_completion(params, burst)
            return web.Response(body=body, content_type="application/json")
        response = web.StreamResponse(headers=_SSE_HEADERS)
        await response.prepare(request)
        async for frame in sse_frames(params, burst):
            await response.write(frame)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_post("/v1/chat/completions", chat)
    return app


async def serve(burst: bool, sock: socket.socket) -> None:
    runner = web.AppRunner(create_app(burst), access_log=None)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    announce("aiohttp-peer", sock)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def main() -> None:
    args = parse_args(__doc__ or "")
    run_on(loop_factory(args.loop), serve(args.burst, listening_socket(args.host, args.port)))


if __name__ == "__main__":
    main()
