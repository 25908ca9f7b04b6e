"""``python -m bench bus``: one process against ``--workers 2``, and two replicas sharing
PostgreSQL and Redis (private instances).

* **workers**: non-stream chat requests/s and streamed events/s (32 connections) with
  ``--workers`` 1 and 2;

* **re-attach latency**: a run is created on replica A; the time to its re-attached stream's
  first event, on A (the in-process topic) and on B (through Redis: a snapshot, then XREAD);
* **fan-out**: one run streamed to N subscribers, half on A and half on B: delivered events/s
  on each side, and whether every subscriber got every delta (the first token comes 3 s
  after the run starts, so that every subscriber is attached before it).

Needs redis-server and PostgreSQL's programs (``make test`` installs both); the load client
shares the machine's cores with both replicas and both services, so read the figures as what
the whole set-up does on this machine, not what one replica can do.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from bench.catalog import OXISERVE, SCENARIOS
from bench.load import LoadSpec, run_load
from bench.procs import ServerProcess
from bench.run import oxiserve_args
from bench.scenarios import Target, Workload


async def _run_on(client: httpx.AsyncClient, base: str, ids: dict[str, str]) -> tuple[str, str]:
    reply = await client.post(f"{base}/v1/threads/runs", json={
        "assistant_id": ids["assistant"], "thread": {"messages": [
            {"role": "user", "content": "Tell me a long story."}]}})  # fmt: skip
    reply.raise_for_status()
    run = reply.json()
    return run["thread_id"], run["id"]


async def _first_event(host: str, port: int, path: str) -> float:
    """Seconds from sending the re-attach request to its first ``event:`` line."""
    reader, writer = await asyncio.open_connection(host, port)
    start = time.perf_counter()
    writer.write(f"GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".encode())
    seen = b""
    while b"event:" not in seen:
        chunk = await asyncio.wait_for(reader.read(65536), 10)
        if not chunk:
            raise RuntimeError("stream closed before its first event")
        seen += chunk
    took = time.perf_counter() - start
    writer.close()
    return took


async def _subscriber(host: str, port: int, path: str) -> tuple[int, float, float]:
    """(deltas received, when the first came, when the stream ended) of one re-attached
    stream (``perf_counter`` times)."""
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(f"GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".encode())
    first, count, tail = 0.0, 0, b""
    while True:
        chunk = await asyncio.wait_for(reader.read(262144), 60)
        if not chunk:
            break
        data = tail + chunk
        if not first and b"event: thread.message.delta" in data:
            first = time.perf_counter()
        count += data.count(b"event: thread.message.delta")
        tail = data[-40:]
        count -= tail.count(b"event: thread.message.delta")
        if b"data: [DONE]" in data:
            break
    writer.close()
    return count + tail.count(b"event: thread.message.delta"), first, time.perf_counter()


async def workers(seconds: float = 3.0, concurrency: int = 32) -> dict[str, Any]:
    """Non-stream chat req/s and stream events/s with 1 and 2 worker processes."""
    out: dict[str, Any] = {}
    for count in (1, 2):
        flags = oxiserve_args(port=0, workers=count, db=":memory:")
        async with ServerProcess(OXISERVE.argv((*flags, "--no-access-log"))) as server:
            target = Target.parse(server.url)
            figures: dict[str, float] = {}
            for name, key, tokens in (("chat", "requests_per_s", 16),
                                      ("chat-stream", "events_per_s", 256)):  # fmt: skip
                scenario = SCENARIOS[name](target, Workload(max_tokens=tokens))
                warm = LoadSpec(concurrency=concurrency, duration=0.5)
                await run_load(target.host, target.port, scenario, warm)
                spec = LoadSpec(concurrency=concurrency, duration=seconds, timeout=60.0)
                summary = (await run_load(target.host, target.port, scenario, spec)).summary()
                if summary.errors:
                    raise RuntimeError(f"errors with {count} workers: {summary.errors}")
                figures[f"{name} {key}"] = getattr(summary, key)
            out[str(count)] = figures
    return out


def _quantiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {"p50_ms": 1000 * statistics.median(ordered),
            "p99_ms": 1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
            "n": len(ordered)}  # fmt: skip


# The private servers the tests start (tests/postgres.py, tests/redis_server.py).
ROOT = str(Path(__file__).resolve().parent.parent)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def unavailable() -> str | None:
    """Why the bus bench cannot run here (None: it can)."""
    from tests.postgres import unavailable as no_postgres
    from tests.redis_server import unavailable as no_redis

    return no_redis() or no_postgres()


async def measure(runs: int = 100, subscribers: int = 1000, tokens: int = 500) -> dict[str, Any]:
    from tests.postgres import PrivatePostgres
    from tests.redis_server import PrivateRedis

    redis, pg = PrivateRedis(), PrivatePostgres()
    redis.start()
    pg.start()
    try:
        flags = oxiserve_args(port=0, db=pg.new_database(), bus=redis.url(0), sim_itl_ms=2,
                              sim_ttft_ms=3000, sim_default_max_tokens=tokens,
                              stream_buffer=1024)  # fmt: skip
        argv = [sys.executable, "-m", "oxiserve", *flags, "--no-access-log"]
        async with ServerProcess(argv) as a, ServerProcess(argv) as b:
            return await _measure(a, b, runs, subscribers)
    finally:
        redis.close()
        pg.stop()


async def _measure(
    a: ServerProcess, b: ServerProcess, runs: int, subscribers: int
) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=30) as client:
        reply = await client.post(f"{a.url}/v1/assistants", json={"model": "oxiserve-sim"})
        ids = {"assistant": reply.json()["id"]}
        latency: dict[str, list[float]] = {"in_process": [], "redis": []}
        for i in range(runs):
            thread_id, run_id = await _run_on(client, a.url, ids)
            path = f"/v1/threads/{thread_id}/runs/{run_id}/stream"
            side, server = ("in_process", a) if i % 2 else ("redis", b)
            latency[side].append(await _first_event(server.host, server.port, path))
        thread_id, run_id = await _run_on(client, a.url, ids)
        path = f"/v1/threads/{thread_id}/runs/{run_id}/stream"
        cpu_a, cpu_b = a.cpu_seconds(), b.cpu_seconds()
        half = subscribers // 2
        got = await asyncio.gather(
            *(_subscriber(a.host, a.port, path) for _ in range(half)),
            *(_subscriber(b.host, b.port, path) for _ in range(subscribers - half)),
        )  # fmt: skip
        cpu_a, cpu_b = a.cpu_seconds() - cpu_a, b.cpu_seconds() - cpu_b
    # from the first delta anyone got to the last stream's end (not the wait for the run's
    # first token, which only lets every subscriber attach first)
    wall = max(end for _, _, end in got) - min(first for _, first, _ in got if first)
    on_a, on_b = got[:half], got[half:]
    deltas = {count for count, _, _ in got}
    events_a, events_b = sum(c for c, _, _ in on_a), sum(c for c, _, _ in on_b)
    return {
        "reattach": {side: _quantiles(v) for side, v in latency.items()},
        "fanout": {
            "subscribers": subscribers, "wall_s": wall,
            "complete": len(deltas) == 1, "deltas_per_subscriber": sorted(deltas),
            "a_in_process": {"delivered_events_per_s": events_a / wall,
                             "server_cpu_us_per_event": 1e6 * cpu_a / max(1, events_a)},
            "b_through_redis": {"delivered_events_per_s": events_b / wall,
                                "server_cpu_us_per_event": 1e6 * cpu_b / max(1, events_b)},
        },
    }  # fmt: skip


def render(result: dict[str, Any]) -> str:
    r, f, w = result["reattach"], result["fanout"], result.get("workers", {})
    lines = [
        "| --workers | non-stream chat req/s (32 connections) | stream events/s (32 streams) |",
        "|---:|---:|---:|",
        *(f"| {n} | {v['chat requests_per_s']:,.0f} | {v['chat-stream events_per_s']:,.0f} |"
          for n, v in w.items()),
        "",
        "| re-attach to a live run | p50 | p99 | runs |", "|---|---:|---:|---:|",
        *(f"| {side.replace('_', ' ')} | {v['p50_ms']:.2f} ms | {v['p99_ms']:.2f} ms | {v['n']} |"
          for side, v in r.items()),
        "",
        f"| fan-out: one run, {f['subscribers']} subscribers over 2 replicas | delivered events/s "
        "| server CPU µs per delivered event |", "|---|---:|---:|",
        *(f"| {side.replace('_', ' ')} | {v['delivered_events_per_s']:,.0f} | "
          f"{v['server_cpu_us_per_event']:.2f} |" for side, v in f.items() if isinstance(v, dict)),
        f"\nevery subscriber got every delta: {f['complete']} "
        f"({f['deltas_per_subscriber']} deltas)",
    ]  # fmt: skip
    return "\n".join(lines)
