"""Responses API objects (response, output items) and its stream events with sequence numbers.

Every event is ``event: <type>`` and a JSON object carrying ``type`` and ``sequence_number``
(its position in the stream, from 0).  Text deltas are made from a template split around the
text and the number, so a token costs two concatenations and no dict.
"""

from __future__ import annotations

from typing import Any

import orjson

from oxiserve import ids
from oxiserve.engine.base import ToolCall, Usage
from oxiserve.http import sse
from oxiserve.ids import now as now

_TEXT = "\x00oxiserve-text\x00"
_SEQ = 987_654_321_987  # a number no stream reaches, marks where the sequence number goes


def new_id(prefix: str) -> str:
    return ids.new_id(prefix, 16)


def usage_object(usage: Usage) -> dict[str, Any]:
    return {
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
    }


def message_item(item_id: str, text: str | None, status: str) -> dict[str, Any]:
    """An output message; ``text`` None: no content part yet."""
    content = [] if text is None else [output_text(text)]
    return {"id": item_id, "type": "message", "status": status, "role": "assistant",
            "content": content}  # fmt: skip


def output_text(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def function_call_item(item_id: str, call: ToolCall, arguments: str, status: str) -> dict[str, Any]:
    return {"id": item_id, "type": "function_call", "status": status, "call_id": call.id,
            "name": call.name, "arguments": arguments}  # fmt: skip


def event(kind: str, seq: int, **fields: Any) -> bytes:
    return sse.event_frame(kind, orjson.dumps({"type": kind, "sequence_number": seq, **fields}))


class DeltaTemplate:
    """``response.output_text.delta`` frames of one output item, from a pre-split template."""

    __slots__ = ("_middle", "_prefix", "_suffix")

    def __init__(self, item_id: str, output_index: int) -> None:
        frame = event(
            "response.output_text.delta", _SEQ, item_id=item_id, output_index=output_index,
            content_index=0, delta=_TEXT, logprobs=[],
        )  # fmt: skip
        head, _, rest = frame.partition(b"%d" % _SEQ)
        middle, _, tail = rest.partition(orjson.dumps(_TEXT))
        self._prefix, self._middle, self._suffix = head, middle, tail

    def frame(self, seq: int, text: str) -> bytes:
        return self._prefix + b"%d" % seq + self._middle + orjson.dumps(text) + self._suffix


def response_object(
    response_id: str, model: str, settings: dict[str, Any], *, background: bool
) -> dict[str, Any]:
    """A new response (``queued`` in the background, else ``in_progress``); ``settings``
    holds the create parameters it echoes (instructions, tools, text, ...)."""
    return {
        "id": response_id, "object": "response", "created_at": now(),
        "status": "queued" if background else "in_progress", "background": background,
        "completed_at": None, "error": None, "incomplete_details": None,
        "instructions": settings.get("instructions"),
        "max_output_tokens": settings.get("max_output_tokens"), "max_tool_calls": None,
        "metadata": settings.get("metadata") or {}, "model": model, "output": [],
        "parallel_tool_calls": settings.get("parallel_tool_calls", True),
        "previous_response_id": settings.get("previous_response_id"),
        "conversation": settings.get("conversation"),
        "reasoning": {"effort": None, "summary": None}, "service_tier": "default",
        "store": settings.get("store", True), "temperature": settings.get("temperature"),
        "text": settings.get("text") or {"format": {"type": "text"}},
        "tool_choice": settings.get("tool_choice", "auto"), "tools": settings.get("tools") or [],
        "top_logprobs": 0, "top_p": settings.get("top_p"),
        "truncation": settings.get("truncation") or "disabled", "usage": None,
        "user": settings.get("user"),
    }  # fmt: skip


def public(response: dict[str, Any]) -> dict[str, Any]:
    """The response as clients see it (without the stream layout kept for replays)."""
    return {k: v for k, v in response.items() if not k.startswith("_")}


def output_text_of(response: dict[str, Any]) -> str:
    return "".join(
        part["text"]
        for item in response.get("output") or []
        if item.get("type") == "message"
        for part in item.get("content") or []
        if part.get("type") == "output_text"
    )
