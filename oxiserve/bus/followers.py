"""What a replica needs to rebuild another one's topic: its encoders and, for a response, the
deltas' layout (lag recovery and ``starting_after`` numbers need it).

A follower is made from a :class:`~oxiserve.bus.entries.Snapshot` and is then told of every
new text key's id and every text frame as the stream goes on.
"""

from __future__ import annotations

from typing import Protocol

from oxiserve.broadcast import Topic
from oxiserve.bus.entries import Snapshot
from oxiserve.http import sse
from oxiserve.responses import objects as response_objects
from oxiserve.responses.writer import ListChannel, ResponseWriter
from oxiserve.runs import objects as run_objects

__all__ = ["Follower", "ResponseFollower", "RunFollower", "follower"]


class Follower(Protocol):
    topic: Topic

    def key_id(self, key: int, item_id: str) -> None: ...

    def text(self, seq: int, key: int, end: int) -> None: ...

    def delivered_at(self, cursor: int) -> dict[int, int]: ...

    def abort_frame(self, message: str) -> bytes: ...


class RunFollower:
    """A run's leg: its deltas name their message (by text key)."""

    def __init__(self, snap: Snapshot, capacity: int) -> None:
        ids = self._ids = dict(snap.ids)

        def encode(key: int, text: str) -> bytes:
            return run_objects.message_delta(ids[key], text)

        self.topic = Topic.resumed(capacity, snap.base, snap.texts, snap.controls, encode)

    def key_id(self, key: int, item_id: str) -> None:
        self._ids[key] = item_id

    def text(self, seq: int, key: int, end: int) -> None:
        pass

    def delivered_at(self, cursor: int) -> dict[int, int]:
        return {}  # a run's stream is re-attached from its start

    def abort_frame(self, message: str) -> bytes:
        return run_objects.error_event("server_error", message) + sse.EVENT_DONE


class ResponseFollower:
    """A background response: catch-up deltas are numbered as the producer numbers them."""

    def __init__(self, snap: Snapshot, capacity: int) -> None:
        self._writer = writer = ResponseWriter(ListChannel())
        for key, item_id in snap.ids.items():
            writer.follow(key, item_id)
            for seq, end in snap.layout.get(key, []):
                if seq < snap.base:
                    writer.noted(key, seq, end)
        self.topic = Topic.resumed(capacity, snap.base, snap.texts, snap.controls, None,
                                   writer.catch_up)  # fmt: skip

    def key_id(self, key: int, item_id: str) -> None:
        self._writer.follow(key, item_id)

    def text(self, seq: int, key: int, end: int) -> None:
        self._writer.noted(key, seq, end)

    def delivered_at(self, cursor: int) -> dict[int, int]:
        return self._writer.delivered_at(cursor)

    def abort_frame(self, message: str) -> bytes:
        return response_objects.event("error", self.topic.seq, code="server_error",
                                      message=message, param=None)  # fmt: skip


def follower(snap: Snapshot, capacity: int) -> Follower:
    if snap.kind == "response":
        return ResponseFollower(snap, capacity)
    return RunFollower(snap, capacity)
