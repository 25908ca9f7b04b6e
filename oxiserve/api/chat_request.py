"""Chat request bodies: messages (string or content parts), tools and tool_choice, prompt text."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from oxiserve.api import params
from oxiserve.engine.base import ChatMessage, ToolSpec
from oxiserve.errors import InvalidRequest

ROLES = ("system", "developer", "user", "assistant", "tool")
_FUNCTION_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_PART_PLACEHOLDERS = {"image_url": "[image]", "input_audio": "[audio]", "file": "[file]"}


@dataclass(frozen=True, slots=True)
class ChatRequest:
    model: str
    messages: tuple[ChatMessage, ...]
    prompt: str
    tools: tuple[ToolSpec, ...]
    tool_choice: str | None  # None, "none", "auto" or "required"
    forced_tool: str | None  # the function tool_choice names, if it names one


def parse(body: Any) -> ChatRequest:
    body = params.require_object(body)
    model = params.get_str(body, "model")
    raw_messages = params.get_list(body, "messages")
    if raw_messages is None:
        raise params.missing("messages")
    if not raw_messages:
        raise InvalidRequest("'messages' must contain at least one message.", param="messages")
    messages = tuple(_message(m, i) for i, m in enumerate(raw_messages))
    tools = _tools(body)
    tool_choice, forced_tool = _tool_choice(body, tools)
    _response_format(body)
    return ChatRequest(model, messages, render_prompt(messages), tools, tool_choice, forced_tool)


def render_prompt(messages: tuple[ChatMessage, ...]) -> str:
    """ChatML rendering, ending with the assistant's turn."""
    turns = [f"<|im_start|>{m.role}\n{m.content}<|im_end|>\n" for m in messages]
    return "".join(turns) + "<|im_start|>assistant\n"


def _message(raw: Any, index: int) -> ChatMessage:
    where = f"messages[{index}]"
    if not isinstance(raw, dict):
        raise InvalidRequest(f"Invalid '{where}': expected an object.", param=where)
    role = params.get_str(raw, "role", param=f"{where}.role")
    if role not in ROLES:
        raise InvalidRequest(
            f"Invalid value for '{where}.role': '{role}'. Supported values are: "
            + ", ".join(f"'{r}'" for r in ROLES) + ".",
            param=f"{where}.role", code="invalid_value",
        )  # fmt: skip
    content = raw.get("content")
    if content is None:
        if not (role == "assistant" and (raw.get("tool_calls") or raw.get("function_call"))):
            raise params.missing(f"{where}.content")
        text = ""
    else:
        text = _content(content, f"{where}.content")
    if role == "tool":
        params.get_str(raw, "tool_call_id", param=f"{where}.tool_call_id")
    params.get_str(raw, "name", None, param=f"{where}.name")
    tool_calls = raw.get("tool_calls")
    if tool_calls is not None and not isinstance(tool_calls, list):
        raise InvalidRequest(f"Invalid '{where}.tool_calls': expected an array.", param=where)
    return ChatMessage(role, text)


def _content(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise InvalidRequest(
            f"Invalid '{where}': expected a string or an array of content parts.", param=where
        )
    texts = []
    for i, part in enumerate(content):
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise InvalidRequest(f"Invalid '{where}[{i}]': expected a content part.", param=where)
        kind = part["type"]
        if kind in ("text", "refusal"):
            texts.append(params.get_str(part, kind, param=f"{where}[{i}].{kind}"))
        elif kind in _PART_PLACEHOLDERS:
            texts.append(_PART_PLACEHOLDERS[kind])
        else:
            raise InvalidRequest(
                f"Invalid '{where}[{i}].type': unsupported content part type '{kind}'.",
                param=f"{where}[{i}].type", code="invalid_value",
            )  # fmt: skip
    return "\n".join(texts)


def _tools(body: dict[str, Any]) -> tuple[ToolSpec, ...]:
    raw = params.get_list(body, "tools")
    if not raw:
        return ()
    tools = []
    for i, tool in enumerate(raw):
        where = f"tools[{i}]"
        if not isinstance(tool, dict) or tool.get("type", "function") != "function":
            raise InvalidRequest(f"Invalid '{where}': expected a function tool.", param=where)
        function = params.get_object(tool, "function", f"{where}.function")
        if function is None:
            raise params.missing(f"{where}.function")
        name = params.get_str(function, "name", param=f"{where}.function.name")
        if not _FUNCTION_NAME.fullmatch(name):
            raise InvalidRequest(
                f"Invalid '{where}.function.name': use a-z, A-Z, 0-9, _ and - (at most 64).",
                param=f"{where}.function.name", code="invalid_value",
            )  # fmt: skip
        parameters = params.get_object(function, "parameters", f"{where}.function.parameters")
        description = params.get_str(
            function, "description", "", param=f"{where}.function.description"
        )
        tools.append(ToolSpec(name, description, parameters or {}))
    return tuple(tools)


def _tool_choice(
    body: dict[str, Any], tools: tuple[ToolSpec, ...]
) -> tuple[str | None, str | None]:
    """(mode, forced function name) from ``tool_choice``."""
    choice = body.get("tool_choice")
    if choice is None:
        return ("auto" if tools else None), None
    if not tools and choice != "none":
        raise InvalidRequest(
            "'tool_choice' is only allowed when 'tools' are specified.", param="tool_choice"
        )
    if isinstance(choice, str):
        if choice not in ("none", "auto", "required"):
            raise InvalidRequest(
                f"Invalid 'tool_choice': '{choice}'; use 'none', 'auto', 'required' or "
                "a function.", param="tool_choice", code="invalid_value",
            )  # fmt: skip
        return choice, None
    if isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        name = choice["function"].get("name")
        if any(tool.name == name for tool in tools):
            return "required", str(name)
        raise InvalidRequest(
            f"Invalid 'tool_choice': no tool named {name!r} in 'tools'.", param="tool_choice"
        )
    raise InvalidRequest("Invalid 'tool_choice'.", param="tool_choice")


def _response_format(body: dict[str, Any]) -> None:
    fmt = params.get_object(body, "response_format")
    if fmt is None:
        return
    kind = fmt.get("type")
    if kind not in ("text", "json_object", "json_schema"):
        raise InvalidRequest(
            "Invalid 'response_format.type': use 'text', 'json_object' or 'json_schema'.",
            param="response_format.type", code="invalid_value",
        )  # fmt: skip
    if kind == "json_schema" and not isinstance(fmt.get("json_schema"), dict):
        raise params.missing("response_format.json_schema")
