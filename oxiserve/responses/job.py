"""One response being generated: engine tokens -> its events (topic) and the store.

The job is what the server's supervisor runs: attached for a plain (streamed or not) response,
so it stops when its reader leaves, detached in the background.  The stored response is
checkpointed while a background response generates; the final response (and, with a
conversation, its new items) is committed before the terminal event is published.

    job = ResponseJob(ctx, response, request, input_records)
    supervisor.start(job.run(), job.topic, ...)
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from oxiserve.broadcast import Topic
from oxiserve.config import Config
from oxiserve.engine.base import Engine, EngineError, GenerationRequest, TokenStream, Usage
from oxiserve.metrics import Metrics
from oxiserve.responses import objects
from oxiserve.responses.writer import TERMINAL_EVENTS, ResponseWriter, TopicChannel
from oxiserve.store.base import Kind, Record, Store

log = logging.getLogger("oxiserve.responses")

CHECKPOINT_SECONDS = 0.5
SHUT_DOWN = "The server shut down while the response was generated; create it again."
RESTARTED = "The server restarted while the response was generated; create it again."


LEASE_LOST = ("The replica generating the response stopped (its lease expired); create it "
              "again.")  # fmt: skip
UNFINISHED = ["queued", "in_progress"]


async def recover(store: Store) -> int:
    """At startup: responses a previous process left queued or in progress fail with a
    restart error (their text so far kept).  Returns how many."""
    unfinished = await fail_unfinished(store, RESTARTED)
    if unfinished:
        log.warning("%d responses left unfinished by the previous process failed", len(unfinished))
    return len(unfinished)


async def fail_unfinished(
    store: Store, message: str, only: str | None = None
) -> list[dict[str, Any]]:
    """Fail the stored unfinished responses (or only ``only``) with ``message``."""
    unfinished = list(await store.find(Kind.RESPONSE, UNFINISHED, limit=1_000_000, job=only))
    for response in unfinished:
        response.update(status="failed", error={"code": "server_error", "message": message})
        for item in response.get("output") or []:
            if item.get("status") == "in_progress":
                item["status"] = "incomplete"
    if unfinished:
        await store.put(*(response_record(r, "") for r in unfinished))
    return unfinished


async def lost(store: Store, response_id: str, seq: int) -> list[bytes]:
    """The bus says the replica generating ``response_id`` died: fail it in the store; the
    frame that ends its stream for readers elsewhere (numbered ``seq``)."""
    failed = await fail_unfinished(store, LEASE_LOST, only=response_id)
    if not failed:
        return []
    return [objects.event("response.failed", seq, response=objects.public(failed[0]))]


async def unfinished(store: Store) -> list[tuple[str, str, float]]:
    """The stored unfinished responses, for the bus's sweep: (kind, id, created_at)."""
    found = await store.find(Kind.RESPONSE, UNFINISHED, limit=100_000)
    return [("response", r["id"], float(r["created_at"])) for r in found]


@dataclass(slots=True)
class ResponseContext:
    config: Config
    engine: Engine
    store: Store
    metrics: Metrics | None = None


def response_record(response: dict[str, Any], owner: str) -> Record:
    return Record(Kind.RESPONSE, response["id"], response, status=response["status"],
                  owner=owner)  # fmt: skip


def item_record(parent: str, item: dict[str, Any], owner: str) -> Record:
    """An input item of a response, or an item of a conversation (``parent``)."""
    return Record(Kind.ITEM, f"{parent}/{item['id']}", item, parent=parent, owner=owner)


