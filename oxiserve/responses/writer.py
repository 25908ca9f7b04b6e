"""The event sequence of one response, written to a live topic or rebuilt for a replay.

Both paths call the same methods in the same order, so a replay from the store is the live
stream frame for frame (same sequence numbers, same deltas): a client resuming with
``starting_after=N`` after the job left memory gets exactly the rest.

    writer = ResponseWriter(TopicChannel(topic))
    writer.begin(response)                 # response.created (+ queued) + in_progress
    writer.open_message(0, "msg_1")        # output_item.added, content_part.added
    writer.text(0, "Hel")                  # output_text.delta (sequence number = frame's)
    writer.close_message(0, "Hello")       # output_text.done, content_part.done, item.done
    writer.finish("response.completed", final)
"""

from __future__ import annotations

from array import array
from bisect import bisect_left
from typing import Any, Protocol

from oxiserve.broadcast import Topic
from oxiserve.engine.base import ToolCall
from oxiserve.responses import objects

ARGUMENT_PIECE = 16  # characters of a function call's arguments per delta


class Channel(Protocol):
    """Where frames go: ``seq`` is the number the next frame gets."""

    @property
    def seq(self) -> int: ...

    def control(self, frame: bytes) -> None: ...

    def text(self, key: int, text: str, frame: bytes) -> None: ...


class TopicChannel:
    """A live response: frames are published into its topic."""

    def __init__(self, topic: Topic) -> None:
        self.topic = topic

    @property
    def seq(self) -> int:
        return self.topic.seq

    def control(self, frame: bytes) -> None:
        self.topic.publish(frame)

    def text(self, key: int, text: str, frame: bytes) -> None:
        self.topic.publish_text(text, key, frame)


