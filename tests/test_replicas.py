"""Replicas sharing one PostgreSQL store and one Redis bus (``--bus``): runs and background
responses streamed, resumed, cancelled and failed over from any replica; workers; bus down."""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import httpx
import openai
import pytest

from oxiserve import Config, Server
from tests.conftest import TIMEOUT, running, wait_until
from tests.postgres import PrivatePostgres
from tests.redis_server import PrivateRedis
from tests.test_assistants_events import BETA, MODEL, TEXT_RUN, Event, of, parse_sse, shape
from tests.test_assistants_events import text_of as message_text
from tests.test_responses_sdk import bounded, deltas, read_events
from tests.test_runs_durability import TERMINAL, joined_deltas

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the SDK's Assistants

SLOW = {"sim_itl_ms": 20, "sim_default_max_tokens": 200}  # a run lasts 4 s
LONG_TOKENS = 2000  # 40 s at 20 ms a token: far longer than any test waits
BOUND = 20.0  # the longest any wait here may take
RESPONSE_LIVE = ("queued", "in_progress")


# --- helpers -----------------------------------------------------------------------------------


def http_for(url: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=url, headers=BETA, timeout=TIMEOUT)


def sdk_for(url: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=url + "/v1", api_key="x", max_retries=0)


@asynccontextmanager
async def two_replicas(
    private_postgres: PrivatePostgres, private_redis: PrivateRedis, **config: Any
) -> AsyncIterator[tuple[Server, Server]]:
    """Two servers in this process on one fresh database and one fresh bus."""
    shared = {"db": private_postgres.new_database(), "bus": private_redis.new_database()}
    async with running(**shared, **SLOW, **config) as a, running(**shared, **SLOW, **config) as b:
        yield a, b


