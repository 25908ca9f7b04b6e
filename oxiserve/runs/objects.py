"""Assistants API objects (run, run step, message) and the SSE frames that carry them.

The shapes are OpenAI's (shared/reference/ASSISTANTS-FACTS.md): every field the schema lists is
present, nullable ones as null.  A stream event's ``data`` is the bare object, never a wrapper.
"""

from __future__ import annotations

from typing import Any

import orjson

from oxiserve.engine.base import ToolCall, Usage
from oxiserve.http import sse
from oxiserve.ids import new_id as new_id
from oxiserve.ids import now as now


def usage_object(usage: Usage) -> dict[str, int]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
    }


def text_content(value: str) -> list[dict[str, Any]]:
    return [{"type": "text", "text": {"value": value, "annotations": []}}]


def message_text(message: dict[str, Any]) -> str:
    """A message's text parts joined (what the engine reads)."""
    parts = message.get("content") or []
    return "".join(p["text"]["value"] for p in parts if p.get("type") == "text")


def message_object(
    thread_id: str,
    role: str,
    content: list[dict[str, Any]],
    *,
    assistant_id: str | None = None,
    run_id: str | None = None,
    status: str = "completed",
    attachments: list[Any] | None = None,
    metadata: dict[str, str] | None = None,
) -> dict[str, Any]:
    created = now()
    return {
        "id": new_id("msg"),
        "object": "thread.message",
        "created_at": created,
        "thread_id": thread_id,
        "status": status,
        "incomplete_details": None,
        "completed_at": created if status == "completed" else None,
        "incomplete_at": None,
        "role": role,
        "content": content,
        "assistant_id": assistant_id,
        "run_id": run_id,
        "attachments": attachments or [],
        "metadata": metadata or {},
    }


def step_object(run: dict[str, Any], step_type: str, details: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": new_id("step"),
        "object": "thread.run.step",
        "created_at": now(),
        "assistant_id": run["assistant_id"],
        "thread_id": run["thread_id"],
        "run_id": run["id"],
        "type": step_type,
        "status": "in_progress",
        "step_details": details,
        "last_error": None,
        "expired_at": None,
        "cancelled_at": None,
        "failed_at": None,
        "completed_at": None,
        "metadata": {},
        "usage": None,
    }


def message_step_details(message_id: str) -> dict[str, Any]:
    return {"type": "message_creation", "message_creation": {"message_id": message_id}}


def tool_step_details(calls: list[dict[str, Any]]) -> dict[str, Any]:
    return {"type": "tool_calls", "tool_calls": calls}


def tool_call_object(call: ToolCall, output: str | None = None) -> dict[str, Any]:
    return {
        "id": call.id,
        "type": "function",
        "function": {"name": call.name, "arguments": call.arguments, "output": output},
    }


def event(name: str, obj: dict[str, Any]) -> bytes:
    """One SSE event: ``event: <name>`` and the object as ``data``."""
    return sse.event_frame(name, orjson.dumps(obj))


def message_delta(message_id: str, text: str) -> bytes:
    return event(
        "thread.message.delta",
        {
            "id": message_id,
            "object": "thread.message.delta",
            "delta": {"content": [{"index": 0, "type": "text", "text": {"value": text}}]},
        },
    )


_PLACEHOLDER = "\x00oxiserve\x00"


def delta_template(message_id: str) -> tuple[bytes, bytes]:
    """(prefix, suffix): ``prefix + orjson.dumps(text) + suffix`` is a message delta frame."""
    frame = message_delta(message_id, _PLACEHOLDER)
    prefix, _, suffix = frame.partition(orjson.dumps(_PLACEHOLDER))
    return prefix, suffix


def step_delta(step_id: str, call: dict[str, Any]) -> bytes:
    return event(
        "thread.run.step.delta",
        {
            "id": step_id,
            "object": "thread.run.step.delta",
            "delta": {"step_details": {"type": "tool_calls", "tool_calls": [call]}},
        },
    )


def error_event(code: str, message: str) -> bytes:
    return event("error", {"code": code, "message": message, "param": None, "type": "server_error"})
