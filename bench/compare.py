"""The ``compare`` command: oxiserve and every peer, one after another, under identical load
and on the same event loop; absolute figures plus ratios oxiserve / peer, checked against the
project's goals."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import orjson

from bench.catalog import OXISERVE, PEERS, SCENARIOS, SERVERS, ServerSpec
from bench.footprint import Footprint, measure_footprint
from bench.load import LoadSpec, run_load
from bench.procs import Pinning, ServerProcess, check_loop
from bench.scenarios import Target, Workload
from bench.stats import Distribution, Summary


@dataclass(frozen=True, slots=True)
class Sizes:
    """How big each measurement is (the full run must finish in minutes on 2 cores)."""

    duration: float = 5.0
    warmup: float = 0.5
    long_stream_tokens: int = 10_000
    streams: int = 32
    stream_tokens: int = 500
    json_concurrency: int = 32
    footprint_runs: int = 5
    idle_connections: int = 1000
    import_runs: int = 3
    runs: int = 8  # concurrent streamed Assistants runs (oxiserve only: peers have none)
    fanout: tuple[int, ...] = (1, 100, 1000)  # subscribers per run, each a measurement
    resume_tokens: int = 1000  # a resumed response's length: past the 256-frame ring


FULL = Sizes()
QUICK = Sizes(duration=1.0, warmup=0.2, stream_tokens=200, footprint_runs=2, import_runs=1)


@dataclass(frozen=True, slots=True)
class Measurement:
    key: str
    scenario: str
    concurrency: int
    max_tokens: int
    probed: bool = False  # a probe (bench/probe.py) measures new streams' TTFT beside it
    subscribers: int = 0  # fan-out: re-attached readers of each run
    oxiserve_only: bool = False  # an API the peers do not have (the Assistants runs)


FANOUT = (1, 100, 1000)  # the fan-out sizes the table has rows for


def measurements(sizes: Sizes) -> list[Measurement]:
    return [
        Measurement("stream_1", "chat-stream", 1, sizes.long_stream_tokens),
        Measurement("stream_32", "chat-stream", sizes.streams, sizes.stream_tokens, probed=True),
        Measurement("health", "health", sizes.json_concurrency, 16),
        Measurement("chat", "chat", sizes.json_concurrency, 16),
        Measurement("runs", "runs-stream", sizes.runs, sizes.stream_tokens, oxiserve_only=True),
        Measurement("responses", "responses-stream", sizes.streams, sizes.stream_tokens,
                    oxiserve_only=True),
        Measurement("resume_ring", "resume-ring", 1, sizes.resume_tokens, oxiserve_only=True),
        Measurement("resume_lagged", "resume-lagged", 1, sizes.resume_tokens,
                    oxiserve_only=True),
        *(
            Measurement(f"fanout_{n}", "fanout", 1, sizes.stream_tokens, subscribers=n,
                        oxiserve_only=True)
            for n in sizes.fanout
        ),
    ]  # fmt: skip


@dataclass(frozen=True, slots=True)
class Metric:
    """One row of the comparison: how to read it from a server's figures."""

    key: str
    label: str
    higher_is_better: bool
    source: str  # the measurement (or "footprint") it comes from


METRICS = (
    Metric("events_per_s_1", "streamed events/s, 1 stream of {long} tokens", True, "stream_1"),
    Metric("events_per_s_32", "streamed events/s, {streams} streams", True, "stream_32"),
    Metric("cpu_us_per_event_1", "server CPU µs/event, 1 stream", False, "stream_1"),
    Metric("cpu_us_per_event_32", "server CPU µs/event, {streams} streams", False, "stream_32"),
    Metric(
        "probe_ttft_p50_ms",
        "TTFT p50 ms of a new stream beside {streams} streams (own client)",
        False,
        "probe",
    ),
    Metric(
        "probe_ttft_p99_ms",
        "TTFT p99 ms of a new stream beside {streams} streams (own client)",
        False,
        "probe",
    ),
    Metric(
        "ttft_p50_ms", "TTFT p50 ms, {streams} streams (the load client's view)", False, "stream_32"
    ),
    Metric(
        "ttft_p99_ms", "TTFT p99 ms, {streams} streams (the load client's view)", False, "stream_32"
    ),
    Metric("health_rps", "GET /health requests/s", True, "health"),
    Metric("health_cpu_us", "server CPU µs/request, /health", False, "health"),
    Metric("chat_rps", "non-stream chat requests/s", True, "chat"),
    Metric("chat_cpu_us", "server CPU µs/request, non-stream chat", False, "chat"),
    Metric("runs_events_per_s", "Assistants run events/s, {runs} streamed runs", True, "runs"),
    Metric("runs_cpu_us", "server CPU µs/event, {runs} streamed runs", False, "runs"),
    Metric("responses_events_per_s", "Responses events/s, {streams} streams", True, "responses"),
    Metric(
        "responses_cpu_us", "server CPU µs/event, {streams} Responses streams", False, "responses"
    ),
    Metric(
        "resume_ring_ms", "resume to first byte p50 ms, cursor in the ring", False, "resume_ring"
    ),
    Metric(
        "resume_lagged_ms",
        "resume to first byte p50 ms, cursor past the ring",
        False,
        "resume_lagged",
    ),
    *(
        metric
        for n in FANOUT
        for metric in (
            Metric(
                f"fanout_{n}_events_per_s",
                f"fan-out: delivered events/s, 1 run, {n} re-attached subscribers",
                True,
                f"fanout_{n}",
            ),
            Metric(
                f"fanout_{n}_cpu_us",
                f"fan-out: server CPU µs/delivered event, {n} subscribers",
                False,
                f"fanout_{n}",
            ),
            Metric(
                f"fanout_{n}_rss_mb",
                f"fan-out: server RSS MB after {n} subscribers",
                False,
                f"fanout_{n}",
            ),
        )
    ),
    Metric("cold_start_ms", "cold start to first /health 200, ms (min)", False, "footprint"),
    Metric("idle_rss_mb", "idle RSS, MB", False, "footprint"),
    Metric("conns_rss_mb", "RSS with {conns} idle keep-alive connections, MB", False, "footprint"),
    Metric("import_ms", "import time, ms", False, "footprint"),
)


