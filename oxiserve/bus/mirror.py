"""The owner's side: one topic generation mirrored into Redis, a batch per flush.

The mirror is a live sink of the topic: each frame published is noted (``capture``: the frame,
its key, text and text end, read from the topic in O(1)), and the bus flushes what was noted,
so a burst of tokens between two flushes is one ``XADD``.  If a flush fails (Redis down), or
more than ``MAX_PENDING`` frames wait, the mirror starts a new generation from a snapshot of
the topic once the bus is back; the old one gets a ``moved`` entry, so that replicas reading
it stop (their readers re-attach) instead of waiting for an end that never comes.
"""

from __future__ import annotations

import os
import time
from array import array
from collections.abc import Callable
from typing import Any

from oxiserve.broadcast import Topic
from oxiserve.bus.entries import END, Batch, encode_control

__all__ = ["Mirror", "prefix"]

REFRESH = 600.0  # seconds between renewals of a running job's keys' TTLs
MAX_PENDING = 65_536  # frames a mirror holds for the bus at most (then: a new generation)
MOVED = b"moved"
KeyId = Callable[[int], str]
# A key's text frames so far: their sequence numbers and the text lengths after them.
Layout = Callable[[int], tuple["array[int]", "array[int]"]]


def prefix(job_id: str) -> str:
    """A job's keys: one hash tag, so a Redis Cluster keeps them on one shard."""
    return f"oxi:{{{job_id}}}:"


