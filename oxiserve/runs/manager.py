"""The runs of one Server: which are active, their legs as detached jobs, cancel, tool outputs,
expiry, replay of finished runs, and restart recovery.

    runs = Runs(ctx, jobs)
    await runs.recover()                         # at startup: unfinished runs become failed
    topic = await runs.start(run, assistant, records)   # stored, created + queued published
    await runs.cancel(run_id)                    # -> the run as it is now ("cancelling")
    topic = await runs.submit(run_id, {call_id: output})
    frames = await runs.replay(run)              # a run no longer in memory, as events

One active run per thread (a second one is refused by the API layer with 400, as OpenAI does).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from typing import Any

from oxiserve.broadcast import Topic
from oxiserve.bus import RedisBus
from oxiserve.engine.base import ChatMessage
from oxiserve.http import sse
from oxiserve.jobs import JobSupervisor, Policy
from oxiserve.runs import objects
from oxiserve.runs.states import ACTIVE, RunStatus, advance
from oxiserve.runs.worker import (
    ActiveRun,
    RunContext,
    RunLeg,
    message_record,
    run_record,
    step_record,
)
from oxiserve.store.base import Kind, Record

log = logging.getLogger("oxiserve.runs")

RESTARTED = "The server restarted while the run was in progress; create a new run."
LEASE_LOST = ("The replica running the run stopped (its lease expired) while the run was in "
              "progress; create a new run.")  # fmt: skip
MIRROR_RETENTION = 60.0  # seconds an ended leg's stream stays in the bus (then: the store)


class NotAccepting(Exception):
    """The run cannot take this request in its current status (the API answers 400)."""


class Runs:
    """See the module docstring."""

    def __init__(self, ctx: RunContext, jobs: JobSupervisor, bus: RedisBus | None = None) -> None:
        self._ctx = ctx
        self._jobs = jobs
        self._bus = bus  # runs shared with other replicas: leases, mirrored legs
        self._active: dict[str, ActiveRun] = {}  # by run id
        self._threads: dict[str, str] = {}  # thread id -> its active run's id
        self._timers: dict[str, asyncio.TimerHandle] = {}

    def statuses(self) -> dict[str, int]:
        """How many active runs are in each status (for the metrics)."""
        counts: dict[str, int] = {}
        for active in self._active.values():
            counts[str(active.status)] = counts.get(str(active.status), 0) + 1
        return counts

    def active_run(self, thread_id: str) -> str | None:
        """The id of the thread's active run (or of what holds the thread, see ``reserving``)."""
        return self._threads.get(thread_id)

    @contextlib.contextmanager
    def reserving(self, thread_id: str) -> Iterator[None]:
        """Hold the thread while a run is being started on it or it is being deleted: a
        second run, or a delete, is refused meanwhile (``NotAccepting``).  A run started
        inside takes the hold over."""
        holder = self._threads.get(thread_id)
        if holder is not None:
            raise NotAccepting(f"Thread {thread_id} already has an active run {holder}.")
        marker = self._threads[thread_id] = f"(being changed: {id(object())})"
        try:
            yield
        finally:
            if self._threads.get(thread_id) == marker:
                del self._threads[thread_id]

    def get(self, run_id: str) -> ActiveRun | None:
        return self._active.get(run_id)

    def topic(self, run_id: str) -> Topic | None:
        """The current (or last, while retained) leg's topic of a run, if it is in memory."""
        job = self._jobs.get(run_id)
        return None if job is None else job.topic

    async def start(
        self,
        run: dict[str, Any],
        assistant: dict[str, Any],
        records: list[Record],
        owner: str = "",
        first: tuple[bytes, ...] = (),
        headers: dict[str, str] | None = None,
    ) -> Topic:
        """Store the queued run with ``records`` (a new thread, additional messages), publish
        ``first`` (``thread.created``) and the run's first events, and queue its first leg."""
        active = ActiveRun(run, assistant, Topic(2), owner, headers=headers or {})
        active.new_leg(self._ctx.config.stream_buffer)
        if self._bus is not None:  # before the store has it: a stored run always has a lease
            await self._bus.lease("run", run["id"])
        self._register(active)
        try:
            await self._ctx.store.put(*records, run_record(run, owner))
        except BaseException:
            self._forget(active)
            raise
        for frame in first:
            active.topic.publish(frame)
        active.topic.publish(objects.event("thread.run.created", run))
        active.topic.publish(objects.event("thread.run.queued", run))
        self._start_leg(active)
        if self._bus is not None:
            await self._bus.sync()  # another replica may re-attach as soon as we answer
        return active.topic

    async def cancel(self, run_id: str) -> dict[str, Any]:
        """Ask an active run to stop: it is ``cancelling`` at once, ``cancelled`` once its leg
        has stopped (within milliseconds; a run waiting for tool outputs at once)."""
        active = self._active.get(run_id)
        if active is None or active.status not in (
            RunStatus.QUEUED, RunStatus.IN_PROGRESS, RunStatus.REQUIRES_ACTION
        ):  # fmt: skip
            raise NotAccepting(f"Cannot cancel run with status '{_status_of(active)}'.")
        return await self._stop(active, RunStatus.CANCELLED)

    async def submit(self, run_id: str, outputs: dict[str, str]) -> Topic:
        """Complete the waiting tool step with ``outputs`` (every pending call, no other) and
        queue the next leg; its topic starts with the step's completion."""
        active = self._active.get(run_id)
        if active is None or active.status is not RunStatus.REQUIRES_ACTION:
            status = _status_of(active)
            raise NotAccepting(f"Runs in status '{status}' do not accept tool outputs.")
        pending = {call.id: call for call in active.pending_calls}
        unknown = sorted(set(outputs) - set(pending))
        if unknown:
            raise ValueError(f"No tool call with id '{unknown[0][:64]}' is waiting for output.")
        missing = [call_id for call_id in pending if call_id not in outputs]
        if missing:
            raise ValueError(f"Missing the output of tool call '{missing[0]}'.")
        step = active.tool_step
        assert step is not None
        step["step_details"] = objects.tool_step_details(
            [objects.tool_call_object(call, outputs[call.id]) for call in active.pending_calls]
        )
        step["status"], step["completed_at"] = "completed", objects.now()
        if active.tool_usage is not None:
            step["usage"] = objects.usage_object(active.tool_usage)
        for call in active.pending_calls:
            active.history.append(ChatMessage("assistant", f"{call.name}({call.arguments})"))
            active.history.append(ChatMessage("tool", outputs[call.id]))
        active.pending_calls, active.tool_step = [], None
        run = active.run
        run["status"] = advance(active.status, RunStatus.QUEUED)
        run["required_action"] = None
        await self._ctx.store.put(step_record(step, active.owner), run_record(run, active.owner))
        active.new_leg(self._ctx.config.stream_buffer)
        active.topic.publish(objects.event("thread.run.step.completed", step))
        active.topic.publish(objects.event("thread.run.queued", run))
        self._start_leg(active)
        if self._bus is not None:
            await self._bus.sync()
        return active.topic

    async def replay(self, run: dict[str, Any], owner: str = "") -> list[bytes]:
        """A run no longer in memory as the events a client would have seen: each step with
        its message's whole text as one delta, then the run's terminal event and done."""
        store = self._ctx.store
        steps = await store.list(Kind.STEP, run["id"], limit=100, order="asc", owner=owner)
        frames = [objects.event("thread.run.created", run)]
        for step in steps.data:
            frames.append(objects.event("thread.run.step.created", step))
            details = step["step_details"]
            if details["type"] == "message_creation":
                message_id = details["message_creation"]["message_id"]
                message = await store.get(Kind.MESSAGE, message_id, owner=owner)
                if message is not None:
                    frames.append(objects.event("thread.message.created", message))
                    text = objects.message_text(message)
                    if text:
                        frames.append(objects.message_delta(message_id, text))
                    if message["status"] != "in_progress":
                        name = f"thread.message.{message['status']}"
                        frames.append(objects.event(name, message))
            if step["status"] != "in_progress":
                frames.append(objects.event(f"thread.run.step.{step['status']}", step))
        frames.append(objects.event(f"thread.run.{run['status']}", run))
        frames.append(sse.EVENT_DONE)
        return frames

    async def recover(self) -> int:
        """At startup: runs left unfinished by a previous process fail with a restart error,
        their steps fail and their messages become incomplete.  Returns how many runs."""
        runs = await self.fail_unfinished(RESTARTED)
        if runs:
            log.warning("%d runs left unfinished by the previous process failed", len(runs))
        return len(runs)

    async def fail_unfinished(self, message: str, only: str | None = None) -> list[dict[str, Any]]:
        """Fail the stored unfinished runs (or only run ``only``), their steps and messages,
        with ``message``; the runs as stored now."""
        store, stamp = self._ctx.store, objects.now()
        error = {"code": "server_error", "message": message}
        runs = list(await store.find(Kind.RUN, [str(s) for s in ACTIVE], limit=1_000_000, job=only))
        ids = {run["id"] for run in runs}
        records: list[Record] = []
        for run in runs:
            run.update(status="failed", failed_at=stamp, last_error=error, required_action=None)
            records.append(run_record(run, ""))  # an update keeps the owner
        for step in await store.find(Kind.STEP, ["in_progress"], limit=1_000_000, job=only):
            if step.get("run_id") in ids:
                step.update(status="failed", failed_at=stamp, last_error=error)
                records.append(step_record(step, ""))
        for message_ in await store.find(Kind.MESSAGE, ["in_progress"], limit=1_000_000,
                                         job=only):  # fmt: skip
            if message_.get("run_id") in ids:
                message_.update(status="incomplete", incomplete_at=stamp,
                                incomplete_details={"reason": "run_failed"})  # fmt: skip
                records.append(message_record(message_, ""))
        if records:
            await store.put(*records)
        return runs

    async def lost(self, run_id: str, seq: int) -> list[bytes]:
        """The bus says the replica running ``run_id`` died: fail it in the store; the frames
        that end its stream for readers elsewhere."""
        failed = await self.fail_unfinished(LEASE_LOST, only=run_id)
        if not failed:
            return []
        return [objects.event("thread.run.failed", failed[0]), sse.EVENT_DONE]

    async def abandon(self, run_id: str) -> None:
        """Another replica failed this run (its lease lapsed while this one was stalled):
        stop it here as failed too, so both say the same."""
        active = self._active.get(run_id)
        if active is None or active.stop_as is not None:
            return
        active.run["last_error"] = {"code": "server_error", "message": LEASE_LOST}
        await self._stop(active, RunStatus.FAILED)

    async def unfinished(self) -> list[tuple[str, str, float]]:
        """The stored unfinished runs, for the bus's sweep: (kind, id, created_at)."""
        runs = await self._ctx.store.find(Kind.RUN, [str(s) for s in ACTIVE], limit=100_000)
        return [("run", run["id"], float(run["created_at"])) for run in runs]

    def close(self) -> None:
        """The server is stopping: no run expires from now on (the store fails what is left
        unfinished when the next process starts)."""
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()

    # --- legs, expiry ---------------------------------------------------------------------------

    def _start_leg(self, active: ActiveRun) -> None:
        if self._ctx.metrics is not None:
            active.topic.on_lag = self._ctx.metrics.lagged
        leg = RunLeg(self._ctx, active, self._ended)
        terminal = objects.error_event("server_error", "The run was stopped.") + sse.EVENT_DONE
        # Retention 0: once a leg has ended, its frames leave memory; a re-attach to it is
        # replayed from the store, which holds the same text and objects.
        self._jobs.start(leg.run(), active.topic, policy=Policy.DETACHED,
                         job_id=active.run["id"], terminal=terminal, retention=0.0)  # fmt: skip
        if self._bus is not None:
            ids = active.message_ids
            self._bus.mirror(active.run["id"], "run", active.topic, ids.__getitem__,
                             MIRROR_RETENTION)  # fmt: skip

    async def _stop(self, active: ActiveRun, target: RunStatus) -> dict[str, Any]:
        run = active.run
        waiting = active.status is RunStatus.REQUIRES_ACTION
        active.stop_as = target
        if target is RunStatus.CANCELLED:
            run["status"] = advance(active.status, RunStatus.CANCELLING)
            if not active.topic.closed:
                active.topic.publish(objects.event("thread.run.cancelling", run))
        snapshot = dict(run)  # before any await: the leg may end the run meanwhile
        if target is RunStatus.CANCELLED:
            await self._ctx.store.put(run_record(run, active.owner))
        if waiting:
            await self._end_waiting(active, target)
        elif active.stream is not None:
            await active.stream.aclose()  # the leg sees stop_as and ends the run
        return snapshot

    async def _end_waiting(self, active: ActiveRun, target: RunStatus) -> None:
        """A run waiting for tool outputs (no leg running) ends here."""
        run, step, stamp = active.run, active.tool_step, objects.now()
        records: list[Record] = []
        status = _STEP_ENDS[target]
        if step is not None:
            step["status"] = status
            step[f"{status}_at"] = stamp
            records.append(step_record(step, active.owner))
        run["status"] = advance(active.status, target)
        run["required_action"] = None
        run[_RUN_STAMPS[target]] = stamp
        await self._ctx.store.put(*records, run_record(run, active.owner))
        self._forget(active)

    def _expire(self, run_id: str) -> None:
        active = self._active.get(run_id)
        if active is None or active.stop_as is not None:
            return
        if active.status is RunStatus.CANCELLING:
            return
        self._jobs.start(self._stop_quietly(active, RunStatus.EXPIRED), active.topic,
                         policy=Policy.ATTACHED)  # fmt: skip

    async def _stop_quietly(self, active: ActiveRun, target: RunStatus) -> None:
        try:
            await self._stop(active, target)
        except Exception:
            log.exception("run %s could not expire", active.run["id"])

    def _register(self, active: ActiveRun) -> None:
        run = active.run
        self._active[run["id"]] = active
        self._threads[run["thread_id"]] = run["id"]
        loop = asyncio.get_running_loop()
        delay = self._ctx.config.run_timeout  # from now: expires_at is whole seconds
        self._timers[run["id"]] = loop.call_later(delay, self._expire, run["id"])

    def _ended(self, active: ActiveRun) -> None:
        if active.status not in ACTIVE:
            self._forget(active)

    def _forget(self, active: ActiveRun) -> None:
        run_id, thread_id = active.run["id"], active.run["thread_id"]
        self._active.pop(run_id, None)
        if self._threads.get(thread_id) == run_id:
            del self._threads[thread_id]
        timer = self._timers.pop(run_id, None)
        if timer is not None:
            timer.cancel()
        if self._bus is not None:
            self._bus.release("run", run_id)


# How a stopped run's step ends, and the run's field that says when.
_STEP_ENDS = {RunStatus.CANCELLED: "cancelled", RunStatus.EXPIRED: "expired",
              RunStatus.FAILED: "failed"}  # fmt: skip
_RUN_STAMPS = {RunStatus.CANCELLED: "cancelled_at", RunStatus.EXPIRED: "expires_at",
               RunStatus.FAILED: "failed_at"}  # fmt: skip


def _status_of(active: ActiveRun | None) -> str:
    return "unknown" if active is None else str(active.status)