async def ok(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, (response.request.url, response.text)
    body: dict[str, Any] = response.json()
    return body


async def poll(
    http: httpx.AsyncClient,
    path: str,
    done: Callable[[dict[str, Any]], bool],
    timeout: float = BOUND,
) -> dict[str, Any]:
    """GET ``path`` until ``done(body)``, bounded in time. The job may run in another
    process, so there is no event to wait on: this polls, 10 ms apart."""
    deadline = time.monotonic() + timeout
    while True:
        body = await ok(await http.get(path))
        if done(body):
            return body
        assert time.monotonic() < deadline, f"timed out polling {path}: {body}"
        await asyncio.sleep(0.01)


async def thread_with_run(
    http: httpx.AsyncClient, **run: Any
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(assistant, thread, run): a run created (not streamed) on the server ``http`` talks to."""
    asst = await ok(await http.post("/v1/assistants", json={"model": MODEL}))
    thread = await ok(
        await http.post(
            "/v1/threads", json={"messages": [{"role": "user", "content": "Tell me something."}]}
        )
    )
    created = await ok(
        await http.post(
            f"/v1/threads/{thread['id']}/runs", json={"assistant_id": asst["id"], **run}
        )
    )
    return asst, thread, created


async def wait_for_text(http: httpx.AsyncClient, thread_id: str, run_id: str) -> None:
    """Until the run's message has some text (it is generating, somewhere)."""

    def has_text(page: dict[str, Any]) -> bool:
        return bool(page["data"]) and bool(message_text(page["data"][0]))

    await poll(http, f"/v1/threads/{thread_id}/messages?run_id={run_id}", has_text)


async def attach(url: str, path: str, attached: asyncio.Event) -> bytes:
    """The whole body of a GET stream; ``attached`` is set once its head came."""
    async with http_for(url) as http, http.stream("GET", path) as response:
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"].startswith("text/event-stream")
        attached.set()
        return await response.aread()


async def attached(task: asyncio.Task[bytes], event: asyncio.Event) -> None:
    """Wait until ``task`` has its response head, or raise what made it fail."""
    waiter = asyncio.create_task(event.wait())
    try:
        await asyncio.wait({task, waiter}, timeout=TIMEOUT, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
    if task.done():
        task.result()
    assert event.is_set(), "no response head"


async def cancelled(task: asyncio.Task[Any]) -> None:
    task.cancel()
    with contextlib.suppress(BaseException):
        await task


async def run_messages(http: httpx.AsyncClient, thread_id: str, run_id: str) -> list[Any]:
    page = await ok(await http.get(f"/v1/threads/{thread_id}/messages?run_id={run_id}"))
    data: list[Any] = page["data"]
    return data


class Replica:
    """``python -m oxiserve`` as a process of its own (to be SIGKILLed), its stderr read by a
    thread (so a chatty process never blocks on a full pipe) into ``lines``."""

    def __init__(self, *args: str) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "oxiserve", "--port", "0", "--no-access-log",
             "--log-level", "warning", *args],
            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, env=env,
        )  # fmt: skip
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        with self.proc.stderr:
            for raw in self.proc.stderr:
                line = raw.decode(errors="replace")
                self.lines.append(line)
                self._queue.put(line)
        self._queue.put(None)

    def url(self, timeout: float = BOUND) -> str:
        """The URL of the startup line (bounded in time)."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._queue.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                raise AssertionError(f"the process ended before it listened: {self.lines}")
            match = re.search(r"listening on (http://127\.0\.0\.1:\d+)", line)
            if match is not None:
                return match.group(1)
        raise AssertionError(f"no startup line within {timeout} s: {self.lines}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(TIMEOUT)

    def close(self) -> None:
        """SIGTERM (a supervisor drains and stops its workers), SIGKILL if it lingers. The
        reader thread closes stderr at its end (closing it under the reading thread would
        block on the file's lock while a worker still holds the pipe open)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(TIMEOUT)
            except subprocess.TimeoutExpired:
                self.kill()
        self._reader.join(TIMEOUT)


@contextmanager
def replica(*args: str) -> Iterator[tuple[Replica, str]]:
    process = Replica(*args)
    try:
        yield process, process.url()
    finally:
        process.close()


# --- 1. Re-attaching from another replica ------------------------------------------------------


async def test_a_run_started_on_one_replica_streams_whole_from_another(
    private_postgres: PrivatePostgres, private_redis: PrivateRedis
) -> None:
    async with (
        two_replicas(private_postgres, private_redis) as (a, b),
        http_for(a.url) as on_a,
        http_for(b.url) as on_b,
    ):
        _, thread, run = await thread_with_run(on_a)
        t = thread["id"]
        await wait_for_text(on_a, t, run["id"])
        path = f"/v1/threads/{t}/runs/{run['id']}/stream"
        heads = {"a": asyncio.Event(), "b": asyncio.Event()}
        tasks = {
            "a": asyncio.create_task(attach(a.url, path, heads["a"])),
            "b": asyncio.create_task(attach(b.url, path, heads["b"])),
        }
        try:
            for name, task in tasks.items():
                await attached(task, heads[name])
            status_when_attached = (await ok(await on_b.get(f"/v1/threads/{t}/runs/{run['id']}")))[
                "status"
            ]
            bodies = await asyncio.wait_for(asyncio.gather(*tasks.values()), BOUND)
        finally:
            for task in tasks.values():
                await cancelled(task)
        (message,) = await run_messages(on_b, t, run["id"])
        assert await run_messages(on_a, t, run["id"]) == [message]
        final = await ok(await on_a.get(f"/v1/threads/{t}/runs/{run['id']}"))
    assert status_when_attached == "in_progress", "B attached after the run had ended"
    assert final["status"] == "completed"
    assert message["status"] == "completed"
    assert message_text(message)
    by_replica: dict[str, list[Event]] = {}
    for name, body in zip(tasks, bodies, strict=True):
        events = parse_sse(body)
        by_replica[name] = events
        assert shape(events) == TEXT_RUN, name
        assert events[0][1]["id"] == run["id"]
        assert events[-1] == ("done", "[DONE]")
        assert joined_deltas(events) == message_text(message), name
        (completed,) = of(events, "thread.message.completed")
        assert (completed["id"], message_text(completed)) == (message["id"], message_text(message))
        assert of(events, "thread.run.completed")[0]["id"] == run["id"]

    # The same stream: the same events, named alike, about the same objects.
    def outline(events: list[Event]) -> list[tuple[str, str]]:
        return [(n, d["id"]) for n, d in events if n not in ("thread.message.delta", "done")]

    assert outline(by_replica["a"]) == outline(by_replica["b"])


async def test_a_background_response_resumes_on_another_replica(
    private_postgres: PrivatePostgres, private_redis: PrivateRedis
) -> None:
    async with two_replicas(private_postgres, private_redis) as (a, b):
        on_a, on_b = sdk_for(a.url), sdk_for(b.url)
        try:
            stream = await bounded(
                on_a.responses.create(model=MODEL, input="Go.", background=True, stream=True)
            )
            before = await read_events(stream, count=8)
            assert before[0].type == "response.created"
            assert [e.sequence_number for e in before] == list(range(8))
            response_id = before[0].response.id
            cursor = before[-1].sequence_number
            seen_on_b = await bounded(on_b.responses.retrieve(response_id))
            assert seen_on_b.status in RESPONSE_LIVE, "it ended before B resumed it"

            rest = await read_events(
                await bounded(
                    on_b.responses.retrieve(response_id, stream=True, starting_after=cursor)
                )
            )
            numbers = [e.sequence_number for e in rest]
            assert numbers == list(range(cursor + 1, cursor + 1 + len(rest)))
            assert rest[-1].type == "response.completed"
            assert deltas(rest), "B streamed no text of its own"
            final_b = await bounded(on_b.responses.retrieve(response_id))
            final_a = await bounded(on_a.responses.retrieve(response_id))
        finally:
            await on_a.close()
            await on_b.close()
    assert final_b.status == final_a.status == "completed"
    assert final_b.output_text == final_a.output_text
    assert deltas(before) + deltas(rest) == final_b.output_text
    assert rest[-1].response.output_text == final_b.output_text


@pytest.mark.parametrize("flush_ms", [0, 200])
async def test_a_background_response_resumes_raw_on_another_replica(
    private_postgres: PrivatePostgres, private_redis: PrivateRedis, flush_ms: int
) -> None:
    """The same over plain httpx: the SSE lines of the resumed stream, numbered on.  With
    ``--bus-flush-ms 200`` the other replica is up to 10 frames behind the owner when the
    client resumes there: it must wait for them, not send any twice."""
    async with (
        two_replicas(private_postgres, private_redis, bus_flush_ms=flush_ms) as (a, b),
        http_for(a.url) as on_a,
        http_for(b.url) as on_b,
    ):
        request = {"model": MODEL, "input": "Go.", "background": True, "stream": True}
        first: list[Event] = []
        async with on_a.stream("POST", "/v1/responses", json=request) as response:
            assert response.status_code == 200
            buffer = ""
            async for chunk in response.aiter_text():
                buffer += chunk
                *blocks, buffer = buffer.split("\n\n")
                first += parse_sse("\n\n".join(blocks).encode()) if blocks else []
                if len(first) >= 30:
                    break
        response_id = first[0][1]["response"]["id"]
        cursor = first[-1][1]["sequence_number"]
        resumed = await on_b.get(
            f"/v1/responses/{response_id}", params={"stream": "true", "starting_after": cursor}
        )
        assert resumed.status_code == 200, resumed.text
        rest = parse_sse(resumed.content)
        final = await ok(await on_a.get(f"/v1/responses/{response_id}"))
    numbers = [data["sequence_number"] for _, data in rest]
    assert numbers == list(range(cursor + 1, cursor + 1 + len(rest)))
    assert rest[-1][0] == "response.completed"

    def text(events: list[Event]) -> str:
        return "".join(d["delta"] for name, d in events if name == "response.output_text.delta")

    assert final["status"] == "completed"
    output = "".join(
        part["text"] for item in final["output"] if item["type"] == "message"
        for part in item["content"] if part["type"] == "output_text"
    )  # fmt: skip
    assert text(first) + text(rest) == output


# --- 2. A replica that dies: its lease runs out ------------------------------------------------


async def test_a_killed_replicas_run_fails_on_another_and_its_stream_ends(
    private_postgres: PrivatePostgres, private_redis: PrivateRedis
) -> None:
    db, bus = private_postgres.new_database(), private_redis.new_database()
    args = ("--db", db, "--bus", bus, "--lease-timeout", "1", "--sim-itl-ms", "20")
    process = Replica(*args)
    try:
        url_a = await asyncio.to_thread(process.url)
        async with http_for(url_a) as on_a:
            _, thread, run = await thread_with_run(on_a, max_completion_tokens=LONG_TOKENS)
            t = thread["id"]
            await wait_for_text(on_a, t, run["id"])
        # B starts only now: the run is A's, whatever B would take on.
        async with (
            running(db=db, bus=bus, lease_timeout=1.0, **SLOW) as b,
            http_for(b.url) as on_b,
        ):
            path = f"/v1/threads/{t}/runs/{run['id']}"
            head = asyncio.Event()
            watching = asyncio.create_task(attach(b.url, f"{path}/stream", head))
            try:
                await attached(watching, head)
                assert (await ok(await on_b.get(path)))["status"] == "in_progress"
                process.kill()
                killed_at = time.monotonic()
                body = await asyncio.wait_for(watching, BOUND)
                ended_after = time.monotonic() - killed_at
            finally:
                await cancelled(watching)
            failed = await poll(on_b, path, lambda r: r["status"] in TERMINAL)
            (message,) = await run_messages(on_b, t, run["id"])
    finally:
        await asyncio.to_thread(process.close)
    events = parse_sse(body)
    names = [name for name, _ in events]
    assert names[0] == "thread.run.created"
    assert "thread.message.delta" in names
    assert names[-2:] == ["thread.run.failed", "done"], names[-5:]
    assert ended_after < 1.0 + 8.0, f"the lease ran out only after {ended_after:.1f} s"
    assert failed["status"] == "failed"
    assert failed["last_error"]["code"] == "server_error"
    assert re.search(r"replica|lease", failed["last_error"]["message"], re.IGNORECASE), failed
    assert failed["failed_at"] is not None
    assert events[-2][1]["id"] == run["id"]
    assert events[-2][1]["status"] == "failed"
    assert message["status"] != "in_progress"


async def test_a_killed_replicas_background_response_fails_on_another(
    private_postgres: PrivatePostgres, private_redis: PrivateRedis
) -> None:
    db, bus = private_postgres.new_database(), private_redis.new_database()
    args = ("--db", db, "--bus", bus, "--lease-timeout", "1", "--sim-itl-ms", "20")
    process = Replica(*args)
    try:
        url_a = await asyncio.to_thread(process.url)
        async with http_for(url_a) as on_a:
            started = await ok(
                await on_a.post(
                    "/v1/responses",
                    json={
                        "model": MODEL,
                        "input": "Long.",
                        "background": True,
                        "max_output_tokens": LONG_TOKENS,
                    },
                )
            )
            path = f"/v1/responses/{started['id']}"
            await poll(on_a, path, lambda r: r["status"] == "in_progress")
        async with (
            running(db=db, bus=bus, lease_timeout=1.0, **SLOW) as b,
            http_for(b.url) as on_b,
        ):
            # (B reads the store, which may still say queued: A keeps it current at checkpoints.)
            assert (await ok(await on_b.get(path)))["status"] in RESPONSE_LIVE
            process.kill()
            killed_at = time.monotonic()
            failed = await poll(on_b, path, lambda r: r["status"] not in RESPONSE_LIVE)
            ended_after = time.monotonic() - killed_at
    finally:
        await asyncio.to_thread(process.close)
    assert failed["status"] == "failed"
    assert failed["error"] is not None
    assert ended_after < 1.0 + 8.0, f"the lease ran out only after {ended_after:.1f} s"


# --- 3. Cancel from any replica ----------------------------------------------------------------


async def test_a_run_on_one_replica_is_cancelled_from_another(
    private_postgres: PrivatePostgres, private_redis: PrivateRedis
) -> None:
    async with (
        two_replicas(private_postgres, private_redis) as (a, b),
        http_for(a.url) as on_a,
        http_for(b.url) as on_b,
    ):
        _, thread, run = await thread_with_run(on_a, max_completion_tokens=LONG_TOKENS)
        t = thread["id"]
        await wait_for_text(on_b, t, run["id"])
        path = f"/v1/threads/{t}/runs/{run['id']}"
        cancelling = await ok(await on_b.post(f"{path}/cancel", json={}))
        assert cancelling["id"] == run["id"]
        assert cancelling["status"] in ("cancelling", "cancelled")
        done = await poll(on_b, path, lambda r: r["status"] in TERMINAL)
        assert (await ok(await on_a.get(path)))["status"] == "cancelled"
        (message,) = await run_messages(on_b, t, run["id"])
        engines: list[Any] = [a.state.engine, b.state.engine]  # type: ignore[union-attr]
        await wait_until(lambda: all(e.active_generations == 0 for e in engines), BOUND)
    assert done["status"] == "cancelled"
    assert done["usage"] is None or done["usage"]["completion_tokens"] < LONG_TOKENS
    assert message["status"] == "incomplete"
    assert message["incomplete_details"] == {"reason": "run_cancelled"}


async def test_a_thread_has_one_active_run_across_replicas(
    private_postgres: PrivatePostgres, private_redis: PrivateRedis
) -> None:
    async with (
        two_replicas(private_postgres, private_redis) as (a, b),
        http_for(a.url) as on_a,
        http_for(b.url) as on_b,
    ):
        asst, thread, run = await thread_with_run(on_a, max_completion_tokens=LONG_TOKENS)
        t = thread["id"]
        second = await on_b.post(f"/v1/threads/{t}/runs", json={"assistant_id": asst["id"]})
        assert second.status_code == 400
        assert run["id"] in second.json()["error"]["message"]
        path = f"/v1/threads/{t}/runs/{run['id']}"
        await ok(await on_b.post(f"{path}/cancel", json={}))
        await poll(on_b, path, lambda r: r["status"] in TERMINAL)
        again = await on_b.post(f"/v1/threads/{t}/runs", json={"assistant_id": asst["id"]})
        assert again.status_code == 200  # the thread is free once the run has ended


async def test_a_background_response_on_one_replica_is_cancelled_from_another(
    private_postgres: PrivatePostgres, private_redis: PrivateRedis
) -> None:
    async with two_replicas(private_postgres, private_redis) as (a, b):
        on_a, on_b = sdk_for(a.url), sdk_for(b.url)
        try:
            started = await bounded(
                on_a.responses.create(
                    model=MODEL, input="Long.", background=True, max_output_tokens=LONG_TOKENS
                )
            )
            deadline = time.monotonic() + BOUND
            while (await bounded(on_b.responses.retrieve(started.id))).status != "in_progress":
                assert time.monotonic() < deadline, "B never saw it in progress"
                await asyncio.sleep(0.01)
            answer = await bounded(on_b.responses.cancel(started.id))
            assert answer.id == started.id
            deadline = time.monotonic() + BOUND
            while (final := await bounded(on_b.responses.retrieve(started.id))).status in (
                RESPONSE_LIVE
            ):
                assert time.monotonic() < deadline, f"still {final.status}"
                await asyncio.sleep(0.01)
            on_a_final = await bounded(on_a.responses.retrieve(started.id))
            engines: list[Any] = [a.state.engine, b.state.engine]  # type: ignore[union-attr]
            await wait_until(lambda: all(e.active_generations == 0 for e in engines), BOUND)
        finally:
            await on_a.close()
            await on_b.close()
    assert final.status == "cancelled"
    assert on_a_final.status == "cancelled"
    assert answer.status in ("in_progress", "cancelled")


# --- 4. Workers with a bus ---------------------------------------------------------------------


def worker_call(url: str, method: str, path: str, body: Any = None) -> tuple[httpx.Response, int]:
    """One request on a fresh connection (the kernel spreads those over the workers); the
    response and the index of the worker that answered."""
    with httpx.Client(base_url=url, headers=BETA, timeout=TIMEOUT) as http:
        response = http.request(method, path, json=body)
    index, _, pid = response.headers["x-oxiserve-worker"].partition("/")
    assert pid.isdigit()
    return response, int(index)


def test_workers_with_a_bus_serve_the_stateful_api(
    private_postgres: PrivatePostgres, private_redis: PrivateRedis
) -> None:
    db, bus = private_postgres.new_database(), private_redis.new_database()
    seen: set[int] = set()

    def call(method: str, path: str, body: Any = None) -> dict[str, Any]:
        response, index = worker_call(url, method, path, body)
        seen.add(index)
        assert response.status_code == 200, (method, path, response.status_code, response.text)
        result: dict[str, Any] = response.json()
        return result

    with replica(
        "--workers",
        "2",
        "--worker-header",
        "--db",
        db,
        "--bus",
        bus,
        "--sim-itl-ms",
        "5",
        "--sim-default-max-tokens",
        "40",
    ) as (_, url):
        asst = call("POST", "/v1/assistants", {"model": MODEL})
        thread = call("POST", "/v1/threads", {"messages": [{"role": "user", "content": "Hi"}]})
        t = thread["id"]
        for _ in range(4):  # one run after the other on one thread, each polled to its end
            run = call("POST", f"/v1/threads/{t}/runs", {"assistant_id": asst["id"]})
            deadline = time.monotonic() + BOUND
            while run["status"] not in TERMINAL:
                assert time.monotonic() < deadline, run
                run = call("GET", f"/v1/threads/{t}/runs/{run['id']}")
            assert run["status"] == "completed", run
            (message,) = call("GET", f"/v1/threads/{t}/messages?run_id={run['id']}")["data"]
            assert message["status"] == "completed"
            assert message_text(message)
        runs = call("GET", f"/v1/threads/{t}/runs")["data"]
        assert len(runs) == 4
        assert {r["status"] for r in runs} == {"completed"}
        stored = call("POST", "/v1/responses", {"model": MODEL, "input": "Hi"})
        conversation = call("POST", "/v1/conversations", {})
        for _ in range(40):  # every worker answers them: the store and the bus are shared
            again = call("GET", f"/v1/responses/{stored['id']}")
            assert again["id"] == stored["id"]
            assert again["status"] == "completed"
            assert (
                call("GET", f"/v1/conversations/{conversation['id']}")["id"] == conversation["id"]
            )
            assert call("GET", f"/v1/threads/{t}")["id"] == t
            if seen == {0, 1}:
                break
        assert seen == {0, 1}, "one worker answered every request"


# --- 5. A bus needs a shared store -------------------------------------------------------------


def test_a_bus_without_a_shared_store_is_refused_at_startup(private_redis: PrivateRedis) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "oxiserve", "--port", "0", "--db", ":memory:",
         "--bus", private_redis.new_database(), "--no-access-log"],
        capture_output=True, timeout=BOUND,
    )  # fmt: skip
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.decode().splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert "--db" in lines[0]
    assert "Traceback" not in proc.stderr.decode()
    assert b"listening on" not in proc.stderr


