"""Assistants runs under stress: a killed process, lagging and late readers, expiry, shutdown,
cancel, disconnects and rejected requests leave the runs, steps and messages exactly right."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from oxiserve import Config, Server
from tests.conftest import TIMEOUT, RawClient, running, shrink_server_send_buffer, wait_until
from tests.test_assistants_events import (
    BETA,
    FORCE_WEATHER,
    MODEL,
    TEXT_RUN,
    WEATHER,
    Event,
    assistant_and_thread,
    of,
    parse_sse,
    post,
    shape,
    stream,
    text_of,
)

TERMINAL = {"completed", "failed", "cancelled", "expired", "incomplete"}


def joined_deltas(events: list[Event]) -> str:
    return "".join(
        d["delta"]["content"][0]["text"]["value"] for d in of(events, "thread.message.delta")
    )


def check_deltas_follow_created(events: list[Event]) -> None:
    names = [name for name, _ in events]
    created = names.index("thread.message.created")
    assert all(i > created for i, name in enumerate(names) if name == "thread.message.delta")


async def get(http: httpx.AsyncClient, path: str) -> dict[str, Any]:
    response = await http.get(path)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


async def poll(
    http: httpx.AsyncClient,
    path: str,
    done: Callable[[dict[str, Any]], bool],
    timeout: float = TIMEOUT,
) -> dict[str, Any]:
    """GET ``path`` until ``done(body)`` (bounded in time); the last body. Each round is one
    HTTP round trip to a server on this loop, so no sleep is needed between rounds."""
    deadline = time.monotonic() + timeout
    while True:
        body = await get(http, path)
        if done(body):
            return body
        assert time.monotonic() < deadline, f"timed out polling {path}: {body}"


async def run_messages(http: httpx.AsyncClient, thread_id: str, run_id: str) -> list[Any]:
    page = await get(http, f"/v1/threads/{thread_id}/messages?run_id={run_id}")
    data: list[Any] = page["data"]
    return data


def client_for(server: Server) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=server.url, headers=BETA, timeout=TIMEOUT)


# --- 1. SIGKILL mid-run ----------------------------------------------------------------------


def start_process(db: Path) -> tuple[subprocess.Popen[bytes], str, list[str]]:
    """``python -m oxiserve`` on ``db``; its URL (from the startup line) and the lines logged
    before it (recovery warnings)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OXISERVE_ACCESS_LOG": "false"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "oxiserve", "--port", "0", "--db", str(db), "--sim-itl-ms", "5",
         "--log-level", "warning"],
        stderr=subprocess.PIPE, env=env,
    )  # fmt: skip
    assert proc.stderr is not None
    before: list[str] = []
    for _ in range(20):
        line = proc.stderr.readline().decode()
        match = re.match(r"oxiserve listening on (http://127\.0\.0\.1:\d+) ", line)
        if match is not None:
            return proc, match.group(1), before
        before.append(line)
        if not line:  # the process ended
            break
    stop_process(proc)
    raise AssertionError(f"no startup line: {before}")


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=TIMEOUT)
    if proc.stderr is not None:
        proc.stderr.close()


def sync_poll(
    http: httpx.Client, path: str, done: Callable[[Any], bool], timeout: float = 10.0
) -> Any:
    """GET ``path`` until ``done(body)``, bounded in time. The server is another process: there
    is no event to wait on, so this polls, 10 ms apart (as the SDK's poll helpers do)."""
    deadline = time.monotonic() + timeout
    while True:
        response = http.get(path)
        assert response.status_code == 200, response.text
        body = response.json()
        if done(body):
            return body
        assert time.monotonic() < deadline, f"timed out polling {path}: {body}"
        time.sleep(0.01)


