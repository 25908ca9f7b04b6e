"""Per-request measurements and the aggregates computed from them (percentiles, rates, CPU)."""

from __future__ import annotations

import math
from array import array
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(slots=True)
class RequestResult:
    """What one request measured.  Times are ``time.perf_counter()`` seconds.

    ``start`` is when the request was due (for Poisson arrivals: its scheduled arrival, so
    waiting for a free connection counts as latency).  ``itl`` holds the gaps between
    successive tokens; tokens that arrive in the same socket read have a gap of 0.
    """

    start: float
    end: float = 0.0
    status: int = 0
    ttfb: float | None = None
    ttft: float | None = None
    tokens: int = 0
    events: int = 0
    itl: array[float] = field(default_factory=lambda: array("d"))
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def percentile(ordered: Sequence[float], q: float) -> float:
    """Linear-interpolation percentile (``q`` in 0..100) of already sorted values."""
    if not ordered:
        raise ValueError("percentile of no values")
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True, slots=True)
class Distribution:
    """Summary of a sample, in the unit the values came in (milliseconds here)."""

    count: int
    mean: float
    min: float
    p50: float
    p90: float
    p99: float
    max: float

    @classmethod
    def of(cls, values: Iterable[float], scale: float = 1.0) -> Distribution | None:
        ordered = sorted(values)
        if not ordered:
            return None
        if scale != 1.0:
            ordered = [v * scale for v in ordered]
        return cls(
            count=len(ordered),
            mean=math.fsum(ordered) / len(ordered),
            min=ordered[0],
            p50=percentile(ordered, 50),
            p90=percentile(ordered, 90),
            p99=percentile(ordered, 99),
            max=ordered[-1],
        )


@dataclass(frozen=True, slots=True)
class Summary:
    """Aggregates of one load run (latencies in ms, rates per second of wall time)."""

    requests: int
    ok: int
    errors: dict[str, int]
    duration_s: float
    requests_per_s: float
    tokens: int
    tokens_per_s: float
    events: int
    events_per_s: float
    ttfb_ms: Distribution | None
    ttft_ms: Distribution | None
    itl_ms: Distribution | None
    e2e_ms: Distribution | None
    server_cpu_s: float | None
    server_cpu_us_per_event: float | None
    server_cpu_us_per_request: float | None
    client_cpu_util: float | None
    # A new stream's time to first token beside this load, from a client of its own
    # (bench/probe.py); only the 32-stream measurement has one.
    probe_ttft_ms: Distribution | None = None
    # The server's resident memory right after the load (the Assistants fan-out reports it).
    server_rss_mb: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarize(
    results: Sequence[RequestResult],
    duration: float,
    server_cpu: float | None = None,
    client_cpu: float | None = None,
) -> Summary:
    """Aggregate ``results`` measured over ``duration`` seconds of wall time."""
    ok = [r for r in results if r.error is None]
    errors = Counter(r.error for r in results if r.error is not None)
    tokens = sum(r.tokens for r in results)
    events = sum(r.events for r in results)
    per_s = 1.0 / duration if duration > 0 else 0.0
    itl: array[float] = array("d")
    for r in ok:
        itl.extend(r.itl)
    return Summary(
        requests=len(results),
        ok=len(ok),
        errors=dict(sorted(errors.items())),
        duration_s=duration,
        requests_per_s=len(results) * per_s,
        tokens=tokens,
        tokens_per_s=tokens * per_s,
        events=events,
        events_per_s=events * per_s,
        ttfb_ms=Distribution.of((r.ttfb for r in ok if r.ttfb is not None), 1e3),
        ttft_ms=Distribution.of((r.ttft for r in ok if r.ttft is not None), 1e3),
        itl_ms=Distribution.of(itl, 1e3),
        e2e_ms=Distribution.of((r.end - r.start for r in ok), 1e3),
        server_cpu_s=server_cpu,
        server_cpu_us_per_event=_per(server_cpu, events),
        server_cpu_us_per_request=_per(server_cpu, len(results)),
        client_cpu_util=None if client_cpu is None or duration <= 0 else client_cpu / duration,
    )


def _per(cpu: float | None, count: int) -> float | None:
    return None if cpu is None or count == 0 else cpu * 1e6 / count
