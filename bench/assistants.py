"""Assistants-API scenarios: streamed runs, and one run read by many re-attached subscribers.

Routes used (OpenAI's, plus one for re-attaching that OpenAI does not have):
``POST /v1/assistants``, ``POST /v1/threads/runs`` (create thread and run, ``stream: true``),
``POST /v1/threads``, ``POST /v1/threads/{thread_id}/runs`` and
``GET /v1/threads/{thread_id}/runs/{run_id}/stream`` (re-attach to a running run's stream).
A server that answers 404 or 405 to any of them gets a clean "endpoint not available" result.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from time import perf_counter
from typing import Any

import orjson

from bench.client import HTTPConnection, ResponseHead, SSESplitter, parse_frame
from bench.scenarios import (
    BadResponse,
    NotAvailable,
    Scenario,
    Target,
    Workload,
    record_failure,
)
from bench.stats import RequestResult

_MISSING = (404, 405)
_FAILED_EVENTS = frozenset({"error", "thread.run.failed", "thread.run.cancelled"})


@dataclass(slots=True)
class RunStreamState:
    """What reading one run's event stream produced besides the timing figures."""

    text: list[str] = field(default_factory=list)
    run: dict[str, Any] | None = None


def _delta_text(obj: dict[str, Any]) -> str:
    parts = obj.get("delta", {}).get("content") or []
    return "".join(p.get("text", {}).get("value", "") for p in parts if p.get("type") == "text")


async def consume_run_stream(
    conn: HTTPConnection,
    head: ResponseHead,
    result: RequestResult,
    on_created: Callable[[dict[str, Any]], None] | None = None,
) -> RunStreamState:
    """Read ``event: thread.*`` frames until ``event: done``; one delta event counts as a
    token unless the final run object reports ``usage.completion_tokens``."""
    state = RunStreamState()
    splitter = SSESplitter()
    last = 0.0
    deltas = 0
    usage: int | None = None
    done = False
    async for block in conn.iter_body(head):
        now = perf_counter()
        for frame in splitter.feed(block):
            event = parse_frame(frame)
            if event is None:
                continue
            if event.event == "done" or event.data == b"[DONE]":
                done = True
                continue
            result.events += 1
            obj = orjson.loads(event.data)
            if event.event == "thread.message.delta":
                state.text.append(_delta_text(obj))
                if deltas:
                    result.itl.append(now - last)
                else:
                    result.ttft = now - result.start
                last = now
                deltas += 1
            elif event.event == "thread.run.created":
                state.run = obj
                if on_created is not None:
                    on_created(obj)
            elif event.event in _FAILED_EVENTS:
                result.error = "stream_error"
            elif event.event == "thread.run.completed" and obj.get("usage"):
                usage = obj["usage"].get("completion_tokens")
    result.tokens = deltas if usage is None else usage
    if result.error is None and (not done or splitter.pending):
        result.error = "stream_incomplete"
    return state


class AssistantScenario(Scenario):
    """Shared setup: an assistant to run (created once, before the measured load)."""

    streams = True

    def __init__(self, target: Target, workload: Workload) -> None:
        super().__init__(target, workload)
        self.assistant_id = ""

    def headers(self) -> list[tuple[str, str]]:
        return [*super().headers(), ("openai-beta", "assistants=v2")]

    async def call(self, conn: HTTPConnection, method: str, path: str, body: Any) -> Any:
        """One JSON request; raises NotAvailable on 404/405 and BadResponse on other errors."""
        conn.send(self.request(method, path, body))
        head = await conn.read_head()
        data = await conn.read_body(head)
        if head.status in _MISSING:
            raise NotAvailable(method, path, head.status)
        if head.status >= 400:
            raise BadResponse(f"{method} {path}: status {head.status}: {data[:200]!r}")
        return orjson.loads(data)

    async def setup(self, conn: HTTPConnection) -> None:
        """Create the assistant; a server without ``/v1/assistants`` may still run threads
        (then the model name stands in for the id, and the run route decides)."""
        body = {"model": self.workload.model, "name": "oxiserve-bench"}
        try:
            created = await self.call(conn, "POST", "/v1/assistants", body)
        except NotAvailable:
            self.assistant_id = self.workload.model
        else:
            self.assistant_id = str(created["id"])

    async def open_stream(
        self, conn: HTTPConnection, result: RequestResult, request: bytes, method: str, path: str
    ) -> ResponseHead | None:
        """Send a streaming request; None (with ``result.error`` set) if it was refused."""
        conn.send(request)
        head = await conn.read_head()
        result.ttfb = perf_counter() - result.start
        result.status = head.status
        if head.status >= 400:
            await conn.read_body(head)
            if head.status in _MISSING:
                raise NotAvailable(method, path, head.status)
            result.error = f"status:{head.status}"
            return None
        return head

    async def consume(
        self, conn: HTTPConnection, head: ResponseHead, result: RequestResult
    ) -> None:
        await consume_run_stream(conn, head, result)