async def start_and_stop(config: dict[str, Any]) -> None:
    server = Server(Config(port=0, access_log=False, **config))
    await server.start()
    await server.stop(timeout=0)


async def test_a_bus_without_a_shared_store_does_not_start_in_process(
    private_redis: PrivateRedis,
) -> None:
    from oxiserve.errors import StartupError

    config = {"db": ":memory:", "bus": private_redis.new_database()}
    # Refused by the Config (an invalid setting: ValueError) or when the server starts.
    with pytest.raises((StartupError, ValueError), match="--db"):
        await start_and_stop(config)


# --- 6. The bus goes down (last: it stops the session's Redis) ---------------------------------


def is_openai_error(response: httpx.Response) -> bool:
    body = response.json()
    return (
        isinstance(body, dict)
        and set(body) == {"error"}
        and (set(body["error"]) == {"message", "type", "code", "param"})
    )


async def test_bus_down_refuses_new_stateful_work_and_recovers(
    private_postgres: PrivatePostgres, private_redis: PrivateRedis
) -> None:
    db, bus = private_postgres.new_database(), private_redis.new_database()
    stopped = False
    try:
        async with (
            running(db=db, bus=bus, sim_itl_ms=20, sim_default_max_tokens=300) as server,
            http_for(server.url) as http,
        ):
            asst = await ok(await http.post("/v1/assistants", json={"model": MODEL}))
            thread = await ok(
                await http.post(
                    "/v1/threads", json={"messages": [{"role": "user", "content": "Go on."}]}
                )
            )
            t = thread["id"]
            streamed = bytearray()
            first_delta = asyncio.Event()

            async def stream_run() -> None:
                # No max_completion_tokens: a run cut by one ends incomplete, not completed.
                request = {"assistant_id": asst["id"], "stream": True}
                async with (
                    http_for(server.url) as own,
                    own.stream("POST", f"/v1/threads/{t}/runs", json=request) as response,
                ):
                    assert response.status_code == 200
                    async for chunk in response.aiter_bytes():
                        streamed.extend(chunk)
                        if b"event: thread.message.delta" in streamed:
                            first_delta.set()

            streaming = asyncio.create_task(stream_run())
            try:
                await asyncio.wait_for(first_delta.wait(), TIMEOUT)
                private_redis.stop()
                stopped = True

                # Within a few seconds, new stateful work is refused.
                deadline = time.monotonic() + BOUND
                while True:
                    refused = await http.post("/v1/threads", json={})
                    if refused.status_code == 503:
                        break
                    assert time.monotonic() < deadline, (refused.status_code, refused.text)
                    await asyncio.sleep(0.05)
                new_run = await http.post(
                    f"/v1/threads/{t}/runs", json={"assistant_id": asst["id"]}
                )
                stored = await http.post(
                    "/v1/responses", json={"model": MODEL, "input": "Hi", "store": True}
                )
                for answer in (refused, new_run, stored):
                    assert answer.status_code == 503, (answer.request.url, answer.text)
                    assert "retry-after" in answer.headers
                    assert is_openai_error(answer), answer.text
                # What needs no shared state is served as ever.
                assert (await http.get("/v1/models")).status_code == 200
                chat = await http.post(
                    "/v1/chat/completions",
                    json={
                        "model": MODEL,
                        "max_tokens": 5,
                        "messages": [{"role": "user", "content": "Hi"}],
                    },
                )
                assert chat.status_code == 200, chat.text
                # The run this replica runs and streams goes on to its end.
                await asyncio.wait_for(streaming, BOUND)
            finally:
                await cancelled(streaming)
            events = parse_sse(bytes(streamed))
            assert [name for name, _ in events[-2:]] == ["thread.run.completed", "done"]
            (completed,) = of(events, "thread.message.completed")
            assert joined_deltas(events) == message_text(completed)
            run = events[-2][1]
            assert run["usage"]["completion_tokens"] == 300

            private_redis.start()
            stopped = False
            deadline = time.monotonic() + BOUND
            while (again := await http.post("/v1/threads", json={})).status_code != 200:
                assert again.status_code == 503, again.text
                assert time.monotonic() < deadline, "stateful requests did not come back"
                await asyncio.sleep(0.05)
            (kept,) = await run_messages(http, t, run["id"])
            assert message_text(kept) == message_text(completed)
            assert (await ok(await http.get(f"/v1/threads/{t}/runs/{run['id']}")))[
                "status"
            ] == "completed"
            later = await ok(
                await http.post(
                    f"/v1/threads/{t}/runs",
                    json={"assistant_id": asst["id"]},
                )
            )
            done = await poll(
                http, f"/v1/threads/{t}/runs/{later['id']}", lambda r: r["status"] in TERMINAL
            )
            assert done["status"] == "completed"
    finally:
        if stopped:
            private_redis.start()
