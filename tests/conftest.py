"""Shared fixtures: real servers on 127.0.0.1:0 and a raw-socket client."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import selectors
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Mapping
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import openai
import pytest

from oxiserve import Config, Server
from tests.postgres import PrivatePostgres
from tests.postgres import unavailable as postgres_unavailable
from tests.redis_server import PrivateRedis
from tests.redis_server import unavailable as redis_unavailable

TIMEOUT = 5.0
T = TypeVar("T")

# The SDK and SSE wire tests run on both event loops users serve with (uvloop's transports
# are not asyncio.Transport subclasses; a server that assumes so breaks on them).
BOTH_LOOPS_MODULES = frozenset(
    {"test_chat", "test_completions_embeddings", "test_http_connection", "test_http_hardening",
     "test_loops", "test_memory_bounds", "test_disconnects", "test_structured_output",
     "test_sim_load", "test_sim_failures"}
)  # fmt: skip


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    module = getattr(item, "module", None)
    if module is None or module.__name__.rpartition(".")[2] not in BOTH_LOOPS_MODULES:
        return {"asyncio": asyncio.new_event_loop}
    import uvloop

    return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


@asynccontextmanager
async def running(**overrides: Any) -> AsyncIterator[Server]:
    """A Server on a free loopback port, stopped (gracefully) afterwards."""
    overrides.setdefault("port", 0)
    overrides.setdefault("access_log", False)
    overrides.setdefault("db", ":memory:")
    # An Engine object to serve with; a string is Config.engine, the engine's name.
    engine = None if isinstance(overrides.get("engine"), str) else overrides.pop("engine", None)
    server = Server(Config(**overrides), engine=engine)
    await server.start()
    try:
        yield server
    finally:
        await server.stop(timeout=2.0)


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    async with running() as s:
        yield s


@pytest.fixture
async def client(server: Server) -> AsyncIterator[openai.AsyncOpenAI]:
    """The official SDK, as users hold it, pointed at the ``server`` fixture (no retries)."""
    sdk = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="sk-test", max_retries=0)
    yield sdk
    await sdk.close()


class RawClient:
    """A raw TCP connection for feeding exact bytes and reading exact responses."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, server: Server) -> RawClient:
        reader, writer = await asyncio.open_connection(server.host, server.port)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def read_response(self, timeout: float = TIMEOUT) -> tuple[int, dict[str, str], bytes]:
        """One HTTP/1.1 response (content-length or chunked body)."""
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), timeout)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        if "content-length" in headers:
            body = await asyncio.wait_for(
                self.reader.readexactly(int(headers["content-length"])), timeout
            )
        elif headers.get("transfer-encoding") == "chunked":
            body = await asyncio.wait_for(read_chunked(self.reader), timeout)
        else:
            body = b""
        return status, headers, body

    async def read_all(self, timeout: float = TIMEOUT) -> bytes:
        """Everything until the server closes the connection."""
        return await asyncio.wait_for(self.reader.read(), timeout)

    async def closed_by_server(self, timeout: float = TIMEOUT) -> bool:
        try:
            rest = await asyncio.wait_for(self.reader.read(), timeout)
        except ConnectionResetError:
            return True
        return rest == b"" or self.reader.at_eof()

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()


