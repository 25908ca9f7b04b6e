"""oxiserve on uvloop: embedded in a host that runs uvloop.run(), and the CLI's --loop choice;
and the loop helpers other tests rely on (tests/conftest.py), on both loops."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator

import httpx
import openai
import pytest
import uvloop

from oxiserve import Config, Server
from oxiserve.engine.sim_text import count_tokens
from oxiserve.loops import resolve
from tests.conftest import MockClockLoop, run_on_mock_clock, wait_all_tasks_blocked

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
        async with Server(Config(port=0, access_log=False, db=":memory:")) as server:
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
        assert count_tokens(text) == 20
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


# --- the test helpers ------------------------------------------------------------------------


async def test_wait_all_tasks_blocked_lets_a_chain_of_tasks_run_to_its_end() -> None:
    # 50 tasks hand a value down a chain of queues, one hop per loop iteration or more: a
    # few sleep(0)s would return halfway, the helper only once every task waits again.
    queues: list[asyncio.Queue[int]] = [asyncio.Queue() for _ in range(51)]
    hold = asyncio.Event()

    async def hop(i: int) -> None:
        value = await queues[i].get()
        await queues[i + 1].put(value + 1)
        await hold.wait()  # blocked, not done: the helper must not wait for the end

    tasks = [asyncio.create_task(hop(i)) for i in range(50)]
    queues[0].put_nowait(0)
    await wait_all_tasks_blocked()
    assert queues[50].get_nowait() == 50
    assert not any(task.done() for task in tasks)
    hold.set()
    await asyncio.wait_for(asyncio.gather(*tasks), 5)


async def test_wait_all_tasks_blocked_gives_up_on_a_task_that_never_waits() -> None:
    spinning = True

    async def spin() -> None:
        for _ in range(1_000_000):
            if not spinning:
                return
            await asyncio.sleep(0)  # ready to run at every iteration: the behaviour under test

    task = asyncio.create_task(spin())
    with pytest.raises(TimeoutError, match="never all blocked"):
        await wait_all_tasks_blocked(max_iterations=200)
    spinning = False
    await asyncio.wait_for(task, 5)


def test_the_mock_clock_jumps_to_each_timer_and_times_out_on_it() -> None:
    async def main() -> list[float]:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, MockClockLoop)
        fired: list[float] = []
        for delay in (3600.0, 0.25, 60.0):
            loop.call_later(delay, lambda: fired.append(loop.time()))
        with pytest.raises(TimeoutError):  # an hour of waiting, in no real time
            await asyncio.wait_for(loop.create_future(), 7200.0)
        assert loop.time() == pytest.approx(7200.0)
        loop.advance(1.5)
        assert loop.time() == pytest.approx(7201.5)
        return fired

    assert run_on_mock_clock(main) == pytest.approx([0.25, 60.0, 3600.0])
