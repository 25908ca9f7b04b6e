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
        """Another replica's tick; anything out of shape is dropped whole (what is in Redis
        is not trusted to be ours)."""
        sender = message.get("from")
        if not isinstance(sender, str) or sender == self._bus.replica:
            return
        spent, streams = message.get("spent") or {}, message.get("streams") or {}
        if not isinstance(spent, dict) or not isinstance(streams, dict):
            raise ValueError("spent and streams must be objects")
        taken = {who: (_amount(pair[0]), _amount(pair[1])) for who, pair in spent.items()
                 if isinstance(pair, list) and len(pair) == 2}  # fmt: skip
        counts = {who: int(_amount(n)) for who, n in streams.items()}
        for who, (requests, tokens) in taken.items():
            self._limits.absorb(who, requests, tokens)
        self._limits.streams_elsewhere(sender, counts)


def _amount(value: object) -> float:
    """A count another replica sent: a finite number from 0 to 1e12."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"not a number: {value!r}")
    if not 0 <= value <= 1e12:  # NaN fails this too
        raise ValueError(f"out of range: {value!r}")
    return float(value)
