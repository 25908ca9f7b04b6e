"""One leg of a run: the thread rendered for the engine, tokens to the run's topic and the store.

A leg starts queued and ends completed, incomplete, failed, cancelled, expired or, when the
model calls function tools, requires_action (the next leg starts when the outputs arrive).
Every status change goes through :func:`~oxiserve.runs.states.advance`, is stored, then
published; the final message, step and run are committed in one transaction before the
terminal event is published, so a client that saw ``thread.run.completed`` finds the message.

    leg = RunLeg(ctx, active, on_end)    # active: the run's in-memory record (ActiveRun)
    await leg.run()                      # the detached job's coroutine
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from oxiserve.broadcast import Topic
from oxiserve.config import Config
from oxiserve.engine.base import (
    ChatMessage,
    Engine,
    EngineError,
    GenerationRequest,
    ResponseFormat,
    TokenStream,
    ToolCall,
    ToolSpec,
    Usage,
    chatml,
)
from oxiserve.http import sse
from oxiserve.metrics import Metrics
from oxiserve.runs import objects
from oxiserve.runs.states import RunStatus, advance
from oxiserve.store.base import Kind, Record, Store

log = logging.getLogger("oxiserve.runs")

CHECKPOINT_SECONDS = 0.5  # the longest a streaming message's stored text lags behind
MAX_THREAD_MESSAGES = 1000  # the newest a run reads of its thread


@dataclass(slots=True)
class RunContext:
    """What every run shares: the server's settings, engine and store."""

    config: Config
    engine: Engine
    store: Store
    metrics: Metrics | None = None


@dataclass(slots=True)
class ActiveRun:
    """A run that has not ended: its stored object, its current leg's topic and the leg's
    generation (so cancel can stop it), and the tool calls it waits for."""

    run: dict[str, Any]
    assistant: dict[str, Any]
    topic: Topic
    owner: str = ""
    stream: TokenStream | None = None
    stop_as: RunStatus | None = None  # cancel or expiry asked the leg to end this way
    pending_calls: list[ToolCall] = field(default_factory=list)
    tool_step: dict[str, Any] | None = None
    history: list[ChatMessage] = field(default_factory=list)  # tool turns of earlier legs
    usage: Usage = field(default_factory=Usage)
    legs: int = 0
    tool_usage: Usage | None = None
    headers: dict[str, str] = field(default_factory=dict)  # for the engine (x-sim-error)
    # The current leg's messages by text key: the leg writes it, its topic's lag recovery
    # reads it (so both must hold this one dict; ``new_leg`` replaces the pair).
    message_ids: dict[int, str] = field(default_factory=dict)

    def new_leg(self, capacity: int) -> Topic:
        """A fresh topic (and message index) for the next leg."""
        ids: dict[int, str] = {}
        self.message_ids = ids
        self.topic = Topic(capacity, lambda key, text: objects.message_delta(ids[key], text))
        return self.topic

    @property
    def status(self) -> RunStatus:
        return RunStatus(self.run["status"])


