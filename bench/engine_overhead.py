"""Engine overhead: the oxillama engine's own tokens/s against tokens/s streamed through oxiserve.

On a tiny random-weight GGUF model built here (about 100 µs a token: the harshest case for a
server's per-token cost), the engine is first called directly in a loop (one engine, then two
in two threads), then served by oxiserve with ``--engine-workers`` 1 and 2 to as many
streaming clients.  Both sides run on the server's core.  The figure is the ratio: the share
of the engine's own rate that reaches the clients, from the median of three rounds of direct
then served (this machine's speed swings by a third within a minute).

    python -m bench engine                      # (also the last part of ``make bench``)
    python -m bench.engine_overhead direct --model M.gguf --workers 2 --seconds 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from bench.procs import Pinning
from bench.run import measure_streams
from bench.scenarios import Workload

MAX_TOKENS = 256
ROUNDS = 3  # of direct-then-served per configuration; the median is reported
WORKLOAD = Workload(max_tokens=MAX_TOKENS)  # the served requests' prompt: 32 words


def served_prompt(model: str) -> str:
    """The prompt the engine gets for the bench's chat request, rendered as oxiserve renders
    it (the model's chat template): the direct loop generates from exactly that (a prompt's
    prefill costs about what its tokens would cost to generate on a model this small)."""
    from oxiserve.engine.base import ChatMessage
    from oxiserve.engine.chat_templates import load_template
    from oxiserve.engine.tiny_gguf import read_metadata

    template = load_template(None, read_metadata(model).chat_template)
    return template.render([ChatMessage("user", WORKLOAD.prompt())])


@dataclass(frozen=True, slots=True)
class Overhead:
    workers: int
    engine_tokens_per_s: float  # the engine called directly, ``workers`` engines in parallel
    served_tokens_per_s: float  # streamed through oxiserve to ``workers`` clients
    server_cpu_us_per_token: float | None  # all of the server's CPU (the engines' included)
    engine_cpu_us_per_token: float | None = None  # the direct loop's CPU

    @property
    def ratio(self) -> float:
        return self.served_tokens_per_s / self.engine_tokens_per_s

    @property
    def cpu_ratio(self) -> float | None:
        """The engine's own CPU per token over the server's: on a machine whose rates swing
        with its neighbours, the steadier figure of the share a token's work that is the
        engine's (on a core of its own, rate is the inverse of CPU per token)."""
        if not self.engine_cpu_us_per_token or not self.server_cpu_us_per_token:
            return None
        return self.engine_cpu_us_per_token / self.server_cpu_us_per_token


def direct_rate(
    model: str, workers: int, seconds: float, max_tokens: int = MAX_TOKENS
) -> tuple[float, float]:
    """Tokens/s of ``workers`` engines generating in parallel threads, as oxiserve calls them
    (reset, then one detailed generation with a streaming callback), and CPU µs a token."""
    import oxillama_py as ox

    engines = []
    for _ in range(workers):
        engine = ox.Engine(ox.EngineConfig(model, num_threads=1))
        engine.load_model()
        engines.append(engine)
    counts = [0] * workers
    prompt = served_prompt(model)
    deadline = time.perf_counter() + seconds

    def loop(i: int) -> None:
        engine = engines[i]
        config = ox.GenerationConfig(max_tokens=max_tokens, sampler=ox.SamplerConfig(
            temperature=1.0, top_k=0, top_p=1.0, repetition_penalty=1.0, seed=i))  # fmt: skip
        while time.perf_counter() < deadline:
            engine.reset()
            outcome = engine.generate_detailed(prompt, config, lambda _piece: None)
            counts[i] += outcome.completion_tokens()

    start, cpu = time.perf_counter(), time.process_time()
    threads = [threading.Thread(target=loop, args=(i,)) for i in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    tokens = sum(counts)
    return tokens / (time.perf_counter() - start), (time.process_time() - cpu) / tokens * 1e6


async def _direct_in_subprocess(
    model: str, workers: int, seconds: float, cpu: int | None
) -> tuple[float, float]:
    argv = [sys.executable, "-m", "bench.engine_overhead", "direct", "--model", model,
            "--workers", str(workers), "--seconds", str(seconds)]  # fmt: skip
    if cpu is not None:
        argv += ["--cpu", str(cpu)]
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE)
    out, _ = await asyncio.wait_for(proc.communicate(), seconds + 60)
    if proc.returncode != 0:
        raise RuntimeError(f"the direct engine measurement failed ({proc.returncode})")
    found = json.loads(out)
    return float(found["tokens_per_s"]), float(found["cpu_us_per_token"])


async def served_rate(
    model: str, workers: int, seconds: float, pinning: Pinning
) -> tuple[float, float | None]:
    flags = ("--engine", "oxillama", "--model", model, "--engine-workers", str(workers),
             "--threads", "1")  # fmt: skip
    workload = replace(WORKLOAD, model=Path(model).stem)
    summary, per_token = await measure_streams(flags, workload, workers, seconds,
                                               pinning.server_cpu)  # fmt: skip
    return summary.tokens_per_s, per_token


async def measure(seconds: float = 3.0, pinning: Pinning | None = None) -> list[Overhead]:
    from oxiserve.engine.tiny_gguf import build_random

    pinning = pinning or Pinning.plan()
    with tempfile.TemporaryDirectory() as tmp:
        model = str(Path(tmp) / "random.gguf")
        build_random(model)
        results = []
        for workers in (1, 2):
            rounds = []
            for _ in range(ROUNDS):  # direct and served in turn: the machine's swings hit both
                engine, engine_cpu = await _direct_in_subprocess(
                    model, workers, seconds, pinning.server_cpu
                )
                served, per_token = await served_rate(model, workers, seconds, pinning)
                rounds.append(Overhead(workers, engine, served, per_token, engine_cpu))
            rounds.sort(key=lambda r: r.ratio)
            results.append(rounds[len(rounds) // 2])  # the round of the median share
    return results


def render(results: list[Overhead]) -> str:
    rows = ["| engines, clients | engine alone, tokens/s | through oxiserve, tokens/s | share | "
            "engine CPU µs/token | server CPU µs/token | share of CPU |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]  # fmt: skip
    for r in results:
        cpu = "—" if r.server_cpu_us_per_token is None else f"{r.server_cpu_us_per_token:.1f}"
        own = "—" if r.engine_cpu_us_per_token is None else f"{r.engine_cpu_us_per_token:.1f}"
        share = "—" if r.cpu_ratio is None else f"{r.cpu_ratio:.1%}"
        rates = f"{r.engine_tokens_per_s:,.0f} | {r.served_tokens_per_s:,.0f} | {r.ratio:.1%}"
        rows.append(f"| {r.workers}, {r.workers} | {rates} | {own} | {cpu} | {share} |")
    return "\n".join(rows)


def to_json(results: list[Overhead]) -> list[dict[str, Any]]:
    return [asdict(r) | {"ratio": r.ratio, "cpu_ratio": r.cpu_ratio} for r in results]


def _direct_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.engine_overhead direct")
    parser.add_argument("--model", required=True)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--cpu", type=int, default=None)
    args = parser.parse_args(argv)
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    rate, cpu = direct_rate(args.model, args.workers, args.seconds)
    print(json.dumps({"tokens_per_s": rate, "cpu_us_per_token": cpu}))
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] != ["direct"]:
        raise SystemExit("usage: python -m bench.engine_overhead direct --model M.gguf ...")
    sys.exit(_direct_main(sys.argv[2:]))
