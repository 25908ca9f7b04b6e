"""Reading a Responses create body: input items, tools, tool choice, text format, settings.

Every check happens before anything is stored or generated, with OpenAI's parameter names in
the errors.  Input items come back with ids (the server gives one to an item that has none),
as ``input_items`` lists them.
"""

from __future__ import annotations

from typing import Any

from oxiserve.api import chat_request, params
from oxiserve.engine.base import ChatMessage, ResponseFormat, ToolSpec
from oxiserve.errors import InvalidRequest, echo
from oxiserve.responses import objects

MAX_ITEMS = 2048
MAX_TOOLS = 128
MAX_TEXT = 10 * 1024 * 1024  # characters of input text in all (the body limit bounds it too)
_ROLES = ("user", "assistant", "system", "developer")
_TEXT_PARTS = ("input_text", "output_text", "text")
_OTHER_PARTS = {"input_image": "[image]", "input_file": "[file]", "input_audio": "[audio]"}


def read_input(value: Any, param: str = "input") -> list[dict[str, Any]]:
    """``input``: a string (one user message) or a list of items."""
    if isinstance(value, str):
        return [_message_item("user", [{"type": "input_text", "text": value}])]
    if not isinstance(value, list):
        raise InvalidRequest(
            f"Invalid '{param}': expected a string or an array of items.", param=param,
            code="invalid_type",
        )  # fmt: skip
    if len(value) > MAX_ITEMS:
        raise InvalidRequest(f"Invalid '{param}': at most {MAX_ITEMS} items.", param=param)
    return [read_item(item, f"{param}[{i}]") for i, item in enumerate(value)]


def read_item(item: Any, where: str) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise InvalidRequest(f"Invalid '{where}': expected an object.", param=where,
                             code="invalid_type")  # fmt: skip
    kind = item.get("type", "message")
    if kind == "message":
        role = params.get_str(item, "role", param=f"{where}.role")
        if role not in _ROLES:
            raise InvalidRequest(
                f"Invalid '{where}.role': '{echo(role, 32)}'; use one of {', '.join(_ROLES)}.",
                param=f"{where}.role", code="invalid_value",
            )  # fmt: skip
        return _message_item(role, _content(item.get("content"), f"{where}.content", role),
                             item.get("id"))  # fmt: skip
    if kind == "function_call":
        call = {
            "type": "function_call",
            "call_id": params.get_str(item, "call_id", param=f"{where}.call_id"),
            "name": params.get_str(item, "name", param=f"{where}.name"),
            "arguments": params.get_str(item, "arguments", param=f"{where}.arguments"),
            "status": "completed",
        }
        return {"id": _id(item, "fc"), **call}
    if kind == "function_call_output":
        output = item.get("output")
        if not isinstance(output, str):
            output = _parts_text(output, f"{where}.output")
        return {"id": _id(item, "fco"), "type": "function_call_output",
                "call_id": params.get_str(item, "call_id", param=f"{where}.call_id"),
                "output": output, "status": "completed"}  # fmt: skip
    raise InvalidRequest(
        f"Invalid '{where}.type': '{echo(str(kind), 32)}' is not supported here; use 'message', "
        "'function_call' or 'function_call_output'.", param=f"{where}.type", code="invalid_value",
    )  # fmt: skip


def _id(item: dict[str, Any], prefix: str) -> str:
    given = item.get("id")
    return given if isinstance(given, str) and 0 < len(given) <= 128 else objects.new_id(prefix)


def _message_item(role: str, content: list[dict[str, Any]], given: Any = None) -> dict[str, Any]:
    item_id = given if isinstance(given, str) and 0 < len(given) <= 128 else objects.new_id("msg")
    return {"id": item_id, "type": "message", "role": role, "status": "completed",
            "content": content}  # fmt: skip


def _content(value: Any, where: str, role: str) -> list[dict[str, Any]]:
    kind = "output_text" if role == "assistant" else "input_text"
    if isinstance(value, str):
        return [{"type": kind, "text": value}]
    if not isinstance(value, list):
        raise InvalidRequest(f"Invalid '{where}': expected a string or an array of parts.",
                             param=where, code="invalid_type")  # fmt: skip
    parts = []
    for i, part in enumerate(value):
        at = f"{where}[{i}]"
        part_type = part.get("type") if isinstance(part, dict) else None
        if part_type in _TEXT_PARTS:
            text = params.get_str(part, "text", param=f"{at}.text")
            parts.append({"type": kind if part_type == "text" else part_type, "text": text})
        elif part_type in _OTHER_PARTS:
            parts.append(dict(part))
        else:
            raise InvalidRequest(f"Invalid '{at}.type'.", param=f"{at}.type",
                                 code="invalid_value")  # fmt: skip
    return parts


