"""The footprint scenario: cold start, idle memory, memory with many idle connections, and
import time — what matters on a constrained host."""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import sys
from dataclasses import dataclass
from time import perf_counter

from bench.catalog import ServerSpec
from bench.client import HTTPConnection, build_request
from bench.procs import REPO_ROOT, ServerProcess, check_loop

MB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Footprint:
    """Footprint figures of one server (times in ms, memory in MB)."""

    cold_start_ms: float
    cold_start_runs_ms: tuple[float, ...]
    idle_rss_mb: float
    connections: int
    connections_rss_mb: float | None
    import_ms: float | None


def raise_fd_limit(wanted: int) -> int:
    """Raise the soft RLIMIT_NOFILE towards the hard limit; returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard == resource.RLIM_INFINITY else min(hard, max(soft, wanted))
    if target != resource.RLIM_INFINITY and target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft


async def get_health(host: str, port: int, conn: HTTPConnection | None = None) -> int:
    """One ``GET /health`` (on ``conn`` if given, left open); returns the status."""
    own = conn is None
    conn = conn or HTTPConnection(host, port)
    try:
        if not conn.connected:
            await conn.connect()
        conn.send(build_request("GET", "/health", f"{host}:{port}"))
        head = await conn.read_head()
        await conn.read_body(head)
        return head.status
    finally:
        if own:
            await conn.close()


async def _first_health(host: str, port: int, patience: float) -> None:
    """Wait for the first 200 from /health (servers announce when listening; this only
    covers one that announces a moment early)."""
    deadline = perf_counter() + patience
    while True:
        try:
            if await get_health(host, port) == 200:
                return
        except OSError:
            pass
        if perf_counter() > deadline:
            raise TimeoutError(f"no 200 from http://{host}:{port}/health in {patience} s")
        await asyncio.sleep(0.001)


async def cold_start(argv: list[str], cpu: int | None) -> tuple[float, ServerProcess]:
    """Seconds from spawning ``argv`` to the first 200 from /health, and the running server."""
    start = perf_counter()
    server = await ServerProcess(argv, cpu=cpu).start()
    try:
        await _first_health(server.host, server.port, patience=10.0)
    except BaseException:
        await server.stop()
        raise
    return perf_counter() - start, server


async def rss_with_connections(server: ServerProcess, count: int) -> tuple[int, int]:
    """Open ``count`` keep-alive connections (each answered one /health) and hold them open
    while reading the server's RSS.  Returns (connections open, RSS bytes)."""
    conns: list[HTTPConnection] = []
    try:
        for first in range(0, count, 100):  # in batches: listen backlogs are finite
            size = min(100, count - first)
            batch = [HTTPConnection(server.host, server.port) for _ in range(size)]
            conns += batch
            await asyncio.gather(*(get_health(server.host, server.port, c) for c in batch))
        return len(conns), server.rss_bytes()
    finally:
        for conn in conns:
            await conn.close()


async def import_seconds(module: str, runs: int) -> float:
    """Time ``import module`` adds to a bare interpreter (``-X importtime``, min of runs)."""
    base = min([await _importtime("pass") for _ in range(runs)])
    total = min([await _importtime(f"import {module}") for _ in range(runs)])
    return max(0.0, total - base)


async def _importtime(code: str) -> float:
    path = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-X", "importtime", "-c", code),
        cwd=REPO_ROOT,
        env=dict(os.environ, PYTHONPATH=path),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"python -c {code!r} failed:\n{err.decode(errors='replace')[-2000:]}")
    total_us = 0
    for line in err.decode(errors="replace").splitlines():
        # "import time:       123 |        456 | module"
        if line.startswith("import time:") and "|" in line:
            with contextlib.suppress(ValueError):
                total_us += int(line.split(":", 1)[1].split("|")[0])
    return total_us / 1e6


async def measure_footprint(
    spec: ServerSpec,
    extra_args: tuple[str, ...] = (),
    *,
    runs: int = 5,
    connections: int = 1000,
    import_runs: int = 3,
    cpu: int | None = None,
    loop: str | None = None,
) -> Footprint:
    """Cold start (min of ``runs``), idle RSS and RSS with ``connections`` idle keep-alive
    connections (on the last run's process), and import time of the server's module; the
    server runs on ``loop`` (None: its default)."""
    if runs < 1:
        raise ValueError("footprint needs at least one cold start")
    limit = raise_fd_limit(connections + 256)
    connections = min(connections, max(0, limit - 256))
    times: list[float] = []
    idle = opened = busy = 0
    for i in range(runs):
        seconds, server = await cold_start(spec.argv(extra_args, loop), cpu)
        times.append(seconds * 1e3)
        try:
            check_loop(server, loop)
            if i == runs - 1:
                idle = server.rss_bytes()
                if connections:
                    opened, busy = await rss_with_connections(server, connections)
        finally:
            await server.stop()
    imported = await import_seconds(spec.module, import_runs) if import_runs else None
    return Footprint(
        cold_start_ms=min(times),
        cold_start_runs_ms=tuple(times),
        idle_rss_mb=idle / MB,
        connections=opened,
        connections_rss_mb=busy / MB if opened else None,
        import_ms=None if imported is None else imported * 1e3,
    )