def test_sigkill_mid_run_keeps_finished_work_and_fails_the_interrupted_run(
    tmp_path: Path,
) -> None:
    db = tmp_path / "x.db"
    proc, url, _ = start_process(db)
    try:
        with httpx.Client(base_url=url, headers=BETA, timeout=TIMEOUT) as http:
            asst = http.post("/v1/assistants", json={"model": MODEL, "name": "kept"}).json()
            thread = http.post(
                "/v1/threads", json={"messages": [{"role": "user", "content": "Hello there."}]}
            ).json()
            t = thread["id"]
            first = http.post(f"/v1/threads/{t}/runs", json={"assistant_id": asst["id"]}).json()
            first = sync_poll(
                http, f"/v1/threads/{t}/runs/{first['id']}", lambda r: r["status"] in TERMINAL
            )
            assert first["status"] == "completed"
            messages_before = http.get(f"/v1/threads/{t}/messages").json()
            assert len(messages_before["data"]) == 2
            long_run = http.post(
                f"/v1/threads/{t}/runs",
                json={"assistant_id": asst["id"], "max_completion_tokens": 5000},
            ).json()

            def checkpointed(page: dict[str, Any]) -> bool:
                mine = [m for m in page["data"] if m["run_id"] == long_run["id"]]
                return bool(mine) and mine[0]["status"] == "in_progress" and bool(text_of(mine[0]))

            page = sync_poll(
                http, f"/v1/threads/{t}/messages?run_id={long_run['id']}", checkpointed
            )
            checkpoint_text = text_of(page["data"][0])
        proc.kill()
        proc.wait(timeout=TIMEOUT)
    finally:
        stop_process(proc)

    proc, url, logged = start_process(db)
    try:
        assert any("1 runs left unfinished" in line for line in logged), logged
        with httpx.Client(base_url=url, headers=BETA, timeout=TIMEOUT) as http:
            assert http.get(f"/v1/assistants/{asst['id']}").json() == asst
            assert http.get(f"/v1/threads/{t}").json() == thread
            assert http.get(f"/v1/threads/{t}/runs/{first['id']}").json() == first
            messages_after = http.get(f"/v1/threads/{t}/messages?order=asc").json()["data"]
            kept = {m["id"]: m for m in messages_after}
            for message in messages_before["data"]:
                assert kept[message["id"]] == message
            run = http.get(f"/v1/threads/{t}/runs/{long_run['id']}").json()
            assert run["status"] == "failed"
            assert set(run["last_error"]) == {"code", "message"}
            assert run["last_error"]["code"] == "server_error"
            assert "restarted" in run["last_error"]["message"]
            assert run["failed_at"] is not None
            (message,) = [m for m in messages_after if m["run_id"] == long_run["id"]]
            assert message["status"] == "incomplete"
            assert message["incomplete_details"] == {"reason": "run_failed"}
            text = text_of(message)
            assert text
            assert text.startswith(checkpoint_text)
            steps = http.get(f"/v1/threads/{t}/runs/{long_run['id']}/steps").json()["data"]
            assert [s["status"] for s in steps] == ["failed"]
            assert steps[0]["step_details"]["message_creation"]["message_id"] == message["id"]
            again = http.post(f"/v1/threads/{t}/runs", json={"assistant_id": asst["id"]})
            assert again.status_code == 200, again.text
            done = sync_poll(
                http,
                f"/v1/threads/{t}/runs/{again.json()['id']}",
                lambda r: r["status"] in TERMINAL,
            )
            assert done["status"] == "completed"
    finally:
        stop_process(proc)


# --- 2. A reader lagging behind a tiny ring ----------------------------------------------------


async def test_lagging_reader_gets_every_token_exactly_once() -> None:
    async with running(
        stream_buffer=2, write_buffer_limit=1024, sim_itl_ms=1, sim_default_max_tokens=1000
    ) as server:
        assert server.state is not None
        assert server.state.runs is not None
        runs = server.state.runs
        async with client_for(server) as http:
            asst, thread = await assistant_and_thread(http)
        t = thread["id"]
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (server.host, server.port))
        reader, writer = await asyncio.open_connection(sock=sock)
        raw = RawClient(reader, writer)
        try:
            # The setup client's connection is closed: wait for it to go, so the raw
            # connection is the only one, whose send buffer is shrunk.
            await wait_until(lambda: len(server.context.connections) == 1)
            await shrink_server_send_buffer(server)
            body = f'{{"assistant_id":"{asst["id"]}","stream":true}}'.encode()
            await raw.send(
                f"POST /v1/threads/{t}/runs HTTP/1.1\r\nhost: x\r\nOpenAI-Beta: assistants=v2\r\n"
                f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n".encode()
                + body
            )
            # Nothing is read until the run has ended: only the kernel's small buffers hold
            # frames, so the 1000 tokens overrun the ring of 2 whatever the machine's speed.
            writer.transport.pause_reading()
            # The run's topic, held while the run is active (an ended run leaves memory).
            await wait_until(lambda: runs.active_run(t) is not None)
            run_id = runs.active_run(t)
            assert run_id is not None
            active = runs.get(run_id)
            assert active is not None
            topic = active.topic
            async with client_for(server) as watcher:
                run = await poll(
                    watcher, f"/v1/threads/{t}/runs/{run_id}", lambda r: r["status"] in TERMINAL
                )
                assert run["status"] == "completed"
                writer.transport.resume_reading()
                status, _, raw_body = await raw.read_response()
                # A lag is counted when the reader comes back to the ring and finds it overrun.
                assert topic.statistics().lagged > 0, "the ring was never overrun"
                assert status == 200
                (message,) = await run_messages(watcher, t, run_id)
        finally:
            await raw.close()
    events = parse_sse(raw_body)
    check_deltas_follow_created(events)
    assert joined_deltas(events) == text_of(message)
    assert message["status"] == "completed"
    assert run["usage"]["completion_tokens"] == 1000
    assert [name for name, _ in events[-2:]] == ["thread.run.completed", "done"]
    assert events[-1] == ("done", "[DONE]")


