"""Per-server state shared by its connections: config, router, registry, timeout sweep.

It implements ``contracts.Host`` and knows its connections only as ``contracts.Sweepable``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os

import h11

from oxiserve.config import Config
from oxiserve.http.budget import WriteBudget
from oxiserve.http.contracts import ErrorResponse, RenderError, Sweepable
from oxiserve.http.cors import CorsPolicy
from oxiserve.http.heads import HeadMemo
from oxiserve.http.phases import resolve
from oxiserve.http.router import Router

log = logging.getLogger("oxiserve.http")


class ServerContext:
    """Everything a Connection needs from its server; one per Server instance.

    ``render_error`` and ``error_response`` give error bodies the application's shape.
    """

    def __init__(
        self,
        config: Config,
        router: Router,
        loop: asyncio.AbstractEventLoop,
        *,
        render_error: RenderError,
        error_response: ErrorResponse,
    ) -> None:
        self.config = config
        self.router = router
        self.loop = loop
        self.render_error = render_error
        self.error_response = error_response
        self.phase_moves = resolve(config)
        self.heads = HeadMemo(config.max_header_bytes)
        self.connections: set[Sweepable] = set()
        self.closing = False
        self.access_log = config.access_log and logging.getLogger("oxiserve.access").isEnabledFor(
            logging.INFO
        )
        self.cors = CorsPolicy(config.cors_allow_origins) if config.cors_allow_origins else None
        self.extra_headers: tuple[tuple[str, str], ...] = ()  # on every answer (worker id)
        # The answer to OPTIONS *: every method some route takes.
        methods = {method for method, _ in router.routes()} | {"OPTIONS"}
        self.allow_all = ", ".join(sorted(methods | ({"HEAD"} if "GET" in methods else set())))
        self.budget = WriteBudget(config.max_buffered_bytes, self.buffered_bytes, loop)
        self._ids = itertools.count(1)
        self._id_prefix = "req_" + os.urandom(6).hex()
        self._sweeper: asyncio.TimerHandle | None = None
        self._drained: asyncio.Event | None = None
        shortest = min(config.header_timeout, config.body_timeout, config.keepalive_timeout)
        self._tick = min(1.0, max(0.01, shortest / 4))

    def new_parser(self) -> h11.Connection:
        return h11.Connection(h11.SERVER, max_incomplete_event_size=self.config.max_header_bytes)

    def new_id(self) -> str:
        return f"{self._id_prefix}{next(self._ids):06x}"

    def admit(self, conn: Sweepable) -> bool:
        if self.closing or len(self.connections) >= self.config.max_connections:
            return False
        self.connections.add(conn)
        return True

    def release(self, conn: Sweepable) -> None:
        self.connections.discard(conn)
        if not self.connections and self._drained is not None:
            self._drained.set()

    async def drained(self) -> None:
        """Returns when no connection is left (used during shutdown)."""
        if self.connections:
            self._drained = asyncio.Event()
            await self._drained.wait()

    def start_sweeping(self) -> None:
        self._sweeper = self.loop.call_later(self._tick, self._sweep)

    def stop_sweeping(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None

    def _sweep(self) -> None:
        # Rescheduled first: no connection's failure may end the sweep, or from then on no
        # timeout would be enforced (slowloris would work again).
        self._sweeper = self.loop.call_later(self._tick, self._sweep)
        now = self.loop.time()
        for conn in list(self.connections):
            try:
                conn.check_timeout(now)
            except Exception:
                log.exception("timeout check failed; dropping the connection")
                with contextlib.suppress(Exception):
                    conn.abort()
                self.release(conn)

    def buffered_bytes(self) -> int:
        """Bytes waiting in all connections' write buffers (slow readers)."""
        return sum(conn.buffered for conn in self.connections)
