"""Chat request bodies: messages (string or content parts), tools and tool_choice, the legacy
functions and function_call, response_format, prompt text.

Every list a body may hold is bounded as OpenAI bounds it, so the work a request makes
(parsing, the prompt, its digest) stays proportional to a limit, not to what a client sends.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from oxiserve.api import params
from oxiserve.engine.base import ChatMessage, ResponseFormat, ToolSpec, chatml
from oxiserve.errors import InvalidRequest, echo

ROLES = ("system", "developer", "user", "assistant", "tool", "function")
MAX_MESSAGES = 2048
MAX_TOOLS = 128
_FUNCTION_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_PART_PLACEHOLDERS = {"image_url": "[image]", "input_audio": "[audio]", "file": "[file]"}
# Where clients' JSON modes write the schema they want: the instructions, and for
# json_object (the client asked for JSON, but not which) the user's turns too.
_INSTRUCTION_ROLES = ("system", "developer")
_JSON_OBJECT_ROLES = ("system", "developer", "user")
_SCHEMA_MARKERS = ("$defs", "$ref", "anyOf", "oneOf", "allOf")
_DECODER = json.JSONDecoder()  # keeps no state between calls


@dataclass(frozen=True, slots=True)
class ChatRequest:
    model: str
    messages: tuple[ChatMessage, ...]
    prompt: str
    tools: tuple[ToolSpec, ...]  # from tools, or from the legacy functions
    tool_choice: str | None  # None, "none", "auto" or "required"
    forced_tool: str | None  # the function tool_choice names, if it names one
    response_format: ResponseFormat | None
    legacy_functions: bool  # answer a call as message.function_call, not tool_calls


def parse(body: Any) -> ChatRequest:
    body = params.require_object(body)
    model = params.get_str(body, "model")
    raw_messages = params.get_list(body, "messages")
    if raw_messages is None:
        raise params.missing("messages")
    if not raw_messages:
        raise InvalidRequest("'messages' must contain at least one message.", param="messages")
    _check_length("messages", raw_messages, MAX_MESSAGES)
    messages = tuple(_message(m, i) for i, m in enumerate(raw_messages))
    tools, functions = _tools(body), _functions(body)
    if tools and functions:
        raise InvalidRequest(
            "Use either 'tools' or the deprecated 'functions', not both.", param="functions"
        )
    tool_choice, forced_tool = _tool_choice(body, tools)
    function_call = _function_call(body, functions)  # checked even without functions
    if functions:
        tool_choice, forced_tool = function_call
    fmt = read_response_format(body, messages)
    prompt = chatml(messages)
    return ChatRequest(
        model, messages, prompt, functions or tools, tool_choice, forced_tool, fmt, bool(functions)
    )


def _check_length(param: str, values: list[Any], limit: int) -> None:
    if len(values) > limit:
        raise InvalidRequest(
            f"Invalid '{param}': array too long. Expected an array with maximum length {limit}, "
            f"but got an array with length {len(values)} instead.",
            param=param, code="array_above_max_length",
        )  # fmt: skip


_PLAIN_ROLES = frozenset(("system", "developer", "user", "assistant"))
_PLAIN_KEYS = frozenset(("role", "content"))


def _message(raw: Any, index: int) -> ChatMessage:
    # Nearly every message is {"role": ..., "content": "text"}: nothing more to check.
    if type(raw) is dict and raw.keys() <= _PLAIN_KEYS:
        role, content = raw.get("role"), raw.get("content")
        if type(content) is str and type(role) is str and role in _PLAIN_ROLES:
            return ChatMessage(role, content)
    where = f"messages[{index}]"
    if not isinstance(raw, dict):
        raise InvalidRequest(f"Invalid '{where}': expected an object.", param=where)
    role = params.get_str(raw, "role", param=f"{where}.role")
    if role not in ROLES:
        raise InvalidRequest(
            f"Invalid value for '{where}.role': '{echo(role)}'. Supported values are: "
            + ", ".join(f"'{r}'" for r in ROLES) + ".",
            param=f"{where}.role", code="invalid_value",
        )  # fmt: skip
    content = raw.get("content")
    calls = raw.get("tool_calls") or raw.get("function_call")
    if content is None:
        if not (role == "assistant" and calls) and role != "function":
            raise params.missing(f"{where}.content")
        text = ""
    else:
        text = _content(content, f"{where}.content")
    if role == "tool":
        params.get_str(raw, "tool_call_id", param=f"{where}.tool_call_id")
    if role == "function":  # a function's result says which function it came from
        params.get_str(raw, "name", param=f"{where}.name")
    else:
        params.get_str(raw, "name", None, param=f"{where}.name")
    tool_calls = raw.get("tool_calls")
    if tool_calls is not None and not isinstance(tool_calls, list):
        raise InvalidRequest(f"Invalid '{where}.tool_calls': expected an array.", param=where)
    function_call = params.get_object(raw, "function_call", f"{where}.function_call")
    if function_call is not None:
        params.get_str(function_call, "name", param=f"{where}.function_call.name")
        params.get_str(function_call, "arguments", param=f"{where}.function_call.arguments")
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
                f"Invalid '{where}[{i}].type': unsupported content part type '{echo(kind)}'.",
                param=f"{where}[{i}].type", code="invalid_value",
            )  # fmt: skip
    return "\n".join(texts)


def _tools(body: dict[str, Any]) -> tuple[ToolSpec, ...]:
    raw = params.get_list(body, "tools")
    if not raw:
        return ()
    _check_length("tools", raw, MAX_TOOLS)
    tools = []
    for i, tool in enumerate(raw):
        where = f"tools[{i}]"
        if not isinstance(tool, dict) or tool.get("type", "function") != "function":
            raise InvalidRequest(f"Invalid '{where}': expected a function tool.", param=where)
        function = params.get_object(tool, "function", f"{where}.function")
        if function is None:
            raise params.missing(f"{where}.function")
        tools.append(function_spec(function, f"{where}.function"))
    return tuple(tools)


def _functions(body: dict[str, Any]) -> tuple[ToolSpec, ...]:
    """The deprecated ``functions``: the ``function`` objects of tools, without the wrapper."""
    raw = params.get_list(body, "functions")
    if not raw:
        return ()
    _check_length("functions", raw, MAX_TOOLS)
    specs = []
    for i, function in enumerate(raw):
        if not isinstance(function, dict):
            raise InvalidRequest(
                f"Invalid 'functions[{i}]': expected an object.", param=f"functions[{i}]"
            )
        specs.append(function_spec(function, f"functions[{i}]"))
    return tuple(specs)


def function_spec(function: dict[str, Any], where: str) -> ToolSpec:
    name = params.get_str(function, "name", param=f"{where}.name")
    if not _FUNCTION_NAME.fullmatch(name):
        raise InvalidRequest(
            f"Invalid '{where}.name': use a-z, A-Z, 0-9, _ and - (at most 64).",
            param=f"{where}.name", code="invalid_value",
        )  # fmt: skip
    parameters = params.get_object(function, "parameters", f"{where}.parameters")
    description = params.get_str(function, "description", "", param=f"{where}.description")
    return ToolSpec(name, description, parameters or {})


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
                f"Invalid 'tool_choice': '{echo(choice)}'; use 'none', 'auto', 'required' or "
                "a function.", param="tool_choice", code="invalid_value",
            )  # fmt: skip
        return choice, None
    if isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        return "required", _named(choice["function"].get("name"), tools, "tool_choice", "tools")
    raise InvalidRequest("Invalid 'tool_choice'.", param="tool_choice")


def _function_call(
    body: dict[str, Any], functions: tuple[ToolSpec, ...]
) -> tuple[str | None, str | None]:
    """(mode, forced function name) from the deprecated ``function_call``: "none", "auto" or
    ``{"name": ...}`` (there is no "required": naming the function is how to force a call)."""
    choice = body.get("function_call")
    if choice is None:
        return ("auto" if functions else None), None
    if not functions and choice != "none":
        raise InvalidRequest(
            "'function_call' is only allowed when 'functions' are specified.",
            param="function_call",
        )
    if choice in ("none", "auto"):
        return choice, None
    if isinstance(choice, dict):
        return "required", _named(choice.get("name"), functions, "function_call", "functions")
    raise InvalidRequest(
        "Invalid 'function_call': use 'none', 'auto' or {\"name\": ...}.",
        param="function_call", code="invalid_value",
    )  # fmt: skip


def _named(name: Any, tools: tuple[ToolSpec, ...], param: str, where: str) -> str:
    if isinstance(name, str) and any(tool.name == name for tool in tools):
        return name
    shown = repr(echo(name)) if isinstance(name, str) else f"of type {type(name).__name__}"
    raise InvalidRequest(f"Invalid '{param}': no function named {shown} in '{where}'.", param=param)


# --- response_format ------------------------------------------------------------------------


def read_response_format(
    body: dict[str, Any], messages: tuple[ChatMessage, ...]
) -> ResponseFormat | None:
    """The validated ``response_format``; without a schema of its own, one the conversation
    asks for (see ``ResponseFormat.from_prompt``)."""
    fmt = params.get_object(body, "response_format")
    kind = "text" if fmt is None else fmt.get("type")
    if kind == "json_schema":
        return _json_schema(fmt or {})
    if kind not in ("text", "json_object"):
        raise InvalidRequest(
            "Invalid 'response_format.type': use 'text', 'json_object' or 'json_schema'.",
            param="response_format.type", code="invalid_value",
        )  # fmt: skip
    if kind == "json_object":
        schema = prompt_schema(messages, _JSON_OBJECT_ROLES)
        return ResponseFormat("json_object", schema, from_prompt=schema is not None)
    schema = prompt_schema(messages, _INSTRUCTION_ROLES)
    return None if schema is None else ResponseFormat("text", schema, from_prompt=True)


def _json_schema(fmt: dict[str, Any]) -> ResponseFormat:
    spec = params.get_object(fmt, "json_schema", "response_format.json_schema")
    if spec is None:
        raise params.missing("response_format.json_schema")
    name = params.get_str(spec, "name", param="response_format.json_schema.name")
    if not _FUNCTION_NAME.fullmatch(name):
        raise InvalidRequest(
            "Invalid 'response_format.json_schema.name': use a-z, A-Z, 0-9, _ and - "
            "(at most 64).", param="response_format.json_schema.name", code="invalid_value",
        )  # fmt: skip
    schema = params.get_object(spec, "schema", "response_format.json_schema.schema")
    strict = params.get_bool(spec, "strict", param="response_format.json_schema.strict")
    if strict and schema is not None:
        problem = strict_problem(schema)
        if problem is not None:
            raise InvalidRequest(
                f"Invalid schema for response_format '{name}': {problem}", param="response_format"
            )
    return ResponseFormat("json_schema", schema, name, strict)


def strict_problem(schema: Mapping[str, Any]) -> str | None:
    """Why ``schema`` is not usable in strict mode, in OpenAI's words (None: it is).

    Strict mode promises every property present and no other, which a schema can only
    promise if each object lists all its properties as required and forbids others.
    """
    stack: list[tuple[Any, tuple[str, ...]]] = [(schema, ())]
    while stack:
        node, where = stack.pop()
        if not isinstance(node, Mapping):
            continue
        kind = node.get("type")
        if kind == "object" or (isinstance(kind, list) and "object" in kind):
            if node.get("additionalProperties") is not False:
                return (
                    f"In context={where}, 'additionalProperties' is required to be supplied "
                    "and to be false."
                )
            props = node.get("properties")
            required = node.get("required")
            required = required if isinstance(required, list) else []
            missing = [key for key in props or () if key not in required]
            if missing:
                return (
                    f"In context={where}, 'required' is required to be supplied and to be an "
                    f"array including every key in properties. Missing '{echo(missing[0])}'."
                )
        stack.extend(_subschemas(node, where))
    return None


def _subschemas(
    node: Mapping[str, Any], where: tuple[str, ...]
) -> list[tuple[Any, tuple[str, ...]]]:
    found: list[tuple[Any, tuple[str, ...]]] = []
    for key in ("properties", "$defs", "definitions"):
        members = node.get(key)
        if isinstance(members, Mapping):
            found += [(sub, (*where, key, name)) for name, sub in members.items()]
    for key in ("anyOf", "oneOf", "allOf", "prefixItems"):
        branches = node.get(key)
        if isinstance(branches, list):
            found += [(sub, (*where, key, str(i))) for i, sub in enumerate(branches)]
    for key in ("items", "additionalProperties", "not"):
        if isinstance(node.get(key), Mapping):
            found.append((node[key], (*where, key)))
    return found


def prompt_schema(
    messages: tuple[ChatMessage, ...], roles: tuple[str, ...]
) -> dict[str, Any] | None:
    """The first JSON schema written into a message of one of ``roles``, as instructor's JSON
    modes and pydantic-ai's PromptedOutput write the one they want the answer to follow."""
    for message in messages:
        if message.role in roles and "{" in message.content:
            schema = _schema_in(message.content, _DECODER)
            if schema is not None:
                return schema
    return None


def _schema_in(text: str, decoder: json.JSONDecoder) -> dict[str, Any] | None:
    """Linear in ``text``: each attempt to decode resumes where the previous one ended or
    failed (a nested schema inside a failed attempt is missed; prompts put it at the top)."""
    at = text.find("{")
    while at != -1:
        try:
            value, end = decoder.raw_decode(text, at)
        except json.JSONDecodeError as exc:
            end = max(exc.pos, at + 1)
        except RecursionError:  # nested deeper than any schema: not one
            return None
        else:
            if isinstance(value, dict) and _is_schema(value):
                return value
        at = text.find("{", end)
    return None


def _is_schema(value: dict[str, Any]) -> bool:
    if isinstance(value.get("properties"), dict):
        return True
    return any(key in value for key in _SCHEMA_MARKERS)