# --- 3. Re-attaching mid-run -------------------------------------------------------------------


async def attach(server: Server, path: str, attached: asyncio.Event) -> bytes:
    async with (
        client_for(server) as http,
        http.stream("GET", path) as response,
    ):
        assert response.status_code == 200
        attached.set()
        return await response.aread()


async def attached_or_failed(task: asyncio.Task[bytes], attached: asyncio.Event) -> None:
    """Wait until ``task`` has its response head, or raise what made it fail."""
    waiter = asyncio.create_task(attached.wait())
    try:
        await asyncio.wait({task, waiter}, timeout=TIMEOUT, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
    if task.done():
        task.result()  # the attach failed: its own error, not a timeout
    assert attached.is_set(), "no response head"


async def test_reattach_mid_run_from_two_clients_gets_the_whole_run() -> None:
    async with (
        running(sim_itl_ms=2, sim_default_max_tokens=1000) as server,
        client_for(server) as http,
    ):
        asst, thread = await assistant_and_thread(http)
        t = thread["id"]
        run = await post(http, f"/v1/threads/{t}/runs", {"assistant_id": asst["id"]})
        messages_path = f"/v1/threads/{t}/messages?run_id={run['id']}"

        def has_text(longer_than: int) -> Callable[[dict[str, Any]], bool]:
            return lambda page: bool(page["data"]) and len(text_of(page["data"][0])) > longer_than

        page = await poll(http, messages_path, has_text(0))
        seen = len(text_of(page["data"][0]))
        path = f"/v1/threads/{t}/runs/{run['id']}/stream"
        first_attached, second_attached = asyncio.Event(), asyncio.Event()
        first = asyncio.create_task(attach(server, path, first_attached))
        tasks = [first]
        try:
            await attached_or_failed(first, first_attached)
            await poll(http, messages_path, has_text(seen))  # the next checkpoint: later text
            status_at_second = (await get(http, f"/v1/threads/{t}/runs/{run['id']}"))["status"]
            second = asyncio.create_task(attach(server, path, second_attached))
            tasks.append(second)
            bodies = await asyncio.wait_for(asyncio.gather(first, second), TIMEOUT)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        (message,) = await run_messages(http, t, run["id"])
    assert status_at_second == "in_progress", "the second client attached after the run ended"
    assert message["status"] == "completed"
    for body in bodies:
        events = parse_sse(body)
        assert shape(events) == TEXT_RUN
        assert events[0][1]["id"] == run["id"]
        assert joined_deltas(events) == text_of(message)
        assert of(events, "thread.message.completed") == [message]


# --- 4. Expiry ---------------------------------------------------------------------------------


async def run_waiting_for_a_tool(
    http: httpx.AsyncClient,
) -> tuple[str, dict[str, Any], dict[str, Any], str]:
    """A streamed run that forces the weather tool, left waiting for its output:
    (thread id, the requires_action run, its one tool call, the run's path)."""
    asst, thread = await assistant_and_thread(http, tools=[WEATHER])
    t = thread["id"]
    events = await stream(
        http, f"/v1/threads/{t}/runs", {"assistant_id": asst["id"], "tool_choice": FORCE_WEATHER}
    )
    run = events[-2][1]
    assert run["status"] == "requires_action"
    (call,) = run["required_action"]["submit_tool_outputs"]["tool_calls"]
    return t, run, call, f"/v1/threads/{t}/runs/{run['id']}"


async def test_run_waiting_for_tool_outputs_expires() -> None:
    async with running(run_timeout=1.0) as server, client_for(server) as http:
        _, _, call, path = await run_waiting_for_a_tool(http)
        expired = await poll(http, path, lambda r: r["status"] != "requires_action")
        assert expired["status"] == "expired"
        assert expired["required_action"] is None
        response = await http.post(
            f"{path}/submit_tool_outputs",
            json={"tool_outputs": [{"tool_call_id": call["id"], "output": "sunny"}]},
        )
        assert response.status_code == 400, response.text
        assert response.json()["error"]["type"] == "invalid_request_error"
        assert (await get(http, path))["status"] == "expired"
        (step,) = (await get(http, f"{path}/steps"))["data"]
        assert (step["type"], step["status"]) == ("tool_calls", "expired")


async def test_slow_text_run_expires_with_its_message_incomplete() -> None:
    async with (
        running(run_timeout=1.0, sim_itl_ms=50, sim_default_max_tokens=1000) as server,
        client_for(server) as http,
    ):
        asst, thread = await assistant_and_thread(http)
        t = thread["id"]
        run = await post(http, f"/v1/threads/{t}/runs", {"assistant_id": asst["id"]})
        path = f"/v1/threads/{t}/runs/{run['id']}"
        run = await poll(http, path, lambda r: r["status"] in TERMINAL)
        assert run["status"] == "expired"
        (message,) = await run_messages(http, t, run["id"])
        (step,) = (await get(http, f"{path}/steps"))["data"]
    assert message["status"] == "incomplete"
    assert message["incomplete_details"] == {"reason": "run_expired"}
    assert text_of(message)
    assert step["status"] == "expired"
    assert 0 < run["usage"]["completion_tokens"] < 1000


# --- 5. Shutdown mid-run -----------------------------------------------------------------------


async def test_shutdown_mid_run_ends_the_stream_and_fails_the_run(tmp_path: Path) -> None:
    db = str(tmp_path / "x.db")
    config = Config(
        port=0, access_log=False, db=db, sim_itl_ms=5, shutdown_timeout=0.2,
        sim_default_max_tokens=5000,
    )  # fmt: skip
    server = Server(config)
    await server.start()
    stopping: asyncio.Task[None] | None = None
    try:
        async with client_for(server) as http:
            asst, thread = await assistant_and_thread(http)
            t = thread["id"]
            body = bytearray()
            request = {"assistant_id": asst["id"], "stream": True}
            async with http.stream("POST", f"/v1/threads/{t}/runs", json=request) as response:
                assert response.status_code == 200
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if stopping is None and body.count(b"event: thread.message.delta") >= 3:
                        stopping = asyncio.create_task(server.stop())
                # the stream ended by itself (httpx raises if the connection was dropped)
        assert stopping is not None
        await asyncio.wait_for(stopping, TIMEOUT)
    finally:
        if stopping is None:
            await server.stop(timeout=1.0)
        elif not stopping.done():
            stopping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await stopping
    events = parse_sse(bytes(body))
    names = [name for name, _ in events]
    assert names[-2:] == ["thread.run.failed", "done"]
    assert events[-1] == ("done", "[DONE]")
    assert "thread.message.incomplete" in names
    streamed_text = joined_deltas(events)
    run_id = events[0][1]["id"]
    async with running(db=db) as again, client_for(again) as http:
        run = await get(http, f"/v1/threads/{t}/runs/{run_id}")
        (message,) = await run_messages(http, t, run_id)
        (step,) = (await get(http, f"/v1/threads/{t}/runs/{run_id}/steps"))["data"]
    assert run["status"] == "failed"
    assert run["last_error"]["code"] == "server_error"
    assert run == events[-2][1]
    assert message["status"] == "incomplete"
    assert message["incomplete_details"] == {"reason": "run_failed"}
    assert text_of(message) == streamed_text
    assert step["status"] == "failed"


# --- 6. Cancel stops the engine ----------------------------------------------------------------


async def test_cancel_stops_the_generation() -> None:
    async with (
        running(sim_itl_ms=1, sim_default_max_tokens=50_000) as server,
        client_for(server) as http,
    ):
        assert server.state is not None
        engine: Any = server.state.engine
        asst, thread = await assistant_and_thread(http)
        t = thread["id"]
        run = await post(http, f"/v1/threads/{t}/runs", {"assistant_id": asst["id"]})
        await wait_until(lambda: engine.tokens_produced >= 20)
        cancelling = await post(http, f"/v1/threads/{t}/runs/{run['id']}/cancel", {})
        path = f"/v1/threads/{t}/runs/{run['id']}"
        run = await poll(http, path, lambda r: r["status"] in TERMINAL)
        assert run["status"] == "cancelled"
        before = engine.tokens_produced
        assert engine.active_generations == 0
        # Instead of sleeping: a chat completion of 50 tokens at 1 ms each keeps the loop
        # (and the simulator's driver, which steps every generation alike) busy for at least
        # 50 ms, long enough for a generation still running to make dozens of tokens. Only the
        # chat's own tokens may be counted meanwhile.
        chat = await http.post(
            "/v1/chat/completions",
            json={"model": MODEL, "max_tokens": 50,
                  "messages": [{"role": "user", "content": "Count."}]},
        )  # fmt: skip
        assert chat.status_code == 200, chat.text
        made = chat.json()["usage"]["completion_tokens"]
        assert made == 50
        assert engine.tokens_produced == before + made
        (message,) = await run_messages(http, t, run["id"])
        assert run["usage"]["completion_tokens"] < 50_000
    assert message["status"] == "incomplete"
    assert message["incomplete_details"] == {"reason": "run_cancelled"}
    # Cancel answers with the run as it is at once: cancelling (its leg ends it later).
    assert cancelling["status"] == "cancelling"


# --- 7. A client leaving does not cancel -------------------------------------------------------


async def test_client_disconnect_does_not_cancel_the_run() -> None:
    async with (
        running(sim_itl_ms=1, sim_default_max_tokens=300) as server,
        client_for(server) as http,
    ):
        asst = await post(http, "/v1/assistants", {"model": MODEL})
        threads = [
            await post(http, "/v1/threads", {"messages": [{"role": "user", "content": "Same."}]})
            for _ in range(2)
        ]
        # The same request on an identical thread, read to its end: the text to expect.
        reference = await stream(
            http, f"/v1/threads/{threads[0]['id']}/runs", {"assistant_id": asst["id"]}
        )
        expected = text_of(of(reference, "thread.message.completed")[0])
        t = threads[1]["id"]
        raw = await RawClient.connect(server)
        body = f'{{"assistant_id":"{asst["id"]}","stream":true}}'.encode()
        await raw.send(
            f"POST /v1/threads/{t}/runs HTTP/1.1\r\nhost: x\r\nOpenAI-Beta: assistants=v2\r\n"
            f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n".encode()
            + body
        )
        head = await asyncio.wait_for(raw.reader.readuntil(b"event: thread.run.created"), TIMEOUT)
        assert head.startswith(b"HTTP/1.1 200")
        seen = await asyncio.wait_for(raw.reader.readuntil(b"event: thread.message.delta"), TIMEOUT)
        assert b"thread.run.completed" not in seen
        await raw.close()
        runs = await get(http, f"/v1/threads/{t}/runs")
        (run,) = runs["data"]
        run = await poll(
            http, f"/v1/threads/{t}/runs/{run['id']}", lambda r: r["status"] in TERMINAL
        )
        (message,) = await run_messages(http, t, run["id"])
    assert run["status"] == "completed"
    assert run["usage"]["completion_tokens"] == 300
    assert message["status"] == "completed"
    assert text_of(message) == expected


# --- 8. A rejected request changes nothing -----------------------------------------------------


async def test_rejected_tool_outputs_leave_the_run_as_it_was() -> None:
    async with running() as server, client_for(server) as http:
        t, run, call, path = await run_waiting_for_a_tool(http)
        run_before = await get(http, path)
        steps_before = await get(http, f"{path}/steps")
        messages_before = await get(http, f"/v1/threads/{t}/messages")
        assert run_before == run
        for outputs in (
            [{"tool_call_id": "call_nope", "output": "x"}],
            [
                {"tool_call_id": call["id"], "output": "x"},
                {"tool_call_id": "call_nope", "output": "y"},
            ],
            [],
        ):
            response = await http.post(
                f"{path}/submit_tool_outputs", json={"tool_outputs": outputs}
            )
            assert response.status_code == 400, (outputs, response.text)
            assert await get(http, path) == run_before
            assert await get(http, f"{path}/steps") == steps_before
            assert await get(http, f"/v1/threads/{t}/messages") == messages_before
        response = await http.post(
            f"{path}/submit_tool_outputs",
            json={"tool_outputs": [{"tool_call_id": call["id"], "output": "12 C"}]},
        )
        assert response.status_code == 200, response.text
        done = await poll(http, path, lambda r: r["status"] in TERMINAL)
        steps = (await get(http, f"{path}/steps?order=asc"))["data"]
    assert done["status"] == "completed"
    assert [(s["type"], s["status"]) for s in steps] == [
        ("tool_calls", "completed"),
        ("message_creation", "completed"),
    ]
    (tool_call,) = steps[0]["step_details"]["tool_calls"]
    assert (tool_call["id"], tool_call["function"]["output"]) == (call["id"], "12 C")
