"""Server: binds a listening socket inside the caller's event loop and serves the API.

Embedding::

    async with Server(Config(port=0)) as server:
        print(server.url)          # http://127.0.0.1:54321
        ...                        # leaving the block shuts down gracefully

Several servers can run in one process; nothing is global.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
import ssl
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from oxiserve import responses
from oxiserve.api import build_router
from oxiserve.api.keys import KeyRing
from oxiserve.api.limits import Limits
from oxiserve.api.state import AppState
from oxiserve.bus import BusDown, RedisBus
from oxiserve.config import Config
from oxiserve.engine.base import Engine
from oxiserve.errors import StartupError, error_response, render_error
from oxiserve.http.connection import Connection
from oxiserve.http.context import ServerContext
from oxiserve.jobs import JobSupervisor
from oxiserve.metrics import Metrics
from oxiserve.runs.manager import Runs
from oxiserve.runs.worker import RunContext
from oxiserve.store import Store, StoreError, open_store

log = logging.getLogger("oxiserve")


def create_engine(config: Config, *, load: bool = True) -> Engine:
    """The engine ``config.engine`` names (imported only when chosen).  ``load=False``: a
    real engine checks its model now and loads it when ``load()`` is called."""
    if config.engine == "sim":
        from oxiserve.engine.sim import SimEngine

        return SimEngine(config)
    if config.engine == "oxillama":
        from oxiserve.engine.oxillama import OxillamaEngine

        return OxillamaEngine(config, load=load)
    raise ValueError(f"unknown engine {config.engine!r}")


def banner(url: str, config: Config, loop_name: str) -> str:
    """The startup line (``bench`` and scripts find the URL in it)."""
    line = f"oxiserve listening on {url} (engine={config.engine}, loop={loop_name})"
    if config.workers > 1 and not config.bus:
        line += (f"; {config.workers} workers: runs, stored responses, conversations and "
                 f"threads answer 501 (they need a shared --bus)")  # fmt: skip
    elif config.workers > 1:
        line += f"; {config.workers} workers sharing state through the bus"
    return line


async def _open_bus(config: Config, limits: Limits) -> RedisBus:
    try:
        bus = RedisBus(config.bus, config.lease_timeout,
                       flush_interval=config.bus_flush_ms / 1000)  # fmt: skip
    except ImportError:
        raise StartupError("--bus needs the redis package: pip install 'oxiserve[redis]'") from None
    shared = None
    if limits.enabled:  # global limits: the replicas say what they took
        from oxiserve.bus.limits import SharedLimits

        shared = SharedLimits(bus, limits)
    try:
        await bus.start()
    except BusDown as exc:
        await bus.close()
        raise StartupError(str(exc)) from None
    if shared is not None:
        bus.spawn(shared.run)
    return bus


def _bus_jobs(bus: RedisBus, runs: Runs, store: Store) -> None:
    """What the bus does with the jobs of a replica that died: fail them, in the store."""
    bus.on_expired("run", runs.lost)
    bus.on_expired("response", functools.partial(responses.lost, store))
    bus.on_lost("run", runs.abandon)

    async def unfinished() -> list[tuple[str, str, float]]:
        return [*await runs.unfinished(), *await responses.unfinished(store)]

    bus.on_unfinished(unfinished)


class Server:
    """One oxiserve instance: engine, routes, connections, listening socket."""

    def __init__(
        self,
        config: Config | None = None,
        *,
        engine: Engine | None = None,
        worker: int | None = None,
    ) -> None:
        """``worker``: this server is worker process ``worker`` of ``--workers``: it shares
        the port with the others (SO_REUSEPORT)."""
        self.config = config or Config()
        self._engine = engine
        self._worker = worker
        self._server: asyncio.Server | None = None
        self._ctx: ServerContext | None = None
        self.state: AppState | None = None
        self.host = self.config.host
        self.port = self.config.port

    @property
    def url(self) -> str:
        scheme = "https" if self.config.ssl_certfile else "http"
        if self.config.uds:
            return f"{scheme}+unix://{self.config.uds}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"

    @property
    def context(self) -> ServerContext:
        if self._ctx is None:
            raise RuntimeError("server is not started")
        return self._ctx

    async def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("server already started")
        loop = asyncio.get_running_loop()
        tls = self._tls()  # a bad certificate stops the start before anything is opened
        if self.config.bus and self.config.db == ":memory:":
            raise StartupError("--bus needs a store the replicas share (--db postgresql://... "
                               "or an SQLite file), not --db :memory:")  # fmt: skip
        engine = self._engine or create_engine(self.config, load=False)
        try:
            store = await open_store(self.config.db)
        except StoreError as exc:
            raise StartupError(str(exc)) from None
        bus: RedisBus | None = None
        config = self.config
        limits = Limits(config.rate_limit_rps, config.rate_limit_burst, config.rate_limit_tpm,
                        config.max_concurrent_streams)  # fmt: skip
        try:
            if self.config.bus:
                bus = await _open_bus(self.config, limits)
            jobs = JobSupervisor(self.config.job_retention, max_retained=self.config.retained_jobs)
            metrics = Metrics(self._gauges(engine, jobs), runs=lambda: runs.statuses())
            runs = Runs(RunContext(self.config, engine, store, metrics), jobs, bus)
            if bus is None:
                await runs.recover()
                await responses.recover(store)
            else:  # others may be running theirs: what no replica holds a lease for fails
                _bus_jobs(bus, runs, store)
        except BaseException:
            if bus is not None:
                await bus.close()
            await store.close()
            raise
        try:
            keys = KeyRing(self.config.api_key, self.config.api_keys_file)
        except ValueError as exc:
            if bus is not None:
                await bus.close()
            await store.close()
            raise StartupError(str(exc)) from None
        self.state = AppState(config, engine, jobs, store=store, runs=runs, keys=keys,
                              limits=limits, metrics=metrics, bus=bus,
                              ready_at=time.monotonic() + config.sim_startup_delay)  # fmt: skip
        ctx = self._ctx = ServerContext(
            self.config, build_router(self.state), loop,
            render_error=render_error, error_response=error_response,
        )  # fmt: skip
        if self._worker is not None and config.worker_header:
            ctx.extra_headers = (("x-oxiserve-worker", f"{self._worker}/{os.getpid()}"),)
        if self.config.uds:
            await asyncio.to_thread(_remove, self.config.uds)  # left by a previous run
            self._server = await loop.create_unix_server(
                lambda: Connection(ctx), self.config.uds, backlog=2048, ssl=tls
            )
        else:
            self._server = await loop.create_server(
                lambda: Connection(ctx), self.config.host, self.config.port, backlog=2048,
                ssl=tls, reuse_port=self._worker is not None or None,
            )  # fmt: skip
            sockname = self._server.sockets[0].getsockname()
            self.host, self.port = sockname[0], sockname[1]
        ctx.start_sweeping()
        await self._load(engine)

    async def _load(self, engine: Engine) -> None:
        """Load a real engine's model while already listening: /health answers, and
        /health/ready says 503 until the model is in (a failure still stops the start)."""
        load = getattr(engine, "load", None)
        if load is None or getattr(engine, "ready", True):
            return
        log.info("loading the model; %s/health/ready answers 503 until it is in", self.url)
        try:
            await asyncio.to_thread(load)
        except BaseException:
            await self.stop(timeout=0)
            raise

    def _tls(self) -> ssl.SSLContext | None:
        config = self.config
        if not config.ssl_certfile:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(config.ssl_certfile, config.ssl_keyfile)
        except (OSError, ssl.SSLError) as exc:
            raise StartupError(f"cannot load the TLS certificate or key: {exc}") from None
        context.set_alpn_protocols(["http/1.1"])
        return context

    async def stop(self, timeout: float | None = None) -> None:
        """Stop accepting; let in-flight requests and running jobs finish (up to ``timeout``);
        then cancel the jobs (their streams end with a terminal event) and close."""
        server, ctx = self._server, self._ctx
        if server is None or ctx is None:
            return
        self._server = None
        ctx.closing = True
        if self.state is not None:
            self.state.stopping = True
        server.close()
        for conn in list(ctx.connections):
            conn.shutdown()
        limit = self.config.shutdown_timeout if timeout is None else timeout
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit
        try:
            await asyncio.wait_for(ctx.drained(), limit)
        except TimeoutError:
            log.warning("shutdown timeout: closing %d busy connections", len(ctx.connections))
        if self.state is not None:
            await self.state.jobs.shutdown(max(0.0, deadline - loop.time()))
            if self.state.runs is not None:
                self.state.runs.close()
            if ctx.connections:  # streams whose jobs were cancelled now end: let them go out
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(ctx.drained(), 0.2)
        for conn in list(ctx.connections):
            conn.abort()
        # Aborted connections run connection_lost (it cancels their handlers) soon after.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ctx.drained(), 1.0)
        ctx.stop_sweeping()
        await server.wait_closed()
        if self.config.uds:
            await asyncio.to_thread(_remove, self.config.uds)
        if self.state is not None:
            await self.state.engine.close()
            if self.state.bus is not None:
                await self.state.bus.close()
            if self.state.store is not None:
                await self.state.store.close()

    def _gauges(self, engine: Engine, jobs: JobSupervisor) -> dict[str, Callable[[], float]]:
        """What /metrics reads at scrape time (nothing is counted per token for these)."""

        def running() -> float:
            return float(getattr(engine, "running", getattr(engine, "active_generations", 0)))

        return {
            "vllm:num_requests_running": running,
            "vllm:num_requests_waiting": lambda: float(getattr(engine, "waiting", 0)),
            "vllm:kv_cache_usage_perc": lambda: 0.0,
            "oxiserve_active_streams": lambda: float(jobs.running),
            "oxiserve_open_connections": lambda: float(
                len(self._ctx.connections) if self._ctx is not None else 0
            ),
        }

    async def reload_keys(self) -> int:
        """Read the API keys file again (SIGHUP), off the event loop; connections stay."""
        if self.state is None or self.state.keys is None:
            return 0
        try:
            count = await asyncio.to_thread(self.state.keys.reload)
        except ValueError as exc:  # no keys were read before either: nothing changes
            log.error("API keys not reloaded: %s", exc)
            return 0
        log.info("API keys reloaded: %d keys", count)
        return count

    async def __aenter__(self) -> Server:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


def _remove(path: str) -> None:
    """Remove a Unix socket's file, if there is one."""
    with contextlib.suppress(FileNotFoundError):
        Path(path).unlink()


async def serve(
    config: Config,
    *,
    loop_name: str = "asyncio",
    worker: int | None = None,
    on_ready: Callable[[], None] | None = None,
) -> None:
    """Run a server until SIGINT/SIGTERM, then shut down gracefully.  A worker process
    (``worker``) says it is ready through ``on_ready``; the supervisor prints the banner."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    server = Server(config, worker=worker)
    await server.start()
    reloads: set[asyncio.Task[int]] = set()  # owned here until they end

    def reload() -> None:
        task = loop.create_task(server.reload_keys())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, reload)
    if on_ready is not None:
        on_ready()
    else:
        print(banner(server.url, config, loop_name), file=sys.stderr, flush=True)
    try:
        await stop.wait()
    finally:
        log.info("shutting down (up to %.1fs for in-flight requests)", config.shutdown_timeout)
        await server.stop()