async def read_chunked(reader: asyncio.StreamReader) -> bytes:
    body = bytearray()
    while True:
        size_line = await reader.readuntil(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            await reader.readuntil(b"\r\n")
            return bytes(body)
        body += await reader.readexactly(size)
        await reader.readexactly(2)


@pytest.fixture
async def raw(server: Server) -> AsyncIterator[Callable[[], Any]]:
    clients: list[RawClient] = []

    async def connect() -> RawClient:
        client = await RawClient.connect(server)
        clients.append(client)
        return client

    yield connect
    for client in clients:
        await client.close()


def mask_volatile(data: bytes) -> bytes:
    """Response bytes with the date header masked (for byte-exact comparisons)."""
    return re.sub(rb"date: [^\r]*", b"date: X", data)


async def wait_until(predicate: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    """Resolve once ``predicate()`` holds (checked every few ms), or raise TimeoutError."""
    loop = asyncio.get_running_loop()
    done = loop.create_future()

    def check() -> None:
        if done.done():
            return
        if predicate():
            done.set_result(None)
        else:
            loop.call_later(0.005, check)

    check()
    await asyncio.wait_for(done, timeout)


def in_flight(server: Server) -> bool:
    from oxiserve.http.connection import Phase

    return any(conn.phase is Phase.HANDLING for conn in server.context.connections)


async def shrink_server_send_buffer(server: Server, size: int = 4096) -> None:
    """Give the server's (only) connection a small kernel send buffer, so a client that does
    not read makes the server's own buffering (and the stream's ring) fill, not the kernel's."""
    import socket

    await wait_until(lambda: len(server.context.connections) == 1)
    (conn,) = server.context.connections
    assert conn.transport is not None
    conn.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)


def is_blocked(task: asyncio.Task[Any]) -> bool:
    # A task is blocked when it awaits a future that is not done. One that did a bare yield
    # (asyncio.sleep(0)), has not started yet or whose future just completed has no pending
    # ``_fut_waiter`` and is ready to run. (``_fut_waiter`` is private, but both the C and the
    # Python Task have it, on asyncio's loops and on uvloop, which uses asyncio's Task.)
    waiter = getattr(task, "_fut_waiter", None)
    return waiter is not None and not waiter.done()


async def wait_all_tasks_blocked(
    *, quiet: int = 3, max_iterations: int = 10_000, timeout: float = TIMEOUT
) -> None:
    """Return once every other task on the running loop is blocked, as trio's
    ``trio.testing.wait_all_tasks_blocked()``: use it instead of a few ``sleep(0)`` to let
    whatever was set going run until it waits for something.

    Contract:
    - "Blocked" means awaiting a future that is not done: an event, a lock, a queue, a
      socket's data, a timer (a task sleeping for a delay counts as blocked, as in trio; this
      never waits for a timer to fire: use a fake clock or an event for that).
    - The condition must hold at ``quiet`` consecutive loop iterations (a done future's
      wake-up, a transport's ``call_soon`` and loopback I/O each take an iteration to reach a
      task); on asyncio's own loops the ready queue must also hold nothing but this task.
    - Bounded in loop iterations and in (real) seconds: raises ``TimeoutError`` if the tasks
      never all block, e.g. one is consuming a zero-latency stream, which never waits.
    - It does not see work outside the loop: a worker thread still running, bytes still in the
      kernel between two processes. Wait for those with an event or ``wait_until``.
    """
    loop = asyncio.get_running_loop()
    me = asyncio.current_task()
    ready = getattr(loop, "_ready", None)  # asyncio's queue of callbacks; uvloop hides it
    deadline = time.monotonic() + timeout
    calm = 0
    for _ in range(max_iterations):
        await asyncio.sleep(0)  # one loop iteration: the others run, or not
        idle = not ready and all(is_blocked(t) for t in asyncio.all_tasks(loop) if t is not me)
        calm = calm + 1 if idle else 0
        if calm >= quiet:
            return
        if time.monotonic() > deadline:
            break
    raise TimeoutError("the other tasks kept running: they never all blocked")


class _JumpingSelector(selectors.BaseSelector):
    """A real selector that, when the loop would sleep until its next timer with no I/O
    ready, advances the loop's clock to that timer instead of waiting."""

    def __init__(self, loop: MockClockLoop) -> None:
        self._loop = loop
        self._real = selectors.DefaultSelector()

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._real.register(fileobj, events, data)

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        return self._real.unregister(fileobj)

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._real.modify(fileobj, events, data)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        events = self._real.select(0)
        if events or timeout is None or timeout <= 0:
            # Nothing scheduled at all (timeout None): only real I/O can wake the loop.
            return events or (self._real.select(None) if timeout is None else [])
        self._loop.advance(timeout)
        return []

    def close(self) -> None:
        self._real.close()

    def get_map(self) -> Mapping[Any, selectors.SelectorKey]:
        return self._real.get_map()


class MockClockLoop(asyncio.SelectorEventLoop):
    """asyncio's selector loop on a virtual clock, as trio's ``MockClock(autojump_threshold=0)``.

    ``time()`` starts at 0.0 and moves only when ``advance()`` is called or when every task
    waits for a timer (nothing ready, no I/O ready): then it jumps straight to the next timer's
    deadline. So ``call_later``/``asyncio.sleep`` delays take no real time, and a test sees
    exactly the loop times the code under test asked for. Meant for code that reads time only
    through ``loop.time()`` and timers (the simulator engine) and runs no worker threads (the
    clock would jump while a thread works). Run a coroutine on it with ``run_on_mock_clock``.
    """

    def __init__(self) -> None:
        self._now = 0.0
        super().__init__(_JumpingSelector(self))

    def time(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("time does not go backwards")
        self._now += seconds


def run_on_mock_clock(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run ``main()`` to completion on a fresh ``MockClockLoop`` (from a synchronous test)."""
    with asyncio.Runner(loop_factory=MockClockLoop) as runner:
        return runner.run(main())


def _service_here(why: str | None, tests: str) -> None:
    """A private service the tests start cannot run here (``why``): in CI that fails, on
    another machine those tests skip with the reason."""
    if why is not None:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the {tests}: {why}")
        pytest.skip(why)


@pytest.fixture(scope="session")
def private_postgres() -> Iterator[PrivatePostgres]:
    _service_here(postgres_unavailable(), "PostgreSQL store tests")
    server = PrivatePostgres()
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def private_redis() -> Iterator[PrivateRedis]:
    _service_here(redis_unavailable(), "Redis bus tests")
    server = PrivateRedis()
    try:
        server.start()
        yield server
    finally:
        server.close()