class ResponseJob:
    """See the module docstring.  ``error`` holds an engine failure that came before any
    output (a plain request answers it as an HTTP error, as chat completions do)."""

    def __init__(
        self,
        ctx: ResponseContext,
        response: dict[str, Any],
        request: GenerationRequest,
        *,
        owner: str = "",
        input_items: list[dict[str, Any]] | None = None,
        conversation_id: str | None = None,
    ) -> None:
        self._ctx = ctx
        self.response = response
        self._request = request
        self.owner = owner
        self._input_items = input_items or []
        self._conversation_id = conversation_id
        self.topic = Topic(ctx.config.stream_buffer, None, self._catch_up)
        if ctx.metrics is not None:
            self.topic.on_lag = ctx.metrics.lagged
        self.writer = ResponseWriter(TopicChannel(self.topic))
        self.error: EngineError | None = None
        self._stream: TokenStream | None = None
        self._cancelled = False
        self._abandoned = False  # another replica failed it: it ends failed here too
        self.deleted = False  # deleted while generating: nothing is stored any more
        self._pieces: list[str] = []

    def _catch_up(self, key: int, text: str, start: int) -> bytes:
        return self.writer.catch_up(key, text, start)

    async def cancel(self) -> None:
        """Stop generating; the response ends ``cancelled`` with the text so far."""
        self._cancelled = True
        if self._stream is not None:
            await self._stream.aclose()

    async def abandon(self) -> None:
        """Another replica failed this response (its lease lapsed while this one stalled):
        stop, and end as failed with the same error, so both say the same."""
        self._abandoned = True
        self.response["error"] = {"code": "server_error", "message": LEASE_LOST}
        await self.cancel()

    async def run(self) -> None:
        response = self.response
        self.writer.begin(response)
        response["status"] = "in_progress"
        try:
            await self._generate()
        except asyncio.CancelledError:
            if response["background"]:  # only a shutdown cancels a background job's task
                response["error"] = {"code": "server_error", "message": SHUT_DOWN}
            else:  # its reader left: the response is cancelled with the text so far
                self._cancelled = True
            await asyncio.shield(self._end())
            raise
        except EngineError as exc:
            if not response["output"] and not self._pieces:
                self.error = exc
            code = "rate_limit_exceeded" if exc.status == 429 else "server_error"
            response["error"] = {"code": code, "message": exc.message}
            await self._end()
        except Exception:
            log.exception("response %s failed", response["id"])
            response["error"] = {"code": "server_error",
                                 "message": "The engine failed while generating."}  # fmt: skip
            await self._end()

    async def _generate(self) -> None:
        response, writer = self.response, self.writer
        stream = self._stream = self._ctx.engine.generate(self._request)
        loop = asyncio.get_running_loop()
        started, first = loop.time(), None
        next_checkpoint = loop.time() + CHECKPOINT_SECONDS
        if response["background"]:  # in_progress for every replica that reads the store
            await self._checkpoint()
        try:
            async for piece in stream:
                if self._cancelled:
                    break
                if not self._pieces:
                    first = loop.time()
                    writer.open_message(0, objects.new_id("msg"))
                self._pieces.append(piece)
                writer.text(0, piece)
                if response["background"] and loop.time() >= next_checkpoint:
                    next_checkpoint = loop.time() + CHECKPOINT_SECONDS
                    await self._checkpoint()
        finally:
            await stream.aclose()
        usage = stream.usage
        if self._ctx.metrics is not None:
            now = loop.time()
            self._ctx.metrics.generation(
                response["model"], prompt=usage.prompt_tokens, generated=usage.completion_tokens,
                ttft=(first or now) - started, e2e=now - started,
                finish=stream.finish_reason or "abort",
                queue=float(getattr(stream, "queue_time", 0.0)),
            )  # fmt: skip
        response["usage"] = objects.usage_object(
            Usage(usage.prompt_tokens, usage.completion_tokens)
        )
        if self._pieces:
            self._close_message("completed")
        for call in stream.tool_calls:
            index = len(response["output"])
            response["output"].append(writer.function_call(index, objects.new_id("fc"), call))
        limit = response.get("max_output_tokens")
        if stream.finish_reason == "length" and limit is not None and not self._cancelled:
            response["incomplete_details"] = {"reason": "max_output_tokens"}
            if self._pieces:
                response["output"][0]["status"] = "incomplete"
        await self._end()

    def _close_message(self, status: str) -> None:
        if self.response["output"] and self.response["output"][0].get("type") == "message":
            return  # closed already
        text = "".join(self._pieces)
        self.response["output"].insert(0, self.writer.close_message(0, text, status))

    async def _checkpoint(self) -> None:
        if not self.response["store"] or self.deleted:
            return
        partial = dict(self.response)
        if self._pieces:
            text = "".join(self._pieces)
            item = objects.message_item(self.writer.item_id(0), text, "in_progress")
            partial["output"] = [item]
        await self._ctx.store.put(response_record(partial, self.owner))

    async def _end(self) -> None:
        """The terminal status: stored first, then published, then the topic closes."""
        response = self.response
        if self.topic.closed:
            return
        if self._pieces and not response["output"]:
            self._close_message("incomplete")
        if self._cancelled and not self._abandoned:
            response["status"] = "cancelled"
        elif response["error"] is not None:
            response["status"] = "failed"
        elif response["incomplete_details"] is not None:
            response["status"] = "incomplete"
        else:
            response["status"] = "completed"
            response["completed_at"] = objects.now()
        if response["store"] and not self.deleted:
            response["_layout"] = self.writer.layout()
            records = [response_record(response, self.owner)]
            if self._conversation_id is not None and response["status"] == "completed":
                records += [item_record(self._conversation_id, item, self.owner)
                            for item in [*self._input_items, *response["output"]]]  # fmt: skip
            try:
                await self._ctx.store.put(*records)
            except Exception:
                log.exception("response %s: could not store its end", response["id"])
        kind = TERMINAL_EVENTS.get(response["status"])
        if kind is not None:
            self.writer.finish(kind, response)
        self.topic.close()
        # A retained job keeps its topic and writer (for resumed readers), nothing else.
        self._stream, self._pieces = None, []