class RunLeg:
    """Runs one leg of an :class:`ActiveRun` (see the module docstring)."""

    def __init__(
        self,
        ctx: RunContext,
        active: ActiveRun,
        on_end: Callable[[ActiveRun], None],
    ) -> None:
        self._ctx = ctx
        self._active = active
        self._message_ids = active.message_ids  # this leg's (its topic reads the same dict)
        self._on_end = on_end
        self._message: dict[str, Any] | None = None
        self._step: dict[str, Any] | None = None
        self._pieces: list[str] = []
        self._first_token: float | None = None

    async def run(self) -> None:
        active = self._active
        active.legs += 1
        try:
            await self._generate()
        except asyncio.CancelledError:
            # The server is shutting down (a cancel request stops the stream instead).
            await asyncio.shield(self._fail("server_error", "The server shut down during the run."))
            raise
        except EngineError as exc:
            code = "rate_limit_exceeded" if exc.status == 429 else "server_error"
            await self._fail(code, exc.message)
        except Exception:
            log.exception("run %s failed", active.run["id"])
            await self._fail("server_error", "The engine failed while generating.")
        finally:
            if active.status is not RunStatus.REQUIRES_ACTION or active.topic.closed:
                self._on_end(active)

    # --- the leg -----------------------------------------------------------------------------

    async def _generate(self) -> None:
        active, run = self._active, self._active.run
        if active.stop_as is not None:  # cancelled or expired while queued
            await self._stopped()
            return
        run["started_at"] = run["started_at"] or objects.now()
        await self._move(RunStatus.IN_PROGRESS)
        request = await self._request()
        if request is None:
            return
        loop = asyncio.get_running_loop()
        started = loop.time()
        stream = active.stream = self._ctx.engine.generate(request)
        try:
            await self._stream_text(stream)
        finally:
            await stream.aclose()
            active.stream = None
        if self._ctx.metrics is not None:
            now = loop.time()
            first = self._first_token if self._first_token is not None else now
            self._ctx.metrics.generation(
                run["model"], prompt=stream.usage.prompt_tokens,
                generated=stream.usage.completion_tokens, ttft=first - started, e2e=now - started,
                finish=stream.finish_reason or "abort",
                queue=float(getattr(stream, "queue_time", 0.0)),
            )  # fmt: skip
        active.usage = Usage(
            active.usage.prompt_tokens + stream.usage.prompt_tokens,
            active.usage.completion_tokens + stream.usage.completion_tokens,
        )
        if active.stop_as is not None:
            await self._stopped()
        elif stream.tool_calls:
            await self._require_action(stream.tool_calls, stream.usage)
        else:
            await self._complete(stream)

    async def _stream_text(self, stream: TokenStream) -> None:
        topic = self._active.topic
        loop = asyncio.get_running_loop()
        next_checkpoint = loop.time() + CHECKPOINT_SECONDS
        prefix = suffix = b""
        active = self._active
        async for text in stream:
            if active.stop_as is not None:  # cancel or expiry came before the stream existed
                break
            if self._message is None:
                self._first_token = loop.time()
                await self._open_message()
                prefix, suffix = objects.delta_template(self._message_ids[0])
            self._pieces.append(text)
            topic.publish_text(text, 0, prefix + orjson.dumps(text) + suffix)
            if loop.time() >= next_checkpoint:
                next_checkpoint = loop.time() + CHECKPOINT_SECONDS
                await self._checkpoint()

    async def _request(self) -> GenerationRequest | None:
        """The engine's input: instructions, the thread's messages (truncated as the run says)
        and earlier legs' tool turns; None if even that cannot fit ``max_prompt_tokens``."""
        active, run = self._active, self._active.run
        page = await self._ctx.store.list(
            Kind.MESSAGE, run["thread_id"], limit=MAX_THREAD_MESSAGES, order="desc",
            owner=active.owner,
        )  # fmt: skip
        thread = [
            ChatMessage(m["role"], objects.message_text(m))
            for m in reversed(page.data)
            if m["status"] != "in_progress" or m.get("run_id") != run["id"]
        ]
        strategy = run.get("truncation_strategy") or {}
        if strategy.get("type") == "last_messages" and strategy.get("last_messages"):
            thread = thread[-int(strategy["last_messages"]) :]
        instructions = run.get("instructions") or ""
        system = [ChatMessage("system", instructions)] if instructions else []
        count = self._ctx.engine.count_tokens
        limit = run.get("max_prompt_tokens")
        messages = [*system, *thread, *active.history]
        while limit and len(thread) > 1 and count(chatml(messages)) > limit:
            thread = thread[1:]  # the oldest turns go first, as OpenAI's "auto" truncation
            messages = [*system, *thread, *active.history]
        prompt = chatml(messages)
        prompt_tokens = count(prompt)
        if limit and prompt_tokens > limit:
            await self._incomplete("max_prompt_tokens")
            return None
        return GenerationRequest(
            model=run["model"],
            prompt=prompt,
            messages=tuple(messages),
            max_tokens=self._token_budget(),
            temperature=run.get("temperature"),
            top_p=run.get("top_p"),
            tools=function_tools(run.get("tools") or []),
            tool_choice=self._tool_choice()[0],
            forced_tool=self._tool_choice()[1],
            response_format=response_format(run.get("response_format")),
            headers=active.headers,
            prompt_tokens=prompt_tokens,
        )

    def _token_budget(self) -> int | None:
        limit = self._active.run.get("max_completion_tokens")
        if limit is None:
            return None
        return max(0, int(limit) - self._active.usage.completion_tokens)

    def _tool_choice(self) -> tuple[str | None, str | None]:
        run = self._active.run
        if not function_tools(run.get("tools") or []):
            return None, None
        if self._active.history:  # a leg after tool outputs: the model answers them
            return "auto", None
        choice = run.get("tool_choice") or "auto"
        if isinstance(choice, dict):
            name = (choice.get("function") or {}).get("name")
            if choice.get("type") == "function":
                return "required", name
            return "none", None  # file_search / code_interpreter: no function is called
        return str(choice), None

    # --- what the stream produced -------------------------------------------------------------

    async def _open_message(self) -> None:
        run = self._active.run
        message = self._message = objects.message_object(
            run["thread_id"], "assistant", objects.text_content(""),
            assistant_id=run["assistant_id"], run_id=run["id"], status="in_progress",
        )  # fmt: skip
        message["content"] = []
        self._message_ids[0] = message["id"]
        step = self._step = objects.step_object(
            run, "message_creation", objects.message_step_details(message["id"])
        )
        await self._ctx.store.put(self._step_record(step), self._message_record())
        topic = self._active.topic
        topic.publish(objects.event("thread.run.step.created", step))
        topic.publish(objects.event("thread.run.step.in_progress", step))
        topic.publish(objects.event("thread.message.created", message))
        topic.publish(objects.event("thread.message.in_progress", message))

    async def _checkpoint(self) -> None:
        assert self._message is not None
        self._message["content"] = objects.text_content("".join(self._pieces))
        await self._ctx.store.put(self._message_record())

    async def _complete(self, stream: TokenStream) -> None:
        run = self._active.run
        cut = stream.finish_reason == "length" and run.get("max_completion_tokens") is not None
        if self._message is None:  # nothing was said: still a (empty) message, as OpenAI
            await self._open_message()
        records = self._close_message("incomplete" if cut else "completed", "max_tokens")
        assert self._step is not None
        self._finish_step("completed", stream.usage)
        records.append(self._step_record(self._step))
        if cut:
            run["incomplete_details"] = {"reason": "max_completion_tokens"}
        target = RunStatus.INCOMPLETE if cut else RunStatus.COMPLETED
        await self._end(target, records, message_event="incomplete" if cut else "completed")

    async def _require_action(self, calls: list[ToolCall], usage: Usage) -> None:
        active, run = self._active, self._active.run
        records: list[Record] = []
        if self._message is not None:  # text before the calls: that message is done
            records = self._close_message("completed", "")
            assert self._step is not None
            self._finish_step("completed", None)
            records.append(self._step_record(self._step))
        step = objects.step_object(run, "tool_calls", objects.tool_step_details([]))
        topic = active.topic
        topic.publish(objects.event("thread.run.step.created", step))
        topic.publish(objects.event("thread.run.step.in_progress", step))
        for index, call in enumerate(calls):
            first = {"index": index, "id": call.id, "type": "function",
                     "function": {"name": call.name, "arguments": "", "output": None}}  # fmt: skip
            topic.publish(objects.step_delta(step["id"], first))
            for piece in _fragments(call.arguments):
                part = {"index": index, "type": "function", "function": {"arguments": piece}}
                topic.publish(objects.step_delta(step["id"], part))
        step["step_details"] = objects.tool_step_details(
            [objects.tool_call_object(call) for call in calls]
        )
        active.tool_step, active.pending_calls = step, list(calls)
        active.tool_usage = usage  # the step's, once it completes (null while in progress)
        run["required_action"] = {
            "type": "submit_tool_outputs",
            "submit_tool_outputs": {
                "tool_calls": [
                    {"id": c.id, "type": "function",
                     "function": {"name": c.name, "arguments": c.arguments}}
                    for c in calls
                ]
            },
        }  # fmt: skip
        run["status"] = advance(active.status, RunStatus.REQUIRES_ACTION)
        run["usage"] = objects.usage_object(active.usage)
        await self._ctx.store.put(*records, self._step_record(step), self._run_record())
        topic.publish(objects.event("thread.run.requires_action", run))
        topic.close(sse.EVENT_DONE)

    async def _incomplete(self, reason: str) -> None:
        self._active.run["incomplete_details"] = {"reason": reason}
        await self._end(RunStatus.INCOMPLETE, [], message_event="")

    async def _stopped(self) -> None:
        """End as cancel or expiry asked: the partial message is kept, incomplete."""
        active = self._active
        target = active.stop_as or RunStatus.CANCELLED
        reason = {RunStatus.CANCELLED: "run_cancelled", RunStatus.FAILED: "run_failed"}.get(
            target, "run_expired"
        )
        records: list[Record] = []
        event = ""
        if self._message is not None:
            records = self._close_message("incomplete", reason)
            event = "incomplete"
        if self._step is not None:
            ends = {RunStatus.CANCELLED: "cancelled", RunStatus.FAILED: "failed"}
            self._finish_step(ends.get(target, "expired"), None)
            records.append(self._step_record(self._step))
        if active.status is RunStatus.QUEUED and target is RunStatus.CANCELLED:
            pass  # queued -> cancelled directly
        elif active.status is not RunStatus.CANCELLING and target is RunStatus.CANCELLED:
            active.run["status"] = advance(active.status, RunStatus.CANCELLING)
        await self._end(target, records, message_event=event)

    async def _fail(self, code: str, message: str) -> None:
        active = self._active
        if active.topic.closed or active.status not in _FAILABLE:
            return
        active.run["last_error"] = {"code": code, "message": message}
        records: list[Record] = []
        event = ""
        if self._message is not None:
            records = self._close_message("incomplete", "run_failed")
            event = "incomplete"
        if self._step is not None:
            self._step["last_error"] = active.run["last_error"]
            self._finish_step("failed", None)
            records.append(self._step_record(self._step))
        try:
            await self._end(RunStatus.FAILED, records, message_event=event)
        except Exception:
            log.exception("run %s: could not store its failure", active.run["id"])
            active.topic.close(objects.error_event("server_error", message) + sse.EVENT_DONE)

    async def _end(self, target: RunStatus, records: list[Record], *, message_event: str) -> None:
        """Commit the run's terminal status with ``records``, then publish the events."""
        active, run = self._active, self._active.run
        run["status"] = advance(active.status, target)
        stamp = {RunStatus.COMPLETED: "completed_at", RunStatus.FAILED: "failed_at",
                 RunStatus.CANCELLED: "cancelled_at", RunStatus.INCOMPLETE: "completed_at",
                 RunStatus.EXPIRED: "expired_at"}.get(target)  # fmt: skip
        if stamp == "expired_at":
            run["expires_at"] = objects.now()
        elif stamp is not None:
            run[stamp] = objects.now()
        run["required_action"] = None
        run["usage"] = objects.usage_object(active.usage)
        await self._ctx.store.put(*records, self._run_record())  # durable before it is told
        topic = active.topic
        if self._message is not None and message_event:
            topic.publish(objects.event(f"thread.message.{message_event}", self._message))
        if self._step is not None:
            topic.publish(objects.event(f"thread.run.step.{self._step['status']}", self._step))
        topic.publish(objects.event(f"thread.run.{run['status']}", run))
        topic.close(sse.EVENT_DONE)

    async def _move(self, target: RunStatus) -> None:
        self._active.run["status"] = advance(self._active.status, target)
        await self._ctx.store.put(self._run_record())
        self._active.topic.publish(objects.event(f"thread.run.{target}", self._active.run))

    # --- records -------------------------------------------------------------------------------

    def _close_message(self, status: str, reason: str) -> list[Record]:
        message = self._message
        assert message is not None
        message["content"] = objects.text_content("".join(self._pieces))
        message["status"] = status
        if status == "completed":
            message["completed_at"] = objects.now()
        else:
            message["incomplete_at"] = objects.now()
            message["incomplete_details"] = {"reason": reason}
        return [self._message_record()]

    def _finish_step(self, status: str, usage: Usage | None) -> None:
        step = self._step
        assert step is not None
        step["status"] = status
        step[f"{status}_at" if status != "expired" else "expired_at"] = objects.now()
        if usage is not None:
            step["usage"] = objects.usage_object(usage)

    def _message_record(self) -> Record:
        message = self._message
        assert message is not None
        return message_record(message, self._active.owner)

    def _step_record(self, step: dict[str, Any]) -> Record:
        return step_record(step, self._active.owner)

    def _run_record(self) -> Record:
        return run_record(self._active.run, self._active.owner)