class RunsStream(AssistantScenario):
    name = "runs-stream"
    description = "POST /v1/threads/runs, stream true (Assistants API)"

    def build(self, *, fail: bool) -> bytes:
        w = self.workload
        body = {
            "assistant_id": self.assistant_id,
            "thread": {"messages": [{"role": "user", "content": w.prompt()}]},
            "stream": True,
            "max_completion_tokens": w.max_tokens,
        }
        return self.request("POST", "/v1/threads/runs", body, fail=fail)

    async def execute(
        self, conn: HTTPConnection, result: RequestResult, index: int
    ) -> list[RequestResult]:
        request = self.request_for(index)
        head = await self.open_stream(conn, result, request, "POST", "/v1/threads/runs")
        if head is not None:
            await consume_run_stream(conn, head, result)
        result.end = perf_counter()
        return []


class Fanout(AssistantScenario):
    """One streamed run per iteration, read live by ``workload.subscribers`` re-attached
    readers; every reader must end up with exactly the creator's text."""

    name = "fanout"
    description = "one run, N subscribers re-attached via GET .../runs/{id}/stream"

    def __init__(self, target: Target, workload: Workload) -> None:
        super().__init__(target, workload)
        # Each load connection has its own readers: concurrent runs never share a reader.
        self._readers: dict[int, list[HTTPConnection]] = {}

    def build(self, *, fail: bool) -> bytes:  # requests depend on the thread; see execute
        raise NotImplementedError

    async def _readers_of(self, conn: HTTPConnection) -> list[HTTPConnection]:
        readers = self._readers.get(id(conn))
        if readers is None:
            readers = self._readers[id(conn)] = []
            for _ in range(self.workload.subscribers):
                reader = HTTPConnection(self.target.host, self.target.port)
                await reader.connect()
                readers.append(reader)
        return readers

    async def close(self) -> None:
        for readers in self._readers.values():
            for reader in readers:
                await reader.close()

    async def execute(
        self, conn: HTTPConnection, result: RequestResult, index: int
    ) -> list[RequestResult]:
        w = self.workload
        connections = await self._readers_of(conn)  # made once per connection, not timed
        messages = [{"role": "user", "content": w.prompt()}]
        thread = await self.call(conn, "POST", "/v1/threads", {"messages": messages})
        path = f"/v1/threads/{thread['id']}/runs"
        body = {"assistant_id": self.assistant_id, "stream": True}
        request = self.request(
            "POST",
            path,
            body | {"max_completion_tokens": w.max_tokens},
            fail=w.injects_error(index),
        )
        result.start = perf_counter()
        head = await self.open_stream(conn, result, request, "POST", path)
        if head is None:
            result.end = perf_counter()
            return []
        readers: list[asyncio.Task[tuple[RequestResult, str]]] = []

        def attach(run: dict[str, Any]) -> None:
            route = f"{path}/{run['id']}/stream"
            readers.extend(asyncio.create_task(self._follow(c, route)) for c in connections)

        try:
            state = await consume_run_stream(conn, head, result, attach)
            followed = await asyncio.gather(*readers)
        finally:
            for task in readers:
                task.cancel()
        result.end = perf_counter()
        text = "".join(state.text)
        extra = []
        for sub, sub_text in followed:
            if sub.error is None and sub_text != text:
                sub.error = "text_mismatch"
            extra.append(sub)
        return extra

    async def _follow(self, conn: HTTPConnection, path: str) -> tuple[RequestResult, str]:
        result = RequestResult(perf_counter())
        text = ""
        try:
            await conn.ensure_connected()
            request = self.request("GET", path)
            head = await self.open_stream(conn, result, request, "GET", path)
            if head is not None:
                text = "".join((await consume_run_stream(conn, head, result)).text)
        except NotAvailable:
            raise
        except Exception as exc:
            await record_failure(exc, result, conn)
        result.end = perf_counter()
        return result, text