@dataclass(frozen=True, slots=True)
class Goal:
    """oxiserve / peer must be >= (higher-is-better) or <= (lower-is-better) ``ratio``."""

    metric: str
    peer: str
    ratio: float


GOALS = (
    Goal("events_per_s_1", "fastapi-sse", 3.0),
    Goal("events_per_s_32", "fastapi-sse", 3.0),
    Goal("events_per_s_1", "raw", 1.0),
    Goal("events_per_s_32", "raw", 1.0),
    Goal("probe_ttft_p50_ms", "aiohttp", 1.0),
    Goal("health_rps", "fastapi-sse", 2.5),
    Goal("chat_rps", "fastapi-sse", 2.5),
    Goal("cold_start_ms", "raw", 1.5),
    Goal("idle_rss_mb", "raw", 1.5),
)


def figures_of(summaries: dict[str, Summary], footprint: Footprint | None) -> dict[str, Any]:
    """The flat figures a server's row cells are read from."""
    s1, s32 = summaries.get("stream_1"), summaries.get("stream_32")
    health, chat = summaries.get("health"), summaries.get("chat")
    ttft = s32.ttft_ms if s32 is not None else None
    probe = s32.probe_ttft_ms if s32 is not None else None
    out: dict[str, Any] = {
        "events_per_s_1": s1 and s1.events_per_s,
        "events_per_s_32": s32 and s32.events_per_s,
        "cpu_us_per_event_1": s1 and s1.server_cpu_us_per_event,
        "cpu_us_per_event_32": s32 and s32.server_cpu_us_per_event,
        "ttft_p50_ms": ttft and ttft.p50,
        "ttft_p99_ms": ttft and ttft.p99,
        "probe_ttft_p50_ms": probe and probe.p50,
        "probe_ttft_p99_ms": probe and probe.p99,
        "health_rps": health and health.requests_per_s,
        "health_cpu_us": health and health.server_cpu_us_per_request,
        "chat_rps": chat and chat.requests_per_s,
        "chat_cpu_us": chat and chat.server_cpu_us_per_request,
    }
    responses = summaries.get("responses")
    out["responses_events_per_s"] = responses and responses.events_per_s
    out["responses_cpu_us"] = responses and responses.server_cpu_us_per_event
    for key in ("resume_ring", "resume_lagged"):
        resumed = summaries.get(key)
        ttfb = resumed.ttfb_ms if resumed is not None else None
        out[f"{key}_ms"] = ttfb and ttfb.p50
    runs = summaries.get("runs")
    out["runs_events_per_s"] = runs and runs.events_per_s
    out["runs_cpu_us"] = runs and runs.server_cpu_us_per_event
    for n in FANOUT:
        fan = summaries.get(f"fanout_{n}")
        out[f"fanout_{n}_events_per_s"] = fan and fan.events_per_s
        out[f"fanout_{n}_cpu_us"] = fan and fan.server_cpu_us_per_event
        out[f"fanout_{n}_rss_mb"] = fan and fan.server_rss_mb
    if footprint is not None:
        out |= {
            "cold_start_ms": footprint.cold_start_ms,
            "idle_rss_mb": footprint.idle_rss_mb,
            "conns_rss_mb": footprint.connections_rss_mb,
            "import_ms": footprint.import_ms,
        }
    return out


def client_bound(summary: Summary) -> bool:
    """The load generator, not the server, was the limit: the client's core was saturated
    while the server's was not."""
    if summary.client_cpu_util is None or summary.server_cpu_s is None or not summary.duration_s:
        return False
    return summary.client_cpu_util > 0.9 and summary.server_cpu_s / summary.duration_s < 0.85


