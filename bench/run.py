"""The ``run`` command: one scenario against one server, reported and saved."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from bench import plot
from bench.catalog import SCENARIOS, SERVERS
from bench.load import LoadSpec, run_load
from bench.meta import envelope
from bench.procs import Pinning, ServerProcess
from bench.progress import ProgressBar
from bench.report import RESULTS_DIR, render_summary, write_result
from bench.scenarios import Target, Workload, discover_model
from bench.stats import Summary


@dataclass(frozen=True, slots=True)
class RunOptions:
    """Everything ``python -m bench run`` takes."""

    scenario: str = "chat-stream"
    url: str | None = None  # None: start ``server`` locally
    server: str = "oxiserve"
    server_args: tuple[str, ...] = ()
    load: LoadSpec = field(default_factory=lambda: LoadSpec(requests=100))
    workload: Workload = field(default_factory=Workload)
    discover_model: bool = True  # ask GET /v1/models for the model name (remote targets)
    results_dir: Path | None = RESULTS_DIR  # None: do not write a result file
    plot: bool = False
    progress: bool = True


@dataclass(frozen=True, slots=True)
class RunReport:
    doc: dict[str, Any]
    summary: Summary
    text: str
    path: Path | None
    unavailable: str | None


@contextlib.asynccontextmanager
async def _target(opts: RunOptions, pinning: Pinning) -> AsyncIterator[ServerProcess | None]:
    if opts.url is not None:
        yield None
        return
    spec = SERVERS[opts.server]
    async with ServerProcess(spec.argv(opts.server_args), cpu=pinning.server_cpu) as server:
        yield server


def server_info(opts: RunOptions, server: ServerProcess | None) -> dict[str, Any]:
    if server is None:
        return {"started_by_bench": False}
    spec = SERVERS[opts.server]
    return {
        "started_by_bench": True,
        "key": spec.key,
        "label": spec.label,
        "argv": server.argv,
        "loop": server.loop,  # as its ready line names it
    }


async def run_benchmark(opts: RunOptions, pinning: Pinning | None = None) -> RunReport:
    """Start the server if asked, run the load, and report (and save) the figures.

    ``pinning`` is the plan the caller already applied to this process (``Pinning.plan``
    must run before the client pins itself); by default nothing is pinned.
    """
    scenario_cls = SCENARIOS[opts.scenario]
    pinning = pinning or Pinning.plan(enabled=False)
    async with _target(opts, pinning) as server:
        url = server.url if server is not None else opts.url
        assert url is not None
        target = Target.parse(url)
        workload = opts.workload
        if opts.discover_model and server is None:
            workload = replace(workload, model=await discover_model(target, workload.model))
        scenario = scenario_cls(target, workload)
        bar = ProgressBar(opts.scenario, opts.load.requests, opts.load.duration)
        with bar if opts.progress else contextlib.nullcontext(bar):
            outcome = await run_load(
                target.host,
                target.port,
                scenario,
                opts.load,
                server_cpu=server.cpu_seconds if server is not None else None,
                progress=bar,
            )
        info = server_info(opts, server)
    summary = outcome.summary()
    loop = type(asyncio.get_running_loop()).__module__.split(".")[0]
    doc = envelope("run") | {
        "scenario": opts.scenario,
        "target": target.url,
        "server": info,
        "pinning": pinning.describe(local_server=server is not None),
        "client_loop": loop,
        "load": asdict(opts.load),
        "workload": asdict(workload) | {"api_key": "<set>" if workload.api_key else None},
        "unavailable": outcome.unavailable,
        "summary": summary.to_dict(),
    }
    text = render_summary(summary, _context(opts, doc, server))
    if outcome.unavailable:
        text = f"{opts.scenario}: {outcome.unavailable}\n\n{text}"
    path = None
    if opts.results_dir is not None:
        path = write_result(doc, opts.scenario, opts.results_dir)
        text += f"\n\nresult: {path}"
        if opts.plot:
            text += "\n" + _plot(outcome.results, path.with_suffix(".png"), opts.scenario)
    return RunReport(doc, summary, text, path, outcome.unavailable)


def _context(
    opts: RunOptions, doc: dict[str, Any], server: ServerProcess | None
) -> list[tuple[str, str]]:
    load = opts.load
    mode = "closed loop" if load.rate is None else f"Poisson arrivals, {load.rate:g}/s"
    bounds = " or ".join(
        b
        for b in (
            f"{load.requests} requests" if load.requests is not None else "",
            f"{load.duration:g} s" if load.duration is not None else "",
        )
        if b
    )
    who = (
        f"{SERVERS[opts.server].label}, started by bench (pid {server.pid})"
        if server is not None
        else "external server"
    )
    w = doc["workload"]
    return [
        ("scenario", f"{opts.scenario}: {SCENARIOS[opts.scenario].description}"),
        ("target", f"{doc['target']} ({who})"),
        ("load", f"{mode}, concurrency {load.concurrency}, up to {bounds}"),
        (
            "requests",
            f"model {w['model']}, prompt {w['prompt_tokens']} words, max_tokens {w['max_tokens']}",
        ),
        ("pinning", doc["pinning"]),
        ("client loop", doc["client_loop"]),
    ]


def _plot(results: Any, path: Path, title: str) -> str:
    if not plot.available():
        return "plot: matplotlib is not installed (pip install 'oxiserve[plot]'); no PNG written"
    return f"plot: {plot.plot_latencies(results, path, title)}"


def oxiserve_args(**sim: Any) -> tuple[str, ...]:
    """oxiserve command-line flags for the given Config fields (skipping None values)."""
    args: list[str] = []
    for name, value in sim.items():
        if value is not None:
            args += [f"--{name.replace('_', '-')}", str(value)]
    return tuple(args)


async def measure_streams(
    flags: tuple[str, ...],
    workload: Workload,
    concurrency: int,
    seconds: float,
    cpu: int | None,
    warmup: float = 0.5,
) -> tuple[Summary, float | None]:
    """Chat streams against an oxiserve started with ``flags`` on core ``cpu``: after a warm-up,
    the summary of ``seconds`` of load and the server's CPU µs per token (None: unknown)."""
    from bench.catalog import OXISERVE
    from bench.scenarios import ChatStream

    async with ServerProcess(OXISERVE.argv(flags), cpu=cpu) as server:
        target = Target.parse(server.url)
        scenario = ChatStream(target, workload)
        await run_load(target.host, target.port, scenario,
                       LoadSpec(concurrency=concurrency, duration=warmup))  # fmt: skip
        outcome = await run_load(
            target.host, target.port, scenario,
            LoadSpec(concurrency=concurrency, duration=seconds, timeout=60.0),
            server_cpu=server.cpu_seconds,
        )  # fmt: skip
    summary = outcome.summary()
    if summary.errors:
        raise RuntimeError(f"errors while measuring {flags}: {summary.errors}")
    used = summary.server_cpu_s
    return summary, None if used is None or not summary.tokens else used / summary.tokens * 1e6