class Mirror:
    """See the module docstring.  ``commands`` adds what is new to a pipeline."""

    __slots__ = (
        "_expiring", "_key_id", "_known", "_layout", "_lengths", "_pending", "_refresh_at",
        "_retention", "_sent", "broken", "capacity", "finished", "gen", "job_id", "kind",
        "queued", "started", "topic",
    )  # fmt: skip

    def __init__(
        self,
        job_id: str,
        kind: str,
        topic: Topic,
        key_id: KeyId,
        retention: float,
        layout: Layout | None = None,
    ) -> None:
        self.job_id, self.kind, self.topic = job_id, kind, topic
        self._key_id = key_id
        self._layout = layout
        self._retention = retention
        self.capacity = topic.capacity
        self.gen = os.urandom(4).hex()
        self._sent = 0  # frames flushed
        # (frame, key, text end, text) noted since the last flush; the frames the topic
        # already has when the mirror is made are its first
        self._pending: list[tuple[bytes, int, int, str]] = []
        born = topic.held(0)
        if born is None:  # already overran its ring: a generation from the topic as it is
            self.broken = True
        ends: dict[int, int] = {}
        for frame, key, end in born or []:
            text = topic.text(key)[ends.get(key, 0) : end] if key >= 0 else ""
            ends[key] = end
            self._pending.append((frame, key, end, text))
        self._lengths: dict[int, int] = {}  # text lengths after them
        self._known: set[int] = set()  # text keys whose id is in the hash
        self.started = False
        self.broken = False  # a flush failed: the next one starts a new generation
        self.finished = False  # its end is in Redis
        self.queued = False
        self._expiring: set[str] = set()  # keys that have their TTL
        self._refresh_at = 0.0  # monotonic: when every key's TTL (and the pointer) is renewed

    def capture(self, frame: bytes) -> bool:
        """The topic's sink: note ``frame``, just published; whether the bus must be told
        (the first frame since the last flush)."""
        key, end, text = self.topic.newest()
        pending = self._pending
        pending.append((frame, key, end, text))
        if len(pending) > MAX_PENDING:  # the bus cannot keep up: start again from the topic
            pending.clear()
            self.broken = True
        return len(pending) == 1

    def keys(self, name: str) -> str:
        return f"{prefix(self.job_id)}{self.gen}:{name}"

    def commands(self, pipe: Any, alive_ttl_ms: int) -> None:
        """Add this flush's commands to ``pipe`` (a redis pipeline)."""
        if self.finished:
            return
        topic = self.topic
        held, self._pending = self._pending, []
        if self.broken:
            self._restart(pipe)
            held = []
        elif not self.started:
            self.started = True
            pipe.hset(self.keys("h"), mapping={"base": "0", "kind": self.kind})
        batch, lengths, seq = Batch(), self._lengths, self._sent
        for frame, key, end, text in held:
            if key >= 0:
                lengths[key] = end
            batch.add(seq, key, text, frame, lengths)
            seq += 1
        self._sent = seq
        ends = topic.closed
        fields: dict[bytes, bytes] = {}
        for key in batch.texts:
            if key not in self._known:
                self._known.add(key)
                item_id = self._key_id(key)
                pipe.hset(self.keys("h"), f"i{key}", item_id)
                fields[b"k%d" % key] = item_id.encode()
        fields.update(batch.fields())
        if ends:
            fields[END] = b"1"
        if fields:
            entry_id = f"{seq}-0" if batch.frames else f"{seq}-1"
            pipe.xadd(self.keys("s"), fields, id=entry_id, maxlen=max(16, self.capacity),
                      approximate=True)  # fmt: skip
        for key, texts in batch.texts.items():
            pipe.append(self.keys(f"t{key}"), "".join(texts))
            pipe.append(self.keys(f"l{key}"), batch.layout[key].tobytes())
        if batch.controls:
            pipe.rpush(self.keys("c"), *batch.controls)
        self._expire(pipe, batch, bool(fields), ends, alive_ttl_ms)
        self.finished = ends

    def _expire(self, pipe: Any, batch: Batch, added: bool, ends: bool, alive_ttl_ms: int) -> None:
        """Every key gets a TTL once, when it is made (an hour while the job runs, so a dead
        replica's keys go), all of them again every ``REFRESH`` seconds, and the retention's
        at the end; a flush in between adds no command for it."""
        now = time.monotonic()
        if ends or now >= self._refresh_at:
            ttl = int(self._retention * 1000) if ends else alive_ttl_ms
            names = [self.keys(name) for name in "shc"]
            names += [self.keys(f"{kind}{key}") for key in self._known for kind in "tl"]
            self._refresh_at = now + REFRESH
            pipe.set(f"{prefix(self.job_id)}g", self.gen, px=ttl)
        else:
            ttl = alive_ttl_ms
            touched = [self.keys("s")] if added else []
            touched += [self.keys(f"{kind}{key}") for key in batch.texts for kind in "tl"]
            touched += [self.keys("c")] if batch.controls else []
            touched.append(self.keys("h"))  # made at the first flush, or with a new key's id
            names = [name for name in touched if name not in self._expiring]
        for name in names:
            pipe.pexpire(name, ttl)
        self._expiring.update(names)

    def _restart(self, pipe: Any) -> None:
        """A new generation from the topic as it is: its text and controls so far, and each
        key's layout (without one, as if the key's last frame were the one before the head:
        enough for a stream re-attached from its start)."""
        topic = self.topic
        if self.started:  # readers of the old generation stop there
            pipe.xadd(self.keys("s"), {MOVED: b"1"}, id="*")
            pipe.pexpire(self.keys("s"), int(self._retention * 1000))
        self.gen, self.broken, self.started = os.urandom(4).hex(), False, True
        self._expiring, self._refresh_at = set(), 0.0
        head = topic.seq
        self._sent, self._known = head, set()
        self._lengths = {key: topic.length(key) for key in topic.keys()}  # noqa: SIM118
        meta = {"base": str(head), "kind": self.kind}
        meta.update({f"i{key}": self._key_id(key) for key in self._lengths})
        self._known.update(self._lengths)
        pipe.hset(self.keys("h"), mapping=meta)
        for key, length in self._lengths.items():
            pipe.set(self.keys(f"t{key}"), topic.text(key))
            pairs = array("q", (head - 1, length))
            if self._layout is not None:
                seqs, ends = self._layout(key)
                pairs = array("q", [v for pair in zip(seqs, ends, strict=True) for v in pair])
            pipe.set(self.keys(f"l{key}"), pairs.tobytes())
        controls = [encode_control(seq, lengths, frame) for seq, frame, lengths in topic.controls()]
        if controls:
            pipe.rpush(self.keys("c"), *controls)
