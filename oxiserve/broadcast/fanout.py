"""The fan-out: the live sinks a frame is written to from inside ``publish``, and the ring readers'
wake-ups.

    fanout = FanOut()
    fanout.add(sub, transport.write)       # live: gets every frame as it is published
    fanout.send(frame)                     # one call per sink, no task switch
    fanout.remove(sub)                     # e.g. from pause_writing, even from inside send()

The sinks are a tuple replaced on every add/remove, never mutated: a sink that detaches (or
attaches) a subscriber mid-send cannot disturb the loop that is calling it.  ``Topic`` keeps
the current tuple in a slot of its own for its per-token loop, refreshed after each add/remove.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

__all__ = ["FanOut", "Sink", "wait", "wake"]

Sink = Callable[[bytes], None]


class FanOut:
    """Live members, each with its sink, in attach order."""

    __slots__ = ("members", "sinks")

    def __init__(self) -> None:
        self.members: tuple[object, ...] = ()
        self.sinks: tuple[Sink, ...] = ()  # sinks[i] belongs to members[i]

    def __len__(self) -> int:
        return len(self.members)

    def __contains__(self, member: object) -> bool:
        return member in self.members

    def add(self, member: object, sink: Sink) -> None:
        # Members are compared by identity: tuple's in/index try `is` first, and members
        # (subscribers) define no __eq__.
        if member in self.members:
            raise RuntimeError("already a live member of this fan-out")
        self.members = (*self.members, member)
        self.sinks = (*self.sinks, sink)

    def remove(self, member: object) -> None:
        i = self.members.index(member)
        self.members = self.members[:i] + self.members[i + 1 :]
        self.sinks = self.sinks[:i] + self.sinks[i + 1 :]

    def send(self, frame: bytes) -> None:
        for sink in self.sinks:
            sink(frame)


def wake(waiters: list[asyncio.Future[None]]) -> None:
    """Wake every task in ``wait(waiters)`` (each re-checks its condition)."""
    for waiter in waiters:
        if not waiter.done():
            waiter.set_result(None)
    waiters.clear()


async def wait(waiters: list[asyncio.Future[None]]) -> None:
    """Wait until ``wake(waiters)``."""
    waiter = asyncio.get_running_loop().create_future()
    waiters.append(waiter)
    try:
        await waiter
    finally:
        # Cancelled before being woken: do not leave a dead future in the list.
        with contextlib.suppress(ValueError):
            waiters.remove(waiter)
