"""Chat templates: a conversation (and its tools) rendered into the prompt a model continues.

Rendering follows Hugging Face's ``apply_chat_template`` (same Jinja environment, filters,
globals and variables), so the template a GGUF file carries renders here as it does there.

>>> template = load_template("chatml", None)
>>> template.render([ChatMessage("user", "Hi")])
'<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\n'
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn

import jinja2
import jinja2.ext
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from oxiserve.engine.base import ChatMessage, ToolSpec

log = logging.getLogger("oxiserve.engine")

# The built-in templates do not know the "tool" role: a tool result becomes a user turn
# saying what it is (the model then reads it as new information to answer from).
CHATML = """\
{% for message in messages %}
{% if message['role'] == 'tool' %}
{{ '<|im_start|>user\\nTool result: ' + message['content'] + '<|im_end|>\\n' -}}
{% else %}
{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}
{% endif %}
{% endfor %}
{% if add_generation_prompt %}
{{ '<|im_start|>assistant\\n' -}}
{% endif %}
"""

# <|begin_of_text|> is written out rather than taken from bos_token: load_template has no
# tokenizer to ask, and a Llama 3 prompt without it is what the model never saw in training.
LLAMA3 = """\
{{ '<|begin_of_text|>' -}}
{% for message in messages %}
{% if message['role'] == 'tool' %}
{{ '<|start_header_id|>user<|end_header_id|>\\n\\nTool result: ' -}}
{% else %}
{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' -}}
{% endif %}
{{ message['content'] | trim + '<|eot_id|>' -}}
{% endfor %}
{% if add_generation_prompt %}
{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}
{% endif %}
"""

# Alpaca has no system role of its own: a system message replaces the usual preamble.
ALPACA = """\
{% if messages and messages[0]['role'] == 'system' %}
{{ messages[0]['content'] + '\\n\\n' -}}
{% set rest = messages[1:] %}
{% else %}
{{ 'Below is an instruction that describes a task. '
   'Write a response that appropriately completes the request.\\n\\n' -}}
{% set rest = messages %}
{% endif %}
{% for message in rest %}
{% if message['role'] == 'assistant' %}
{{ '### Response:\\n' + message['content'] + eos_token + '\\n\\n' -}}
{% elif message['role'] == 'tool' %}
{{ '### Instruction:\\nTool result: ' + message['content'] + '\\n\\n' -}}
{% elif message['role'] == 'system' %}
{{ message['content'] + '\\n\\n' -}}
{% else %}
{{ '### Instruction:\\n' + message['content'] + '\\n\\n' -}}
{% endif %}
{% endfor %}
{% if add_generation_prompt %}
{{ '### Response:\\n' -}}
{% endif %}
"""

BUILTIN_TEMPLATES: Mapping[str, str] = {"chatml": CHATML, "llama3": LLAMA3, "alpaca": ALPACA}

TOOL_INSTRUCTIONS = (
    "You have access to the following tools, each given as JSON (name, description and "
    "the JSON schema of its arguments):\n"
    "{tools}\n\n"
    "To call a tool, reply with only one line per call, in exactly this format:\n"
    '<tool_call>{{"name": "<tool name>", "arguments": {{<the arguments as a JSON object>}}}}'
    "</tool_call>\n"
    "If no tool is needed, reply normally."
)

_MENTIONS_TOOLS = re.compile(r"\btools\b")


class TemplateError(ValueError):
    """A chat template does not compile or fails to render (the message is one line)."""


class _Sandbox(ImmutableSandboxedEnvironment):
    """Hugging Face's sandbox, except that an unsafe attribute fails at once: Jinja's own
    sandbox returns an undefined that prints as "" and fails only when used further."""

    def unsafe_undefined(self, obj: Any, attribute: str) -> NoReturn:
        kind = type(obj).__name__
        raise SecurityError(f"access to attribute {attribute!r} of a {kind} is not allowed")


class _Raised(Exception):
    """A template's own raise_exception(message): it refuses the conversation."""


def _raise_exception(message: str) -> NoReturn:
    raise _Raised(_one_line(str(message)))


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    # Jinja's own tojson escapes <, > and & for HTML: a prompt wants the JSON as it is.
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _environment() -> _Sandbox:
    env = _Sandbox(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


def _plain(value: Any) -> Any:
    """Mappings and sequences as dicts and lists, which json.dumps and templates expect."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _function(tool: ToolSpec) -> dict[str, Any]:
    return {
        "name": tool.name,
        "description": tool.description,
        "parameters": _plain(tool.parameters),
    }


def tool_instructions(tools: Sequence[ToolSpec]) -> str:
    """The system text that teaches a template without tools how to call them."""
    lines = "\n".join(json.dumps(_function(t), ensure_ascii=False) for t in tools)
    return TOOL_INSTRUCTIONS.format(tools=lines)


def with_tool_instructions(
    messages: Sequence[ChatMessage], tools: Sequence[ToolSpec]
) -> list[ChatMessage]:
    """The conversation with the tool instructions merged into its first system message, or
    in a system message of their own before it."""
    text = tool_instructions(tools)
    if messages and messages[0].role == "system":
        first = ChatMessage("system", f"{messages[0].content}\n\n{text}")
        return [first, *messages[1:]]
    return [ChatMessage("system", text), *messages]


class ChatTemplate:
    """One compiled chat template.

    ``supports_tools`` says whether the template renders ``tools`` itself; when it does not,
    :meth:`render` describes them in a system message.  ``fallback_reason`` is set when this
    template stands in for one that did not compile (see :func:`load_template`).
    """

    __slots__ = ("_compiled", "bos_token", "eos_token", "fallback_reason", "name", "source")

    def __init__(
        self,
        source: str,
        *,
        name: str = "custom",
        bos_token: str = "",
        eos_token: str = "",
        fallback_reason: str | None = None,
    ) -> None:
        self.source = source
        self.name = name
        self.bos_token = bos_token
        self.eos_token = eos_token
        self.fallback_reason = fallback_reason
        try:
            self._compiled = _environment().from_string(source)
        except jinja2.TemplateSyntaxError as exc:
            where = f" (line {exc.lineno})" if exc.lineno else ""
            message = _one_line(exc.message or str(exc))
            raise TemplateError(
                f"chat template {name!r} does not compile: {message}{where}"
            ) from None

    @property
    def supports_tools(self) -> bool:
        return _MENTIONS_TOOLS.search(self.source) is not None

    @property
    def call_format(self) -> tuple[str, str]:
        """How this template's model writes a tool call: the text before the call's JSON
        object and the key of its arguments.  Hermes/Qwen ``<tool_call>`` (also what the
        instructions for templates without tools teach), Mistral ``[TOOL_CALLS] [``, or
        Llama 3.1's bare ``{"name": ..., "parameters": ...}``."""
        source = self.source
        if not self.supports_tools:
            return "<tool_call>", "arguments"  # as TOOL_INSTRUCTIONS show it
        if "[TOOL_CALLS]" in source:
            return "[TOOL_CALLS] [", "arguments"
        llama = "<|start_header_id|>" in source and "parameters" in source
        if "<tool_call>" not in source and ("<|python_tag|>" in source or llama):
            return "", "parameters"
        return "<tool_call>\n", "arguments"

    def render(
        self,
        messages: Sequence[ChatMessage],
        tools: Sequence[ToolSpec] = (),
        *,
        add_generation_prompt: bool = True,
    ) -> str:
        """The prompt for ``messages``; raises :class:`TemplateError` if the template fails."""
        if tools and not self.supports_tools:
            messages = with_tool_instructions(messages, tools)
        context = {
            "messages": [{"role": m.role, "content": m.content} for m in messages],
            "tools": [{"type": "function", "function": _function(t)} for t in tools] or None,
            "add_generation_prompt": add_generation_prompt,
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
        }
        try:
            return self._compiled.render(context)
        except _Raised as exc:
            raise TemplateError(f"chat template {self.name!r} refused: {exc}") from None
        # Any failure inside a template (a sandbox refusal, a TypeError from adding None to a
        # string, ...) is the template's fault, to be reported as such, not a server crash.
        except Exception as exc:
            message = _one_line(str(exc)) or type(exc).__name__
            raise TemplateError(f"chat template {self.name!r} failed: {message}") from None

    def __repr__(self) -> str:
        return f"ChatTemplate(name={self.name!r}, supports_tools={self.supports_tools})"


def load_template(
    choice: str | None,
    gguf_template: str | None,
    *,
    bos_token: str = "",
    eos_token: str = "",
) -> ChatTemplate:
    """The template ``--chat-template`` names.

    ``None``: the GGUF's own template (``gguf_template``) if there is one and it compiles,
    else ChatML with ``fallback_reason`` saying why.  "chatml", "llama3", "alpaca": the
    built-in templates.  Anything else is the path of a Jinja file; a file that is missing or
    does not compile is a :class:`ValueError` (the user asked for it: no silent fallback).
    """
    tokens = {"bos_token": bos_token, "eos_token": eos_token}
    if choice is None:
        if not gguf_template:
            return ChatTemplate(CHATML, name="chatml", **tokens)
        try:
            return ChatTemplate(gguf_template, name="gguf", **tokens)
        except TemplateError as exc:
            log.warning("the model's chat template is unusable, using chatml: %s", exc)
            return ChatTemplate(CHATML, name="chatml", fallback_reason=str(exc), **tokens)
    if choice in BUILTIN_TEMPLATES:
        return ChatTemplate(BUILTIN_TEMPLATES[choice], name=choice, **tokens)
    path = Path(choice)
    try:
        source = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise ValueError(
            f"chat template {choice!r} is neither a built-in ({', '.join(BUILTIN_TEMPLATES)})"
            f" nor a readable file: {reason}"
        ) from None
    return ChatTemplate(source, name=path.name, **tokens)
