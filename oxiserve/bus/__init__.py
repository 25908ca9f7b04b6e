"""The bus: what replicas (or ``--workers``) share beyond the store, the live event streams
of runs and background responses, the leases of the jobs each runs, and calls to a job's
owner.  Redis Streams (``--bus redis://HOST:PORT/N``, the ``[redis]`` extra); without a bus
everything stays in one process, as before.

The parts: ``entries`` (the layout in Redis and its snapshot), ``mirror`` (the owner's side of
one topic), ``followers`` (another replica's topic rebuilt here), ``redis_bus`` (the client,
its tasks and the leases), ``limits`` (rate limits shared by every replica).
"""

from oxiserve.bus.redis_bus import BusDown, NotOwned, OwnerUnreachable, RedisBus

__all__ = ["BusDown", "NotOwned", "OwnerUnreachable", "RedisBus"]
