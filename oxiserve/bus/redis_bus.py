"""The Redis bus: mirrored topics, remote readers, leases, the owner's calls, and health.

One ``RedisBus`` per server process (a replica, or a worker of ``--workers``):

* **mirrors** (``mirror``): the topics of the jobs this replica runs, flushed by one task, one
  pipeline per flush for every topic with something new (one ``XADD`` per topic per flush);
* **remotes** (``follow``): another replica's topic rebuilt here from a snapshot of its keys
  (one Lua call, atomic), then fed by one ``XREAD BLOCK`` loop over every followed stream;
  local subscribers read it as any topic, with the ring's lag semantics;
* **leases**: each running job has a member in the ``oxi:leases`` sorted set (its score: when
  it expires) and its owner in ``oxi:owners``; the owner renews them every third of
  ``--lease-timeout``; every replica reaps expired ones (``ZREM`` decides which replica fails
  the job: only one can remove it) and sweeps the store for unfinished jobs with no lease;
* **calls** (``call``): cancel and friends, sent over pub/sub to the replica that owns a job;
* **health**: a ``PING`` every half second; ``healthy`` is what the API checks before new
  stateful work (503 with Retry-After when the bus is down).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import orjson

from oxiserve.broadcast import Topic
from oxiserve.bus.entries import END, Snapshot, entry_frames, entry_ids
from oxiserve.bus.followers import Follower, follower
from oxiserve.bus.mirror import MOVED, KeyId, Layout, Mirror, prefix

log = logging.getLogger("oxiserve.bus")

LEASES = "oxi:leases"
REAPED = "oxi:reaped:"  # + member: a tombstone, so a stalled owner knows it lost the job
OWNERS = "oxi:owners"
ALIVE_TTL_MS = 3_600_000  # a running job's keys outlive a replica that died by an hour at most
READ_BLOCK_MS = 50
CALL_TIMEOUT = 5.0

# [hash fields, stream entries, controls, [key, text, layout, ...]] of a job's current
# generation, read in one step (a flush between two reads would tear the snapshot).
_SNAPSHOT = """
local gen = redis.call('GET', KEYS[1] .. 'g')
if not gen then return false end
local p = KEYS[1] .. gen .. ':'
local h = redis.call('HGETALL', p .. 'h')
local per_key = {}
for i = 1, #h, 2 do
  local name = h[i]
  if string.sub(name, 1, 1) == 'i' then
    local key = string.sub(name, 2)
    per_key[#per_key + 1] = key
    per_key[#per_key + 1] = redis.call('GET', p .. 't' .. key) or ''
    per_key[#per_key + 1] = redis.call('GET', p .. 'l' .. key) or ''
  end
end
return {gen, h, redis.call('XRANGE', p .. 's', '-', '+'), redis.call('LRANGE', p .. 'c', 0, -1),
        per_key}
"""

Expired = Callable[[str, int], Awaitable[list[bytes]]]  # (job id, next seq) -> terminal frames
Unfinished = Callable[[], Awaitable[list[tuple[str, str, float]]]]  # [(kind, id, created_at)]
Handler = Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]


class BusDown(Exception):
    """The bus cannot be reached now."""


class NotOwned(Exception):
    """No replica holds the job's lease (it ended, or its owner's lease was reaped)."""


class OwnerUnreachable(BusDown):
    """A replica holds the job's lease but did not answer (it may be dying: its lease will
    lapse; or busy): the caller should retry rather than act as if nobody ran the job."""


class _Remote:
    __slots__ = ("follower", "last_id", "stream")

    def __init__(self, follower: Follower, stream: str, last_id: bytes) -> None:
        self.follower, self.stream, self.last_id = follower, stream, last_id


class RedisBus:
    """See the module docstring."""

    def __init__(
        self,
        url: str,
        lease_timeout: float,
        replica: str | None = None,
        flush_interval: float = 0.0,
    ) -> None:
        import redis.asyncio as redis

        # Any: redis-py's command signatures are too loose to type what the replies are.
        # A burst waits for a free connection (up to the socket timeout) rather than failing:
        # "too many connections" is load, not the bus being down.
        pool = redis.BlockingConnectionPool.from_url(
            url, socket_timeout=2.0, socket_connect_timeout=1.0, max_connections=64, timeout=2.0
        )
        self._client: Any = redis.Redis(connection_pool=pool)
        self._redis = redis
        self.replica = replica or f"{socket.gethostname()}-{os.getpid()}-{os.urandom(3).hex()}"
        self.lease_timeout = lease_timeout
        self._flush_interval = flush_interval  # seconds, at least, from one flush to the next
        self.healthy = False
        self._snapshot = self._client.register_script(_SNAPSHOT)
        self._queue: list[Mirror] = []
        self._mirrors: set[Mirror] = set()  # not finished: written again whole after an outage
        self._reap_after = 0.0  # monotonic: no reaping before (owners renew after an outage)
        self._wake = asyncio.Event()
        self._leases: set[str] = set()  # members this replica holds
        self._released: list[str] = []
        self._remotes: dict[str, _Remote] = {}  # by job id
        self._remotes_changed = asyncio.Event()
        self._following: dict[str, asyncio.Task[Follower | None]] = {}  # being rebuilt
        self._watches: set[asyncio.Task[None]] = set()  # each mirror's wait for its end
        self._expired: dict[str, Expired] = {}  # by kind
        self._lost: dict[str, Callable[[str], Coroutine[Any, Any, None]]] = {}  # by kind
        self._handlers: dict[str, Handler] = {}
        self._broadcasts: dict[str, Callable[[dict[str, Any]], None]] = {}
        self._subscribed: set[str] = set()  # broadcast channels the listener has joined
        self._unfinished: Unfinished | None = None
        self._calls: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._flushing = False
        self._closed = False
        self._stopped = False  # the loops end (close: after the last flush)
        self._flushed = asyncio.Event()  # set after each flush

    # --- life --------------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect (raises ``BusDown`` if Redis cannot be reached) and start the tasks."""
        try:
            await self._client.ping()
        except (OSError, self._redis.RedisError) as exc:
            raise BusDown(f"the bus at {self._where()} cannot be reached: {exc}") from None
        self.healthy = True
        loop = asyncio.get_running_loop()
        loops = (self._flush_loop, self._read_loop, self._lease_loop, self._listen_loop)
        self._tasks += [loop.create_task(run()) for run in loops]

    async def close(self) -> None:
        """Flush what is left (bounded; the jobs' ends and released leases among it), stop the
        tasks, and say this replica is gone (any lease it still holds is then reaped as soon
        as it lapses).  Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self.healthy:
            self._wake.set()
            await self.sync(2.0)
        if self.healthy:
            with contextlib.suppress(OSError, TimeoutError, self._redis.RedisError):
                await asyncio.wait_for(self._client.delete(f"oxi:alive:{self.replica}"), 2.0)
        self._stopped = True
        stopping = [*self._tasks, *self._watches, *self._following.values()]
        for task in stopping:
            task.cancel()
        if stopping:  # bounded: a client call that does not give way to a cancel stops no close
            _, stuck = await asyncio.wait(stopping, timeout=2.0)
            for task in stuck:
                log.warning("bus: a task did not stop: %r", task)
        with contextlib.suppress(OSError, TimeoutError, self._redis.RedisError):
            await asyncio.wait_for(self._client.aclose(close_connection_pool=True), 2.0)

    def _where(self) -> str:
        kwargs = self._client.connection_pool.connection_kwargs
        return f"{kwargs.get('host', '?')}:{kwargs.get('port', '?')}/{kwargs.get('db', 0)}"

    def on_expired(self, kind: str, handler: Expired) -> None:
        """``handler`` fails a job of ``kind`` whose owner's lease expired (store first), and
        gives the frames that end its stream for remote readers."""
        self._expired[kind] = handler

    def on_lost(self, kind: str, handler: Callable[[str], Coroutine[Any, Any, None]]) -> None:
        """``handler`` stops a job of ``kind`` this replica runs whose lease another replica
        reaped (this one stalled for longer than a lease): it must end as that one stored."""
        self._lost[kind] = handler

    def on_unfinished(self, finder: Unfinished) -> None:
        """``finder`` lists the store's unfinished jobs, for the sweep of lease-less ones."""
        self._unfinished = finder

    def on_broadcast(self, channel: str, handler: Callable[[dict[str, Any]], None]) -> None:
        """``handler`` gets every message ``broadcast`` on ``channel`` by any replica (this
        one's included: ``message["from"]`` says whose)."""
        self._broadcasts[channel] = handler
        self._subscribed.discard(channel)

    async def broadcast(self, channel: str, message: dict[str, Any]) -> None:
        """Publish ``message`` to every replica (lossy, as pub/sub is: for what is repeated)."""
        self._check()
        try:
            await self._client.publish(channel, orjson.dumps({**message, "from": self.replica}))
        except (OSError, self._redis.RedisError) as exc:
            self._down(exc)
            raise BusDown("the bus cannot be reached") from None

    def spawn(self, run: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run ``run()`` as one of the bus's tasks (stopped by ``close``)."""
        self._tasks.append(asyncio.get_running_loop().create_task(run()))

    def handle(self, op: str, handler: Handler) -> None:
        """Serve ``op`` for the jobs this replica owns (``call`` from any replica)."""
        self._handlers[op] = handler

    # --- mirrors -----------------------------------------------------------------------------

    def mirror(
        self,
        job_id: str,
        kind: str,
        topic: Topic,
        key_id: KeyId,
        retention: float,
        layout: Layout | None = None,
    ) -> None:
        """Mirror ``topic`` (a job's, from its first frame) into Redis until it closes;
        ``layout`` gives a key's text frames (readers resuming mid-stream need it)."""
        mirror = Mirror(job_id, kind, topic, key_id, retention, layout)  # notes what is there
        self._mirrors.add(mirror)
        watch = topic.subscribe(topic.seq)

        def capture(frame: bytes) -> None:
            if mirror.capture(frame):
                self._dirty(mirror)

        watch.attach(capture)
        self._dirty(mirror)

        async def ended() -> None:
            try:
                await watch.wait_done()
            finally:
                watch.close()
                self._dirty(mirror)

        watching = asyncio.get_running_loop().create_task(ended())
        self._watches.add(watching)  # the loop holds tasks weakly
        watching.add_done_callback(self._watches.discard)

    def _dirty(self, mirror: Mirror) -> None:
        if not mirror.queued:
            mirror.queued = True
            self._queue.append(mirror)
            self._wake.set()

    async def _flush_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._stopped:  # (a cancel that a client call swallows still ends it)
            await self._wake.wait()
            started = loop.time()
            self._wake.clear()
            if not self.healthy:
                continue  # the health check wakes us when the bus is back
            batch, self._queue = self._queue, []
            released, self._released = self._released, []
            pipe = self._client.pipeline(transaction=False)
            for mirror in batch:
                mirror.queued = False
                mirror.commands(pipe, ALIVE_TTL_MS)
            if released:
                pipe.zrem(LEASES, *released)
                pipe.hdel(OWNERS, *released)
            self._flushing = True
            try:
                replies = await pipe.execute(raise_on_error=False)
                self._mirrors.difference_update([m for m in batch if m.finished])
                refused = [r for r in replies if isinstance(r, self._redis.ResponseError)]
                if refused:  # Redis is up but refused a command (keys not as we left them)
                    log.warning("bus: Redis refused %d commands of a flush, first: %s; the "
                                "jobs are written again", len(refused), refused[0])  # fmt: skip
                    self._again(batch)
            except (OSError, self._redis.RedisError) as exc:
                self._down(exc)
                self._again(batch)
                self._released += released
            finally:
                self._flushing = False
                self._flushed.set()
            # let the next batch gather: an iteration at least, or what --bus-flush-ms asks
            await asyncio.sleep(max(0.0, started + self._flush_interval - loop.time()))

    def _again(self, batch: list[Mirror]) -> None:
        """Write these mirrors again, whole, as new generations (at the next healthy flush)."""
        for mirror in batch:
            mirror.broken, mirror.finished = True, False
            self._mirrors.add(mirror)
            self._dirty(mirror)

    async def sync(self, timeout: float = 1.0) -> None:
        """Return once what was published so far is in Redis (or after ``timeout``, or at
        once while the bus is down): a replica told of a job right after may read it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (self._queue or self._released or self._flushing) and self.healthy:
            self._flushed.clear()
            left = deadline - loop.time()
            if left <= 0:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._flushed.wait(), left)

    # --- remotes -----------------------------------------------------------------------------

    async def follow(self, job_id: str, capacity: int) -> Follower | None:
        """Another replica's live topic of ``job_id``, rebuilt here (shared by every reader on
        this replica), or None if the bus has none for it."""
        remote = self._remotes.get(job_id)
        if remote is not None and not remote.follower.topic.closed:
            return remote.follower
        pending = self._following.get(job_id)
        if pending is None:  # one rebuild, whoever asks meanwhile shares it; a reader that
            # leaves does not cancel it for the others
            pending = asyncio.get_running_loop().create_task(self._rebuild(job_id, capacity))
            self._following[job_id] = pending
            pending.add_done_callback(lambda task: self._rebuilt(job_id, task))
        return await asyncio.shield(pending)

    def _rebuilt(self, job_id: str, task: asyncio.Task[Follower | None]) -> None:
        if self._following.get(job_id) is task:
            del self._following[job_id]
        if not task.cancelled():
            task.exception()  # retrieved here: the readers still waiting get it raised

    async def _rebuild(self, job_id: str, capacity: int) -> Follower | None:
        try:
            reply = await self._snapshot(keys=[prefix(job_id)])
        except (OSError, self._redis.RedisError) as exc:
            self._down(exc)
            raise BusDown("the bus cannot be reached") from None
        if not reply:
            return None
        try:
            gen = reply[0].decode()
            snap = Snapshot.decode(reply[1:])
            made = follower(snap, capacity)
            for seq, key, text, frame in snap.frames:
                _publish(made, seq, key, text, frame)
        except Exception:  # keys that are not ours: as if there were none (the store replays)
            log.warning("bus: %s's keys could not be read", job_id, exc_info=True)
            return None
        if snap.ended:
            made.topic.close()
            return made
        stream = f"{prefix(job_id)}{gen}:s"
        self._remotes[job_id] = _Remote(made, stream, snap.last_id)
        self._remotes_changed.set()
        return made

    async def _read_loop(self) -> None:
        while not self._stopped:
            if not self._remotes or not self.healthy:
                self._remotes_changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._remotes_changed.wait(), 0.5)
                continue
            by_stream = {r.stream.encode(): (job_id, r) for job_id, r in self._remotes.items()}
            streams = {name: r.last_id for name, (_, r) in by_stream.items()}
            try:
                reply = await self._client.xread(streams, count=512, block=READ_BLOCK_MS)
            except (OSError, self._redis.RedisError) as exc:
                self._down(exc)
                self._abort_remotes("The bus failed while the stream was read; re-attach.")
                continue
            for name, entries in reply or []:
                job_id, remote = by_stream[name]
                try:
                    self._apply(job_id, remote, entries)
                except Exception:  # an entry that is not ours: this job's readers re-attach
                    log.warning("bus: a bad entry in %s's stream", job_id, exc_info=True)
                    self._abort(job_id, "The stream could not be read; re-attach.")

    def _apply(self, job_id: str, remote: _Remote, entries: list[Any]) -> None:
        made = remote.follower
        for entry_id, fields in entries:
            remote.last_id = entry_id
            for key, item_id in entry_ids(fields).items():
                made.key_id(key, item_id)
            for seq, key, text, frame in entry_frames(fields):
                if seq < made.topic.seq:
                    continue  # had it from the snapshot
                if seq > made.topic.seq:  # trimmed before this replica read it
                    log.warning("bus: %s fell behind its stream; its readers re-attach", job_id)
                    self._abort(job_id, "The stream moved on faster than it was read; re-attach.")
                    return
                _publish(made, seq, key, text, frame)
            if END in fields:
                made.topic.close()
                self._remotes.pop(job_id, None)
                return
            if MOVED in fields:  # the owner wrote the job again, elsewhere: start over
                self._abort(job_id, "The stream was written again by its owner; re-attach.")
                return

    def _abort(self, job_id: str, message: str) -> None:
        remote = self._remotes.pop(job_id, None)
        if remote is not None and not remote.follower.topic.closed:
            remote.follower.topic.close(remote.follower.abort_frame(message))

    def _abort_remotes(self, message: str) -> None:
        for job_id in list(self._remotes):
            self._abort(job_id, message)

    # --- leases ------------------------------------------------------------------------------

    async def lease(self, kind: str, job_id: str) -> None:
        """Hold ``job_id``'s lease from now until ``release`` (raises ``BusDown``)."""
        member = f"{kind}:{job_id}"
        self._check()
        try:
            pipe = self._client.pipeline(transaction=False)
            pipe.zadd(LEASES, {member: time.time() + self.lease_timeout})
            pipe.hset(OWNERS, member, self.replica)
            await pipe.execute()
        except (OSError, self._redis.RedisError) as exc:
            self._down(exc)
            raise BusDown("the bus cannot be reached") from None
        self._leases.add(member)

    def release(self, kind: str, job_id: str) -> None:
        """The job ended (its end stored): its lease goes with the next flush."""
        member = f"{kind}:{job_id}"
        if member in self._leases:
            self._leases.discard(member)
            self._released.append(member)
            self._wake.set()

    async def _lease_loop(self) -> None:
        tick = min(0.5, self.lease_timeout / 3)
        renew_every = max(1, int(self.lease_timeout / 3 / tick))
        count = 0
        while not self._stopped:
            await asyncio.sleep(tick * random.uniform(0.9, 1.1))
            count += 1
            try:
                await asyncio.wait_for(self._client.ping(), 2.0)
            except (OSError, TimeoutError, self._redis.RedisError) as exc:
                self._down(exc)
                continue
            if not self.healthy:
                # idle connections that predate the outage would each fail once more (the
                # ones in use, the listener's and the reader's, are being made again)
                await self._client.connection_pool.disconnect(inuse_connections=False)
                self._recovered()
                count = renew_every  # renew at once
            if count % renew_every:
                continue
            try:
                await self._renew()
                await self._reap()
                if count % (renew_every * 4) == 0:
                    await self._sweep()
            except (OSError, TimeoutError, self._redis.RedisError) as exc:
                self._down(exc)
            except Exception:
                log.exception("bus: reaping failed")

    def _recovered(self) -> None:
        """The bus is back: every unfinished mirror is written again whole (Redis may have
        lost it), and no lease is reaped for a third of a lease, so that replicas which
        could not renew theirs during the outage renew them first."""
        log.warning("bus: %s is reachable again", self._where())
        self.healthy = True
        for mirror in self._mirrors:
            mirror.broken, mirror.finished = True, False
            self._dirty(mirror)
        self._reap_after = time.monotonic() + self.lease_timeout / 3 + 1.0
        self._wake.set()

    async def _renew(self) -> None:
        # This replica is alive for a lease: a reaper leaves its jobs to it, even if one of
        # their leases lapsed (a renewal that came late).
        await self._client.set(f"oxi:alive:{self.replica}", b"1",
                               px=int(self.lease_timeout * 1000))  # fmt: skip
        if not self._leases:
            return
        members = list(self._leases)
        scores = await self._client.zmscore(LEASES, members)
        gone = [m for m, score in zip(members, scores, strict=True) if score is None]
        if gone:  # reaped by another replica (a tombstone says so), or Redis lost them
            reaped = await self._client.mget([f"{REAPED}{m}" for m in gone])
            for member, tomb in zip(gone, reaped, strict=True):
                if tomb is not None:
                    self._abandon(member)
        if self._leases:
            until = time.time() + self.lease_timeout
            pipe = self._client.pipeline(transaction=False)
            pipe.zadd(LEASES, dict.fromkeys(self._leases, until))
            pipe.hset(OWNERS, mapping=dict.fromkeys(self._leases, self.replica))
            await pipe.execute()

    def _abandon(self, member: str) -> None:
        self._leases.discard(member)
        kind, _, job_id = member.partition(":")
        handler = self._lost.get(kind)
        log.warning("bus: %s %s was failed by another replica (this one stalled for longer "
                    "than its lease): it stops here", kind, job_id)  # fmt: skip
        if handler is not None:
            stopping = asyncio.get_running_loop().create_task(handler(job_id))
            self._watches.add(stopping)
            stopping.add_done_callback(self._watches.discard)

    async def _reap(self) -> None:
        if time.monotonic() < self._reap_after:
            return
        expired = await self._client.zrangebyscore(LEASES, 0, time.time(), start=0, num=64)
        for member in expired:
            owner = await self._client.hget(OWNERS, member)
            if owner is not None and await self._client.exists(f"oxi:alive:{owner.decode()}"):
                continue  # its replica lives: its next renewal comes
            if await self._client.zrem(LEASES, member):  # this replica fails it, no other
                await self._client.hdel(OWNERS, member)
                # its owner, if it only stalled, learns at its next renewal that it is failed
                await self._client.set(f"{REAPED}{member.decode()}", b"1", px=3_600_000)
                await self._fail(member.decode())

    async def _sweep(self) -> None:
        """Unfinished jobs in the store with no lease (their replica died while the bus was
        down, or before it took one) fail too, once older than a lease."""
        if self._unfinished is None or time.monotonic() < self._reap_after:
            return
        jobs = await self._unfinished()
        if not jobs:
            return
        members = [f"{kind}:{job_id}" for kind, job_id, _ in jobs]
        scores = await self._client.zmscore(LEASES, members)
        now = time.time()
        for (_, _, created), member, score in zip(jobs, members, scores, strict=True):
            if score is None and member not in self._leases and created < now - self.lease_timeout:
                await self._fail(member)

    async def _fail(self, member: str) -> None:
        kind, _, job_id = member.partition(":")
        handler = self._expired.get(kind)
        if handler is None:
            return
        head = await self._head(job_id)
        frames = await handler(job_id, head if head is not None else 0)
        log.warning("bus: %s %s failed: its replica stopped renewing its lease", kind, job_id)
        gen = await self._client.get(f"{prefix(job_id)}g")
        if gen is None or head is None or not frames:
            return
        stream = f"{prefix(job_id)}{gen.decode()}:s"
        fields = {b"c%d" % (head + i): frame for i, frame in enumerate(frames)}
        fields[END] = b"1"
        await self._client.xadd(stream, fields, id=f"{head + len(frames)}-0")

    async def _head(self, job_id: str) -> int | None:
        """The next seq of a job's current stream (None: it has none, or it ended)."""
        gen = await self._client.get(f"{prefix(job_id)}g")
        if gen is None:
            return None
        stream = f"{prefix(job_id)}{gen.decode()}:s"
        last = await self._client.xrevrange(stream, count=1)
        if not last:
            base = await self._client.hget(f"{prefix(job_id)}{gen.decode()}:h", "base")
            return int(base or 0)
        entry_id, fields = last[0]
        if END in fields:
            return None
        return int(entry_id.split(b"-")[0])

    # --- calls to a job's owner --------------------------------------------------------------

    async def owner(self, kind: str, job_id: str) -> str | None:
        try:
            found = await self._client.hget(OWNERS, f"{kind}:{job_id}")
        except (OSError, self._redis.RedisError) as exc:
            self._down(exc)
            raise BusDown("the bus cannot be reached") from None
        return None if found is None else found.decode()

    async def call(self, kind: str, job_id: str, op: str, args: dict[str, Any]) -> dict[str, Any]:
        """Run ``op`` on the replica that owns the job; its answer (raises ``NotOwned``)."""
        owner = await self.owner(kind, job_id)
        if owner is None:
            raise NotOwned(job_id)
        if owner == self.replica:
            return await self._serve(op, job_id, args)
        call_id = os.urandom(8).hex()
        future = self._calls[call_id] = asyncio.get_running_loop().create_future()
        message = {"op": op, "id": job_id, "args": args, "call": call_id, "from": self.replica}
        try:
            reached = await self._client.publish(f"oxi:replica:{owner}", orjson.dumps(message))
            if not reached:
                raise OwnerUnreachable(f"the replica running {job_id} is not listening")
            return await asyncio.wait_for(future, CALL_TIMEOUT)
        except TimeoutError:
            raise OwnerUnreachable(f"the replica running {job_id} did not answer") from None
        except (OSError, self._redis.RedisError) as exc:
            self._down(exc)
            raise BusDown("the bus cannot be reached") from None
        finally:
            self._calls.pop(call_id, None)

    async def _serve(self, op: str, job_id: str, args: dict[str, Any]) -> dict[str, Any]:
        handler = self._handlers.get(op)
        if handler is None:
            return {"error": f"unknown operation {op}"}
        return await handler(job_id, args)

    async def _listen_loop(self) -> None:
        channel = f"oxi:replica:{self.replica}"
        while not self._stopped:
            pubsub = self._client.pubsub()
            try:
                self._subscribed = set()
                await pubsub.subscribe(channel)
                while not self._stopped:
                    joining = set(self._broadcasts) - self._subscribed
                    if joining:
                        await pubsub.subscribe(*joining)
                        self._subscribed |= joining
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
                    if message is None:
                        continue
                    self._heard(message)
            except (OSError, self._redis.RedisError) as exc:
                self._down(exc)
                await asyncio.sleep(0.5)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    def _heard(self, message: dict[str, Any]) -> None:
        """One pub/sub message: anything not shaped as ours is logged and dropped (a channel
        anyone with access to Redis can write to must not stop the listener)."""
        try:
            data = orjson.loads(message["data"])
            if not isinstance(data, dict):
                raise ValueError("not an object")
            heard = self._broadcasts.get(message["channel"].decode())
            if heard is not None:
                heard(data)
            else:
                self._received(data)
        except Exception:
            log.warning("bus: dropped a malformed message on %r", message.get("channel"),
                        exc_info=True)  # fmt: skip

    def _received(self, message: dict[str, Any]) -> None:
        if "reply" in message:
            future = self._calls.get(str(message["call"]))
            if future is not None and not future.done() and isinstance(message["reply"], dict):
                future.set_result(message["reply"])
            return
        for name in ("op", "id", "call", "from"):
            if not isinstance(message.get(name), str):
                raise ValueError(f"no {name}")
        answering = asyncio.get_running_loop().create_task(self._answer(message))
        self._watches.add(answering)  # held until it ends (the loop holds tasks weakly)
        answering.add_done_callback(self._watches.discard)

    async def _answer(self, message: dict[str, Any]) -> None:
        try:
            reply = await self._serve(message["op"], message["id"], message.get("args") or {})
        except Exception as exc:
            log.exception("bus: %s of %s failed", message["op"], message["id"])
            reply = {"error": str(exc)}
        answer = {"call": message["call"], "reply": reply}
        with contextlib.suppress(OSError, self._redis.RedisError):
            await self._client.publish(f"oxi:replica:{message['from']}", orjson.dumps(answer))

    # --- health ------------------------------------------------------------------------------

    def _check(self) -> None:
        if not self.healthy:
            raise BusDown("the bus cannot be reached")

    def _down(self, exc: BaseException) -> None:
        """A command failed: the bus is down, unless Redis answered (refusing that command,
        e.g. for a key of another type): that fails the one call, not every request."""
        if isinstance(exc, self._redis.ResponseError):
            log.warning("bus: Redis refused a command: %s", exc)
            return
        if self.healthy:
            log.warning("bus: %s cannot be reached (%s)", self._where(), exc)
        self.healthy = False


def _publish(made: Follower, seq: int, key: int, text: str, frame: bytes) -> None:
    topic = made.topic
    if key < 0:
        topic.publish(frame)
    else:
        topic.publish_text(text, key, frame)
        made.text(seq, key, topic.length(key))