_FAILABLE = frozenset(
    {RunStatus.QUEUED, RunStatus.IN_PROGRESS, RunStatus.REQUIRES_ACTION, RunStatus.CANCELLING}
)


def message_record(message: dict[str, Any], owner: str) -> Record:
    thread_id, run_id = message["thread_id"], message.get("run_id") or ""
    return Record(Kind.MESSAGE, message["id"], message, thread_id=thread_id, parent=thread_id,
                  run_id=run_id, status=message["status"], owner=owner)  # fmt: skip


def step_record(step: dict[str, Any], owner: str) -> Record:
    return Record(Kind.STEP, step["id"], step, thread_id=step["thread_id"], parent=step["run_id"],
                  run_id=step["run_id"], status=step["status"], owner=owner)  # fmt: skip


def run_record(run: dict[str, Any], owner: str) -> Record:
    thread_id = run["thread_id"]
    return Record(Kind.RUN, run["id"], run, thread_id=thread_id, parent=thread_id,
                  status=run["status"], owner=owner)  # fmt: skip


def function_tools(tools: list[dict[str, Any]]) -> tuple[ToolSpec, ...]:
    specs = []
    for tool in tools:
        if tool.get("type") == "function":
            function = tool["function"]
            specs.append(ToolSpec(function["name"], function.get("description") or "",
                                  function.get("parameters") or {}))  # fmt: skip
    return tuple(specs)


def response_format(value: Any) -> ResponseFormat | None:
    if not isinstance(value, dict) or value.get("type") in (None, "text"):
        return None
    if value["type"] == "json_object":
        return ResponseFormat("json_object")
    spec = value.get("json_schema") or {}
    return ResponseFormat("json_schema", spec.get("schema"), spec.get("name", ""),
                          bool(spec.get("strict")))  # fmt: skip


def _fragments(arguments: str, size: int = 16) -> list[str]:
    """A call's arguments as the few-character pieces a model streams them in."""
    return [arguments[i : i + size] for i in range(0, len(arguments), size)] or []
