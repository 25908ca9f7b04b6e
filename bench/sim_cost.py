"""The simulator's own cost: server CPU per simulated token with a real inter-token latency.

A harness that points a thousand clients at the simulator instead of GPUs needs the simulator
itself to cost little, or the server, not the simulated engine, becomes what is measured.
oxiserve serves chat streams with ``--sim-itl-ms 20`` (a GPU's pace) to 1 and to 256
concurrent clients, and the figure is the server's CPU time over the tokens delivered.

    python -m bench sim-cost                 # (also part of ``make bench``)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from bench.procs import Pinning
from bench.run import measure_streams
from bench.scenarios import Workload

ITL_MS = 20.0
MAX_TOKENS = 256  # a typical answer: 5 s a stream, requests start and end all through
CONCURRENCY = (1, 256)
GOAL_US = 5.0


@dataclass(frozen=True, slots=True)
class SimCost:
    concurrency: int
    tokens: int
    tokens_per_s: float
    server_cpu_us_per_token: float | None

    @property
    def met(self) -> bool:
        return self.server_cpu_us_per_token is not None and self.server_cpu_us_per_token < GOAL_US


async def measure(seconds: float = 10.0, pinning: Pinning | None = None) -> list[SimCost]:
    pinning = pinning or Pinning.plan()
    flags = ("--sim-itl-ms", str(ITL_MS), "--max-connections", "4096")
    results = []
    for concurrency in CONCURRENCY:
        summary, per_token = await measure_streams(
            flags, Workload(max_tokens=MAX_TOKENS), concurrency, seconds, pinning.server_cpu,
            warmup=1.0,
        )  # fmt: skip
        results.append(SimCost(concurrency, summary.tokens, summary.tokens_per_s, per_token))
    return results


def render(results: list[SimCost]) -> str:
    rows = [f"| streams (ITL {ITL_MS:g} ms) | tokens | tokens/s | server CPU µs/token |",
            "| ---: | ---: | ---: | ---: |"]  # fmt: skip
    for r in results:
        cpu = "—" if r.server_cpu_us_per_token is None else f"{r.server_cpu_us_per_token:.2f}"
        rows.append(f"| {r.concurrency} | {r.tokens:,} | {r.tokens_per_s:,.0f} | {cpu} |")
    return "\n".join(rows)


def to_json(results: list[SimCost]) -> list[dict[str, Any]]:
    return [asdict(r) | {"met": r.met} for r in results]
