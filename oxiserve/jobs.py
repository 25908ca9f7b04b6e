"""The job supervisor: every generation task of a Server has an owner here, not in a connection.

A job is an id, a :class:`~oxiserve.broadcast.Topic` its frames go to, and a policy:

* **attached** (chat and text completions): the request that started it is its reason to
  run; it is cancelled within milliseconds once its last subscriber is gone
  (:meth:`Job.release`), and forgotten when it ends;
* **detached** (Assistants runs, background responses): it runs with nobody listening, can be
  found by id (:meth:`JobSupervisor.get`) and subscribed to from any connection, snapshot then
  live, and stays findable for ``retention`` seconds after it ends.

The supervisor gives the guarantees of a TaskGroup without its all-or-nothing failure rule:
no task without an owner, every failure logged once (one job failing ends no other job), and
:meth:`JobSupervisor.shutdown` waits for the jobs up to a timeout, then cancels them.  A
cancelled job whose topic is still open is closed with its terminal frame, so a subscriber
never waits on silence.

    jobs = JobSupervisor(retention=300)
    job = jobs.start(generate(topic), topic, policy=Policy.ATTACHED)
    ...                                  # the handler subscribes to job.topic
    job.release()                        # its subscriber left: an attached job stops now
    await jobs.shutdown(timeout=10)      # server shutdown
"""

from __future__ import annotations

import asyncio
import enum
import heapq
import itertools
import logging
import os
from collections import OrderedDict
from collections.abc import Callable, Coroutine
from typing import Any

from oxiserve.broadcast import Topic

log = logging.getLogger("oxiserve.jobs")


class Policy(enum.Enum):
    ATTACHED = "attached"  # cancelled when its last subscriber leaves
    DETACHED = "detached"  # runs alone; findable by id until its retention ends


class ShuttingDown(RuntimeError):
    """No job may start: the supervisor is shutting down."""


