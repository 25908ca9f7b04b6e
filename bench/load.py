"""Drives a scenario against a target: closed loop or Poisson arrivals, bounded in count and time.

Connections are opened (and the scenario set up) before the clock starts, so the measured
window holds requests only.  Server CPU time is sampled around that window when the caller
can read it (a local server process).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from time import perf_counter

from bench.client import HTTPConnection
from bench.scenarios import NotAvailable, Scenario, record_failure
from bench.stats import RequestResult, Summary, summarize


@dataclass(frozen=True, slots=True)
class LoadSpec:
    """How much load: ``concurrency`` connections; ``rate`` requests/s (Poisson) or, if None,
    a closed loop; stop after ``requests`` requests or ``duration`` seconds, whichever first."""

    concurrency: int = 1
    rate: float | None = None
    requests: int | None = None
    duration: float | None = None
    timeout: float = 30.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.requests is None and self.duration is None:
            raise ValueError("a load needs a request count or a duration (or both)")
        if self.concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if self.rate is not None and self.rate <= 0:
            raise ValueError("rate must be positive")


@dataclass(slots=True)
class LoadOutcome:
    """Everything one load run measured."""

    results: list[RequestResult] = field(default_factory=list)
    duration: float = 0.0
    server_cpu: float | None = None
    client_cpu: float | None = None
    unavailable: str | None = None

    def summary(self) -> Summary:
        return summarize(self.results, self.duration, self.server_cpu, self.client_cpu)


class _Budget:
    """Hands out request indices until the count or the deadline is reached."""

    def __init__(self, spec: LoadSpec, start: float) -> None:
        self.limit = spec.requests
        self.deadline = None if spec.duration is None else start + spec.duration
        self.issued = 0

    def take(self, at: float | None = None) -> int | None:
        if self.limit is not None and self.issued >= self.limit:
            return None
        if self.deadline is not None and (perf_counter() if at is None else at) >= self.deadline:
            return None
        self.issued += 1
        return self.issued - 1


Progress = Callable[[int], None]
CPUReader = Callable[[], float]


class LoadRunner:
    """Runs ``scenario`` under ``spec`` on its own pool of keep-alive connections."""

    def __init__(
        self,
        host: str,
        port: int,
        scenario: Scenario,
        spec: LoadSpec,
        *,
        server_cpu: CPUReader | None = None,
        progress: Progress | None = None,
    ) -> None:
        self.scenario = scenario
        self.spec = spec
        self.server_cpu = server_cpu
        self.progress = progress
        self.conns = [HTTPConnection(host, port) for _ in range(spec.concurrency)]
        self.outcome = LoadOutcome()

    async def run(self) -> LoadOutcome:
        try:
            async with asyncio.timeout(self.spec.timeout):
                await asyncio.gather(*(c.connect() for c in self.conns))
            try:
                await self.scenario.setup(self.conns[0])
                await self._measure()
            except* NotAvailable as group:
                self.outcome.unavailable = str(group.exceptions[0])
                status = getattr(group.exceptions[0], "status", 404)
                self.outcome.results.append(
                    RequestResult(perf_counter(), perf_counter(), status, error=f"status:{status}")
                )
        finally:
            await self.scenario.close()
            for conn in self.conns:
                await conn.close()
        return self.outcome

    async def _measure(self) -> None:
        cpu0 = self.server_cpu() if self.server_cpu else None
        client0 = time.process_time()
        start = perf_counter()
        budget = _Budget(self.spec, start)
        try:
            if self.spec.rate is None:
                async with asyncio.TaskGroup() as group:
                    for conn in self.conns:
                        group.create_task(self._closed_loop(conn, budget))
            else:
                await self._open_loop(budget, start, self.spec.rate)
        finally:
            self.outcome.duration = perf_counter() - start
            self.outcome.client_cpu = time.process_time() - client0
            if self.server_cpu is not None and cpu0 is not None:
                self.outcome.server_cpu = self.server_cpu() - cpu0

    async def _closed_loop(self, conn: HTTPConnection, budget: _Budget) -> None:
        while (index := budget.take()) is not None:
            await self._attempt(conn, index, perf_counter())

    async def _open_loop(self, budget: _Budget, start: float, rate: float) -> None:
        rng = random.Random(self.spec.seed)
        pool: asyncio.Queue[HTTPConnection] = asyncio.Queue()
        for conn in self.conns:
            pool.put_nowait(conn)

        async def one(index: int, due: float) -> None:
            conn = await pool.get()
            try:
                await self._attempt(conn, index, due)
            finally:
                pool.put_nowait(conn)

        due = start
        async with asyncio.TaskGroup() as group:
            while True:
                due += rng.expovariate(rate)
                index = budget.take(at=due)
                if index is None:
                    break
                delay = due - perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                group.create_task(one(index, due))

    async def _attempt(self, conn: HTTPConnection, index: int, start: float) -> None:
        result = RequestResult(start)
        extra: list[RequestResult] = []
        try:
            async with asyncio.timeout(self.spec.timeout):
                await conn.ensure_connected()
                extra = await self.scenario.execute(conn, result, index)
        except NotAvailable:
            raise
        except Exception as exc:
            await record_failure(exc, result, conn)
        else:
            if not conn.reusable:
                await conn.close()
        if not result.end:
            result.end = perf_counter()
        self.outcome.results.append(result)
        self.outcome.results.extend(extra)
        if self.progress is not None:
            self.progress(1 + len(extra))


async def run_load(
    host: str,
    port: int,
    scenario: Scenario,
    spec: LoadSpec,
    *,
    server_cpu: CPUReader | None = None,
    progress: Progress | None = None,
) -> LoadOutcome:
    """Run one bounded load and return its raw outcome (see :meth:`LoadOutcome.summary`)."""
    runner = LoadRunner(host, port, scenario, spec, server_cpu=server_cpu, progress=progress)
    return await runner.run()
