"""Responses-API scenarios: streamed responses, and resuming a background response's stream.

``responses-stream`` is ``POST /v1/responses`` with ``stream: true`` (one token per
``response.output_text.delta``).  ``resume-ring`` and ``resume-lagged`` each create a
background streamed response, read it to the end, then time ``GET /v1/responses/{id}?stream=true
&starting_after=N`` to its first byte: with N a few events before the end (still in the
server's ring) and with N near the start (the ring has wrapped: the server rebuilds the missed
text as one catch-up delta).  The resumed text must complete the text read before N exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from time import perf_counter
from typing import ClassVar

import orjson

from bench.client import HTTPConnection, ResponseHead, SSESplitter, parse_frame
from bench.scenarios import NotAvailable, Scenario
from bench.stats import RequestResult

_MISSING = (404, 405)
_FAILED = frozenset({"error", "response.failed"})


@dataclass(slots=True)
class Events:
    """What reading one response stream gave: (sequence number, delta) of each text delta."""

    deltas: list[tuple[int, str]] = field(default_factory=list)
    last_seq: int = -1
    response_id: str | None = None


async def consume_response_stream(
    conn: HTTPConnection, head: ResponseHead, result: RequestResult, *, timed: bool = True
) -> Events:
    events = Events()
    splitter = SSESplitter()
    last = 0.0
    ended = False
    async for block in conn.iter_body(head):
        now = perf_counter()
        for frame in splitter.feed(block):
            event = parse_frame(frame)
            if event is None:
                continue
            obj = orjson.loads(event.data)
            result.events += 1
            events.last_seq = int(obj.get("sequence_number", events.last_seq))
            kind = obj.get("type", event.event)
            if kind == "response.created":
                events.response_id = obj["response"]["id"]
            elif kind == "response.output_text.delta":
                events.deltas.append((events.last_seq, obj["delta"]))
                if timed:
                    if len(events.deltas) > 1:
                        result.itl.append(now - last)
                    else:
                        result.ttft = now - result.start
                last = now
            elif kind in _FAILED:
                result.error = "stream_error"
            elif kind in ("response.completed", "response.incomplete"):
                ended = True
    result.tokens = len(events.deltas)
    if result.error is None and (not ended or splitter.pending):
        result.error = "stream_incomplete"
    return events


class ResponsesStream(Scenario):
    name = "responses-stream"
    description = "POST /v1/responses, stream true (Responses API)"
    streams = True
    optional_api = ("POST", "/v1/responses")

    def build(self, *, fail: bool) -> bytes:
        w = self.workload
        body = {"model": w.model, "input": w.prompt(), "stream": True,
                "max_output_tokens": w.max_tokens}  # fmt: skip
        return self.request("POST", "/v1/responses", body, fail=fail)

    async def consume(
        self, conn: HTTPConnection, head: ResponseHead, result: RequestResult
    ) -> None:
        await consume_response_stream(conn, head, result)


class ResumeRing(Scenario):
    """Resume a finished background stream a few events before its end (see the module)."""

    name = "resume-ring"
    description = "GET /v1/responses/{id}?stream=true&starting_after=N, N still in the ring"
    streams = True
    lagged: ClassVar[bool] = False

    def build(self, *, fail: bool) -> bytes:
        w = self.workload
        body = {"model": w.model, "input": w.prompt(), "stream": True, "background": True,
                "max_output_tokens": w.max_tokens}  # fmt: skip
        return self.request("POST", "/v1/responses", body, fail=fail)

    async def execute(
        self, conn: HTTPConnection, result: RequestResult, index: int
    ) -> list[RequestResult]:
        conn.send(self.request_for(index))
        head = await conn.read_head()
        if head.status >= 400:
            await conn.read_body(head)
            if head.status in _MISSING:
                raise NotAvailable("POST", "/v1/responses", head.status)
            result.status, result.error = head.status, f"status:{head.status}"
            result.end = perf_counter()
            return []
        first = await consume_response_stream(conn, head, RequestResult(perf_counter()))
        after = min(8, first.last_seq) if self.lagged else max(0, first.last_seq - 8)
        path = f"/v1/responses/{first.response_id}?stream=true&starting_after={after}"
        result.start = perf_counter()  # the measure: the resume request alone
        conn.send(self.request("GET", path))
        head = await conn.read_head()
        result.ttfb = perf_counter() - result.start
        result.status = head.status
        if head.status >= 400:
            await conn.read_body(head)
            result.error = f"status:{head.status}"
        else:
            rest = await consume_response_stream(conn, head, result, timed=False)
            kept = "".join(text for seq, text in first.deltas if seq <= after)
            resumed = "".join(text for _, text in rest.deltas)
            if result.error is None and kept + resumed != "".join(t for _, t in first.deltas):
                result.error = "text_mismatch"
            if rest.deltas and rest.deltas[0][0] <= after:
                result.error = "sequence_number"
        result.end = perf_counter()
        return []


class ResumeLagged(ResumeRing):
    name = "resume-lagged"
    description = "GET /v1/responses/{id}?stream=true&starting_after=N, N older than the ring"
    lagged = True