class ListChannel:
    """A replay: frames are collected."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []

    @property
    def seq(self) -> int:
        return len(self.frames)

    def control(self, frame: bytes) -> None:
        self.frames.append(frame)

    def text(self, key: int, text: str, frame: bytes) -> None:
        self.frames.append(frame)


class ResponseWriter:
    """Writes a response's events (see the module docstring) and keeps, per output item,
    where each text delta ends and its sequence number: lag recovery and resumed readers
    need both (``catch_up``, ``delivered_at``)."""

    def __init__(self, channel: Channel) -> None:
        self._channel = channel
        self._templates: dict[int, objects.DeltaTemplate] = {}
        # Per output index: the text length after each delta, and each delta's sequence
        # number (arrays: 8 bytes a token, kept as long as the job stays in memory).
        self.ends: dict[int, array[int]] = {}
        self.seqs: dict[int, array[int]] = {}
        self._items: dict[int, str] = {}

    def _control(self, kind: str, **fields: Any) -> None:
        self._channel.control(objects.event(kind, self._channel.seq, **fields))

    def begin(self, response: dict[str, Any]) -> None:
        snapshot = objects.public(response)
        self._control("response.created", response=snapshot)
        if snapshot["status"] == "queued":
            self._control("response.queued", response=snapshot)
        self._control("response.in_progress", response=dict(snapshot, status="in_progress"))

    def open_message(self, index: int, item_id: str) -> None:
        self._items[index] = item_id
        self._templates[index] = objects.DeltaTemplate(item_id, index)
        self.ends[index], self.seqs[index] = array("q"), array("q")
        item = objects.message_item(item_id, None, "in_progress")
        self._control("response.output_item.added", output_index=index, item=item)
        self._control("response.content_part.added", item_id=item_id, output_index=index,
                      content_index=0, part=objects.output_text(""))  # fmt: skip

    def text(self, index: int, piece: str) -> None:
        ends = self.ends[index]
        seq = self._channel.seq
        self._channel.text(index, piece, self._templates[index].frame(seq, piece))
        ends.append((ends[-1] if ends else 0) + len(piece))
        self.seqs[index].append(seq)

    def close_message(self, index: int, text: str, status: str = "completed") -> dict[str, Any]:
        item_id = self._items[index]
        where = {"item_id": item_id, "output_index": index, "content_index": 0}
        self._control("response.output_text.done", **where, text=text, logprobs=[])
        self._control("response.content_part.done", **where, part=objects.output_text(text))
        item = objects.message_item(item_id, text, status)
        self._control("response.output_item.done", output_index=index, item=item)
        return item

    def function_call(self, index: int, item_id: str, call: ToolCall) -> dict[str, Any]:
        added = objects.function_call_item(item_id, call, "", "in_progress")
        self._control("response.output_item.added", output_index=index, item=added)
        args = call.arguments
        for at in range(0, len(args), ARGUMENT_PIECE):
            self._control("response.function_call_arguments.delta", item_id=item_id,
                          output_index=index, delta=args[at : at + ARGUMENT_PIECE])  # fmt: skip
        self._control("response.function_call_arguments.done", item_id=item_id,
                      output_index=index, name=call.name, arguments=args)  # fmt: skip
        item = objects.function_call_item(item_id, call, args, "completed")
        self._control("response.output_item.done", output_index=index, item=item)
        return item

    def item_id(self, index: int) -> str:
        return self._items[index]

    def finish(self, kind: str, response: dict[str, Any]) -> None:
        self._control(kind, response=objects.public(response))

    # --- for readers that lag or resume ------------------------------------------------------

    def follow(self, index: int, item_id: str) -> None:
        """Track item ``index`` of a response written elsewhere (another replica's): its
        deltas are then noted one by one (``noted``), so ``catch_up`` and ``delivered_at``
        answer as the writer's own."""
        if index not in self._items:
            self._items[index] = item_id
            self._templates[index] = objects.DeltaTemplate(item_id, index)
            self.ends[index], self.seqs[index] = array("q"), array("q")

    def noted(self, index: int, seq: int, end: int) -> None:
        self.ends[index].append(end)
        self.seqs[index].append(seq)

    def catch_up(self, key: int, text: str, start: int) -> bytes:
        """One delta with ``text`` (what a reader missed of item ``key`` from ``start``), with
        the sequence number of the last delta it stands for: numbers only ever increase."""
        index = bisect_left(self.ends[key], start + len(text))
        return self._templates[key].frame(self.seqs[key][index], text)

    def delivered_at(self, cursor: int) -> dict[int, int]:
        """How much text per item a reader that had every frame before ``cursor`` holds."""
        delivered = {}
        for key, seqs in self.seqs.items():
            count = bisect_left(seqs, cursor)
            if count:
                delivered[key] = self.ends[key][count - 1]
        return delivered

    def layout(self) -> dict[str, list[int]]:
        """The text deltas' ends per item, stored so a replay repeats the same deltas."""
        return {str(key): ends.tolist() for key, ends in self.ends.items()}


def replay(response: dict[str, Any]) -> list[bytes]:
    """A stored response's stream as it went live (``_layout``: its deltas' ends per item)."""
    layout: dict[str, list[int]] = response.get("_layout") or {}
    writer = ResponseWriter(channel := ListChannel())
    initial = dict(response, status="queued" if response["background"] else "in_progress",
                   output=[], usage=None, completed_at=None, error=None,
                   incomplete_details=None)  # fmt: skip
    writer.begin(initial)
    for index, item in enumerate(response["output"]):
        if item["type"] == "function_call":
            call = ToolCall(item["call_id"], item["name"], item["arguments"])
            writer.function_call(index, item["id"], call)
            continue
        text = "".join(p["text"] for p in item["content"] if p["type"] == "output_text")
        writer.open_message(index, item["id"])
        start = 0
        for end in layout.get(str(index), [len(text)] if text else []):
            writer.text(index, text[start:end])
            start = end
        writer.close_message(index, text, item["status"])
    kind = TERMINAL_EVENTS.get(response["status"])
    if kind is not None:  # a cancelled response's stream just ends, as it did live
        writer.finish(kind, response)
    return channel.frames


TERMINAL_EVENTS = {
    "completed": "response.completed",
    "incomplete": "response.incomplete",
    "failed": "response.failed",
}