class Job:
    """One generation: its id, topic, policy and task (owned by the supervisor)."""

    __slots__ = (
        "_supervisor", "ended_at", "id", "payload", "policy", "retention", "task", "terminal",
        "topic",
    )  # fmt: skip

    def __init__(
        self,
        supervisor: JobSupervisor,
        job_id: str,
        topic: Topic,
        policy: Policy,
        terminal: bytes | None,
        retention: float,
    ) -> None:
        self._supervisor = supervisor
        self.retention = retention  # seconds a detached job stays findable after it ends
        self.id = job_id
        self.topic = topic
        self.policy = policy
        self.terminal = terminal  # the frame that ends the topic if the job is cancelled
        self.task: asyncio.Task[None] | None = None
        self.ended_at: float | None = None
        self.payload: object = None  # what the starter keeps with the job (a response's state)

    @property
    def done(self) -> bool:
        return self.task is not None and self.task.done()

    def cancel(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()

    def release(self) -> None:
        """A subscriber left: an attached job with no subscriber left is cancelled."""
        if self.policy is Policy.ATTACHED and self.topic.statistics().subscribers == 0:
            self.cancel()


class JobSupervisor:
    """Owns the jobs of one Server (see the module docstring)."""

    def __init__(
        self,
        retention: float = 300.0,
        clock: Callable[[], float] | None = None,
        max_retained: int = 128,
    ) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None  # the server's, at the first job
        self._retention = retention
        self._clock = clock  # None: the loop's clock (tests inject their own)
        self._running: set[Job] = set()
        self._detached: dict[str, Job] = {}  # running and recently ended, by id
        # Ended detached jobs in the order they ended, and when each is forgotten: at most
        # ``max_retained`` are kept (the oldest go first), so their frames cannot fill memory.
        self._max_retained = max_retained
        self._retained: OrderedDict[str, Job] = OrderedDict()
        self._expiries: list[tuple[float, int, str]] = []  # a heap
        self._ids = itertools.count(1)
        self._prefix = "job_" + os.urandom(6).hex()
        self._closing = False
        self._idle: asyncio.Event | None = None

    def start(
        self,
        run: Coroutine[Any, Any, None],
        topic: Topic,
        *,
        policy: Policy = Policy.ATTACHED,
        job_id: str | None = None,
        terminal: bytes | None = None,
        retention: float | None = None,
    ) -> Job:
        """Run ``run`` as a job publishing into ``topic``; ``terminal`` closes the topic if the
        job is cancelled before it closed it (shutdown, or a detached job's cancel).
        ``retention`` overrides the supervisor's for this job (e.g. 0 for one whose ended
        stream a store can replay: its frames need not stay in memory)."""
        if self._closing:
            run.close()
            raise ShuttingDown("the server is shutting down")
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        job_id = job_id or f"{self._prefix}{next(self._ids):06x}"
        keep = self._retention if retention is None else retention
        job = Job(self, job_id, topic, policy, terminal, keep)
        if policy is Policy.DETACHED:
            self._expire()
            self._retained.pop(job.id, None)  # an ended job of that id is replaced
            self._detached[job.id] = job
        job.task = self._loop.create_task(run)
        self._running.add(job)
        job.task.add_done_callback(lambda _task: self._ended(job))
        return job

    def get(self, job_id: str) -> Job | None:
        """A detached job, running or ended within its retention, by id."""
        self._expire()
        return self._detached.get(job_id)

    @property
    def running(self) -> int:
        return len(self._running)

    async def shutdown(self, timeout: float) -> None:
        """Start no more jobs; wait up to ``timeout`` for the running ones, then cancel them
        (each cancelled job's topic ends with its terminal frame)."""
        self._closing = True
        if self._running:
            self._idle = asyncio.Event()
            try:
                await asyncio.wait_for(self._idle.wait(), timeout)
            except TimeoutError:
                log.warning("shutdown: cancelling %d running jobs", len(self._running))
        tasks = [job.task for job in self._running if job.task is not None]
        for task in tasks:
            task.cancel()
        if tasks:  # cancelled jobs get to run their cleanup (a job ignoring it is logged)
            _, pending = await asyncio.wait(tasks, timeout=1.0)
            for task in pending:
                log.error("a job did not end after being cancelled: %r", task)

    def _ended(self, job: Job) -> None:
        self._running.discard(job)
        job.ended_at = self._now()
        if self._detached.get(job.id) is job:
            self._retain(job)
        task = job.task
        assert task is not None
        if task.cancelled():
            if not job.topic.closed:
                job.topic.close(job.terminal)
        elif task.exception() is not None:  # reading it marks it retrieved: logged once, here
            log.error("job %s failed", job.id, exc_info=task.exception())
            if not job.topic.closed:
                job.topic.close(job.terminal)
        if self._idle is not None and not self._running:
            self._idle.set()

    def _now(self) -> float:
        return self._clock() if self._clock is not None else asyncio.get_running_loop().time()

    def _retain(self, job: Job) -> None:
        assert job.ended_at is not None
        if job.retention <= 0:
            del self._detached[job.id]
            return
        self._retained[job.id] = job
        heapq.heappush(self._expiries, (job.ended_at + job.retention, next(self._ids), job.id))
        while len(self._retained) > self._max_retained:
            self._forget(self._retained.popitem(last=False)[1])

    def _forget(self, job: Job) -> None:
        if self._detached.get(job.id) is job:
            del self._detached[job.id]

    def _expire(self) -> None:
        """Forget ended detached jobs whose retention has passed (on start and lookup; each
        call costs only the jobs it forgets)."""
        if not self._expiries:
            return
        now = self._now()
        while self._expiries and self._expiries[0][0] <= now:
            _, _, job_id = heapq.heappop(self._expiries)
            job = self._retained.get(job_id)
            if job is not None and job.ended_at is not None and job.ended_at + job.retention <= now:
                del self._retained[job_id]
                self._forget(job)