def _parts_text(value: Any, where: str) -> str:
    if not isinstance(value, list):
        raise InvalidRequest(f"Invalid '{where}': expected a string or an array of parts.",
                             param=where, code="invalid_type")  # fmt: skip
    return "".join(p.get("text", "") for p in value if isinstance(p, dict))


def item_text(item: dict[str, Any]) -> str:
    parts = item.get("content") or []
    return "".join(
        p.get("text", "") if p.get("type") in _TEXT_PARTS else _OTHER_PARTS.get(p.get("type"), "")
        for p in parts
    )


def chat_messages(instructions: str | None, items: list[dict[str, Any]]) -> list[ChatMessage]:
    """The engine's conversation: instructions as the system turn, then every item."""
    messages = [ChatMessage("system", instructions)] if instructions else []
    for item in items:
        kind = item.get("type", "message")
        if kind == "message":
            messages.append(ChatMessage(item["role"], item_text(item)))
        elif kind == "function_call":
            messages.append(ChatMessage("assistant", f"{item['name']}({item['arguments']})"))
        elif kind == "function_call_output":
            messages.append(ChatMessage("tool", str(item.get("output", ""))))
    if sum(len(m.content) for m in messages) > MAX_TEXT:
        raise InvalidRequest(f"The input is longer than {MAX_TEXT} characters.", param="input")
    return messages


def read_tools(body: dict[str, Any]) -> tuple[list[dict[str, Any]], tuple[ToolSpec, ...]]:
    """Function tools (the flat Responses shape) as echoed and as the engine takes them."""
    raw = params.get_list(body, "tools") or []
    if len(raw) > MAX_TOOLS:
        raise InvalidRequest(f"Invalid 'tools': at most {MAX_TOOLS} tools.", param="tools")
    echoed, specs = [], []
    for i, tool in enumerate(raw):
        where = f"tools[{i}]"
        if not isinstance(tool, dict) or tool.get("type") != "function":
            raise InvalidRequest(
                f"Invalid '{where}.type': only function tools are served here.",
                param=f"{where}.type", code="invalid_value",
            )  # fmt: skip
        spec = chat_request.function_spec(tool, where)
        specs.append(spec)
        echoed.append({"type": "function", "name": spec.name,
                       "description": spec.description or None,
                       "parameters": dict(spec.parameters),
                       "strict": bool(tool.get("strict", True))})  # fmt: skip
    return echoed, tuple(specs)


def read_tool_choice(
    body: dict[str, Any], specs: tuple[ToolSpec, ...]
) -> tuple[Any, str | None, str | None]:
    """(echoed tool_choice, engine mode, forced function)."""
    choice = body.get("tool_choice", "auto")
    if choice in ("none", "auto", "required"):
        return choice, (choice if specs else None), None
    if isinstance(choice, dict) and choice.get("type") == "function":
        name = choice.get("name")
        if not any(spec.name == name for spec in specs):
            raise InvalidRequest(
                f"Invalid 'tool_choice': no function named '{echo(str(name), 64)}' in 'tools'.",
                param="tool_choice",
            )
        return {"type": "function", "name": name}, "required", str(name)
    raise InvalidRequest("Invalid 'tool_choice': use 'none', 'auto', 'required' or a function.",
                         param="tool_choice", code="invalid_value")  # fmt: skip


def read_text_format(body: dict[str, Any]) -> tuple[dict[str, Any], ResponseFormat | None]:
    """``text.format`` as echoed and as the engine takes it."""
    text = params.get_object(body, "text")
    fmt = (text or {}).get("format")
    if fmt is None:
        return {"format": {"type": "text"}}, None
    if not isinstance(fmt, dict):
        raise InvalidRequest("Invalid 'text.format': expected an object.", param="text.format",
                             code="invalid_type")  # fmt: skip
    kind = fmt.get("type")
    if kind == "text":
        return {"format": {"type": "text"}}, None
    if kind == "json_object":
        return {"format": {"type": "json_object"}}, ResponseFormat("json_object")
    if kind == "json_schema":
        nested = {"type": "json_schema", "json_schema": {
            k: fmt[k] for k in ("name", "schema", "strict", "description") if k in fmt
        }}  # fmt: skip
        try:
            parsed = chat_request.read_response_format({"response_format": nested}, ())
        except InvalidRequest as exc:  # in this API's words
            exc.message = exc.message.replace("response_format.json_schema", "text.format")
            exc.args = (exc.message,)
            exc.param = (exc.param or "").replace("response_format.json_schema", "text.format")
            raise
        echoed = {"type": "json_schema", "name": fmt.get("name"), "schema": fmt.get("schema"),
                  "strict": bool(fmt.get("strict")),
                  "description": fmt.get("description")}  # fmt: skip
        return {"format": echoed}, parsed
    raise InvalidRequest(
        "Invalid 'text.format.type': use 'text', 'json_object' or 'json_schema'.",
        param="text.format.type", code="invalid_value",
    )  # fmt: skip
