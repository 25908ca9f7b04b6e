"""Rate limits shared by every replica through the bus.

Each replica admits requests alone, from its own buckets (no round trip per request), and
every ``TICK`` tells the others what it took per caller and how many streams each caller has
open on it; they take the same from their buckets.  So a caller's budget is global within a
tick's delay: a burst spread over replicas can overshoot by what they admit in one tick.
Stream counts are repeated every ``REPEAT`` seconds and forgotten when a replica goes quiet
(``limits.STREAMS_STALE``), so a replica that dies does not hold its callers' streams.

    SharedLimits(bus, limits)   # before bus.start(); bus.spawn(shared.run) after
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from oxiserve.api.limits import Limits
from oxiserve.bus.redis_bus import BusDown, RedisBus

__all__ = ["CHANNEL", "SharedLimits"]

CHANNEL = "oxi:limits"
TICK = 0.1
REPEAT = 1.0


class SharedLimits:
    """See the module docstring."""

    def __init__(self, bus: RedisBus, limits: Limits) -> None:
        self._bus, self._limits = bus, limits
        limits.shared = True
        bus.on_broadcast(CHANNEL, self._heard)

    async def run(self) -> None:
        repeated = 0.0
        while True:
            await asyncio.sleep(TICK)
            now = time.monotonic()
            every = now - repeated >= REPEAT
            if every:
                repeated = now
            spent = self._limits.take_spent()
            streams = self._limits.open_streams(every=every)
            if spent or streams:
                with contextlib.suppress(BusDown):  # a tick lost: limits stay local meanwhile
                    await self._bus.broadcast(CHANNEL, {"spent": spent, "streams": streams})

    def _heard(self, message: dict[str, Any]) -> None:
        sender = message.get("from")
        if not isinstance(sender, str) or sender == self._bus.replica:
            return
        for who, (requests, tokens) in (message.get("spent") or {}).items():
            self._limits.absorb(who, float(requests), float(tokens))
        self._limits.streams_elsewhere(sender, dict(message.get("streams") or {}))