@dataclass(slots=True)
class ServerResult:
    """What one server produced (or why it could not be measured)."""

    spec: ServerSpec
    summaries: dict[str, Summary]
    footprint: Footprint | None = None
    failure: str | None = None
    loop: str | None = None  # the event loop it ran on (None: its default)

    @property
    def figures(self) -> dict[str, Any]:
        return figures_of(self.summaries, self.footprint)

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.spec.label,
            "loop": self.loop,
            "failure": self.failure,
            "figures": self.figures,
            "client_bound": [k for k, s in self.summaries.items() if client_bound(s)],
            "errors": {k: s.errors for k, s in self.summaries.items() if s.errors},
            "summaries": {k: s.to_dict() for k, s in self.summaries.items()},
            "footprint": None if self.footprint is None else asdict(self.footprint),
        }


Log = Callable[[str], None]


async def measure_load(
    spec: ServerSpec,
    sizes: Sizes,
    pinning: Pinning,
    extra: tuple[str, ...],
    log: Log,
    loop: str | None = None,
) -> dict[str, Summary]:
    """Start ``spec`` once (on ``loop``) and run every load measurement against it."""
    summaries: dict[str, Summary] = {}
    async with ServerProcess(spec.argv(extra, loop), cpu=pinning.server_cpu) as server:
        check_loop(server, loop)
        target = Target.parse(server.url)
        for m in measurements(sizes):
            if m.oxiserve_only and spec.key != OXISERVE.key:
                continue
            workload = Workload(
                max_tokens=m.max_tokens, include_usage=False, subscribers=m.subscribers
            )
            scenario = SCENARIOS[m.scenario](target, workload)
            warm = LoadSpec(concurrency=m.concurrency, duration=sizes.warmup)
            await run_load(target.host, target.port, scenario, warm)
            spec_ = LoadSpec(concurrency=m.concurrency, duration=sizes.duration, timeout=60.0)
            probe = await start_probe(target, sizes.duration, pinning) if m.probed else None
            outcome = await run_load(
                target.host, target.port, scenario, spec_, server_cpu=server.cpu_seconds
            )
            summary = outcome.summary()
            if probe is not None:
                summary = replace(summary, probe_ttft_ms=await probe_result(probe))
            if m.subscribers:
                summary = replace(summary, server_rss_mb=server.rss_bytes() / 2**20)
            summaries[m.key] = summary
            log(_progress_line(m.key, summary))
    return summaries


async def start_probe(
    target: Target, duration: float, pinning: Pinning
) -> asyncio.subprocess.Process:
    """bench/probe.py beside the load (on the client's core): first tokens of new streams.
    It takes a few tenths of a second to start, and stops before the load does."""
    argv = [sys.executable, "-m", "bench.probe", "--host", target.host, "--port",
            str(target.port), "--duration", str(max(0.3, duration - 0.6))]  # fmt: skip
    if pinning.client_cpu is not None:
        argv += ["--cpu", str(pinning.client_cpu)]
    return await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE)


async def probe_result(probe: asyncio.subprocess.Process) -> Distribution | None:
    out, _ = await asyncio.wait_for(probe.communicate(), 60.0)
    if probe.returncode != 0:
        return None
    return Distribution.of(orjson.loads(out))


def _progress_line(key: str, s: Summary) -> str:
    errors = ", ".join(f"{k} {v}" for k, v in s.errors.items()) or "no errors"
    rate = f"{s.events_per_s:,.0f} events/s" if s.events else f"{s.requests_per_s:,.0f} req/s"
    return f"  {key:<10} {s.requests:>7,} requests  {rate:>18}  {errors}"


async def compare(
    servers: Sequence[ServerSpec],
    sizes: Sizes,
    *,
    pinning: Pinning,
    burst: bool = False,
    loads: bool = True,
    footprint: bool = True,
    loop: str | None = None,
    log: Log | None = None,
) -> list[ServerResult]:
    """Measure each server in turn, all on ``loop`` (None: each on its default loop); a
    server that fails (or runs on another loop) is reported, not fatal."""
    say = log or (lambda line: print(line, file=sys.stderr, flush=True))
    results = []
    for spec in servers:
        extra = ("--burst",) if burst and spec.peer else ()
        result = ServerResult(spec, {}, loop=loop)
        say(f"{spec.label}" + (f" ({loop} loop):" if loop else ":"))
        try:
            if loads:
                result.summaries = await measure_load(spec, sizes, pinning, extra, say, loop)
            if footprint:
                say("  footprint ...")
                result.footprint = await measure_footprint(
                    spec,
                    extra,
                    runs=sizes.footprint_runs,
                    connections=sizes.idle_connections,
                    import_runs=sizes.import_runs,
                    cpu=pinning.server_cpu,
                    loop=loop,
                )
        except Exception as exc:  # one broken server must not hide the others' figures
            result.failure = f"{type(exc).__name__}: {exc}"
            say(f"  failed: {result.failure}")
        results.append(result)
    return results


def default_servers(keys: Sequence[str] | None) -> list[ServerSpec]:
    """The servers to measure, oxiserve first (the ratios' numerator)."""
    if not keys:
        return [OXISERVE, *PEERS]
    chosen = [SERVERS[k] for k in dict.fromkeys(keys)]
    return sorted(chosen, key=lambda spec: spec.key != OXISERVE.key)
