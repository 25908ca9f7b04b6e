"""oxiserve on uvloop: embedded in a host that runs uvloop.run(), and the CLI's --loop choice."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator

import httpx
import openai
import uvloop

from oxiserve import Config, Server
from oxiserve.loops import resolve

MODEL = "oxiserve-sim"


class UvloopHost(threading.Thread):
    """What an embedding host does: its own uvloop.run(), a Server started inside it."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.started = threading.Event()
        self.url = ""
        self.loop_type: type | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._quit: asyncio.Event | None = None

    def run(self) -> None:
        uvloop.run(self._main())

    async def _main(self) -> None:
        self._loop, self._quit = asyncio.get_running_loop(), asyncio.Event()
        self.loop_type = type(self._loop)
        async with Server(Config(port=0, access_log=False)) as server:
            self.url = server.url
            self.started.set()
            await self._quit.wait()

    def stop(self) -> None:
        if self._loop is not None and self._quit is not None:
            self._loop.call_soon_threadsafe(self._quit.set)
        self.join(10)


@contextlib.contextmanager
def serving_on_uvloop() -> Iterator[str]:
    host = UvloopHost()
    host.start()
    try:
        assert host.started.wait(10), "the host never started its server"
        assert host.loop_type is uvloop.Loop
        yield host.url
    finally:
        host.stop()
    assert not host.is_alive()


def test_a_server_embedded_in_a_uvloop_host_serves_a_stream() -> None:
    with serving_on_uvloop() as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
        stream = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], stream=True, max_tokens=20
        )
        chunks = list(stream)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert len(text.split()) >= 10
        assert chunks[-1].choices[0].finish_reason == "length"
        with httpx.Client(base_url=url) as raw:
            assert raw.get("/health").json() == {"status": "ok"}


def test_auto_picks_uvloop_where_it_is_installed() -> None:
    name, factory = resolve("auto")
    assert name == "uvloop"
    loop = factory()
    try:
        assert isinstance(loop, uvloop.Loop)
    finally:
        loop.close()
    assert resolve("asyncio")[0] == "asyncio"
