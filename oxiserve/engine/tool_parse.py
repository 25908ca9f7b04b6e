"""Tool calls found in a model's text, in the formats open models write them.

Recognised (only calls naming one of the request's tools count; anything else stays text):

- Hermes / Qwen: ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``, anywhere in
  the text, as many as there are;
- Llama 3.1: ``<|python_tag|>{"name": ..., "parameters": {...}}`` (several: ``;``-separated);
- Mistral: ``[TOOL_CALLS] [{"name": ..., "arguments": {...}}, ...]``, and the newer
  ``[TOOL_CALLS]name[ARGS]{...}``;
- the whole output (whitespace and a code fence aside) being a JSON object
  ``{"name": ..., "arguments" | "parameters": {...}}`` or a JSON list of such objects.

>>> from oxiserve.engine.base import ToolSpec
>>> text, calls = parse_tool_calls(
...     'Sure.<tool_call>{"name": "now", "arguments": {}}</tool_call>', [ToolSpec("now")])
>>> text, calls[0].name, calls[0].arguments
('Sure.', 'now', '{}')
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from oxiserve.engine.base import ToolCall, ToolSpec

Found = tuple[str, list[ToolCall]]  # the text left, the calls taken out of it

_MARKERS = ("<tool_call>", "<|python_tag|>", "[TOOL_CALLS]", "```", "{", "[")
_HERMES = re.compile(r"<tool_call>(.*?)(?:</tool_call>|\Z)", re.DOTALL)
_FENCE = re.compile(r"\A```[\w-]*[ \t]*\n?(.*?)\n?[ \t]*```\Z", re.DOTALL)
_MISTRAL_NAME = re.compile(r"([^\s\[\]{}\"]+)\s*\[ARGS\]\s*")
# What a model may write after its calls that is not an answer (llama.cpp may detokenize
# the end-of-turn tokens as text).
_END_TOKENS = frozenset({"", "<|eom_id|>", "<|eot_id|>", "</s>", "<|im_end|>"})
_BETWEEN_CALLS = " \t\r\n;,"


def _reject_constant(name: str) -> NoReturn:
    # NaN and Infinity are not JSON, though Python's json reads them: no client could.
    raise ValueError(f"{name} is not JSON")


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def call_prefix_markers() -> tuple[str, ...]:
    """The strings whose appearance at the start of a streamed output (after whitespace)
    means "this may be a tool call": a streaming adapter holds the text back while the
    output so far is a prefix of one of them or starts with one.  ("```" because a fenced
    JSON object that is the whole output is a call too.)  Hermes tags may also come after
    some text: :func:`parse_tool_calls` finds them anywhere."""
    return _MARKERS


_INLINE = ("<tool_call>", "[TOOL_CALLS]", "<|python_tag|>")  # found after some text too


class CallWatch:
    """Which text of a streamed output may go out as it comes when it may hold tool calls.

    Nothing while its start may still be a call (a prefix of, or starting with, one of
    :func:`call_prefix_markers`: then all of it waits for :func:`parse_tool_calls` at the
    end); once it is plainly text, all of it but from a marker that a call may follow text
    with (or a tail that may be the start of one).  ``released`` counts the characters let
    through: always a prefix of the output.

    >>> watch = CallWatch()
    >>> [watch.feed(p) for p in ["Sure", ". <tool", "_call>{"]]
    ['Sure', '. ', '']
    """

    __slots__ = ("_held", "_phase", "released")

    def __init__(self) -> None:
        self._held = ""  # text not let through yet (short, but while the start is undecided)
        self._phase = 0  # 0: the start is undecided, 1: text, 2: a call may be under way
        self.released = 0

    def feed(self, piece: str) -> str:
        if self._phase == 2:
            return ""
        held = self._held + piece
        if self._phase == 0:
            call = _starts_a_call(held.lstrip())
            if call is not False:
                self._phase, self._held = (2, "") if call else (0, held)
                return ""
            self._phase = 1
        found = [i for i in (held.find(m) for m in _INLINE) if i >= 0]
        if found:
            out, self._phase, self._held = held[: min(found)], 2, ""
        else:
            keep = max((k for m in _INLINE for k in range(1, len(m)) if held.endswith(m[:k])),
                       default=0)  # fmt: skip
            out, self._held = held[: len(held) - keep], held[len(held) - keep :]
        self.released += len(out)
        return out


def _starts_a_call(start: str) -> bool | None:
    """Whether an output starting so is a call by its start (None: cannot tell yet): a
    format's marker, or a JSON object or list of objects, fenced or not."""
    if start.startswith(_INLINE):
        return True
    if not start or any(m.startswith(start) for m in (*_INLINE, "```")):
        return None
    if start.startswith("```"):
        _, newline, body = start.partition("\n")
        return _starts_a_call(body.lstrip()) if newline else None
    if start.startswith(("{", "[")):
        inner = start[1:].lstrip()
        if not inner:
            return None
        if start[0] == "{":
            return inner.startswith('"')
        return _starts_a_call(inner) if inner.startswith("{") else False
    return False


def rest_to_send(text: str, released: int, tools: Sequence[ToolSpec]) -> Found:
    """At the end of a watched stream: the calls in the whole ``text``, and the part of its
    remaining text not already let through (``released`` characters of it were)."""
    rest, calls = parse_tool_calls(text, tools)
    sent = text[:released]
    if not calls:
        return text[released:], calls
    # The parsers strip the text left: what went out may have had spaces at either end.
    for prefix in (sent, sent.rstrip(), sent.lstrip(), sent.strip()):
        if rest.startswith(prefix):
            return rest[len(prefix) :], calls
    return "", calls


def parse_tool_calls(text: str, tools: Sequence[ToolSpec]) -> Found:
    """The text without its tool calls (stripped) and the calls, in order.

    Text with no call in it comes back unchanged with no calls.  Never raises.
    """
    names = frozenset(tool.name for tool in tools)
    if names:
        parsers: tuple[Callable[[str, frozenset[str]], Found | None], ...] = (
            _hermes,
            _mistral,
            _python_tag,
            _whole_json,
        )
        for parse in parsers:
            found = parse(text, names)
            if found is not None:
                return found
    return text, []


def _new_id() -> str:
    return "call_" + os.urandom(12).hex()


def _decode(text: str) -> tuple[Any, int] | None:
    """The JSON value ``text`` starts with and where it ends, or None."""
    try:
        return _DECODER.raw_decode(text)
    except (ValueError, RecursionError):  # RecursionError: "[[[[..." nested too deep
        return None


def _call(value: Any, names: frozenset[str], *, marked: bool) -> ToolCall | None:
    """The call ``value`` is, if it is one.  ``marked``: a marker said a call follows, so
    missing arguments mean none; a bare object must name its arguments to be a call."""
    if not isinstance(value, dict):
        return None
    name = value.get("name")
    if not isinstance(name, str) or name not in names:
        return None
    key = "arguments" if "arguments" in value else "parameters"
    if key not in value and not marked:
        return None
    arguments = value.get(key, {})
    if isinstance(arguments, str):
        decoded = _decode(arguments.strip())
        if decoded is None or decoded[1] != len(arguments.strip()):
            return None
        arguments = decoded[0]
    if not isinstance(arguments, dict):
        return None
    try:
        dumped = json.dumps(arguments, separators=(",", ":"), ensure_ascii=False)
    except (ValueError, RecursionError):
        return None
    return ToolCall(_new_id(), name, dumped)


def _calls(value: Any, names: frozenset[str], *, marked: bool) -> list[ToolCall] | None:
    """The calls an object or a non-empty list of objects is, if every one of them is."""
    items = value if isinstance(value, list) else [value]
    calls = [_call(item, names, marked=marked) for item in items]
    if not calls or None in calls:
        return None
    return [call for call in calls if call is not None]


def _remaining(parts: Sequence[str]) -> str:
    kept = [part.strip() for part in parts]
    return "\n".join(part for part in kept if part not in _END_TOKENS)


def _unfence(text: str) -> str:
    fenced = _FENCE.match(text)
    return fenced.group(1).strip() if fenced else text


def _hermes(text: str, names: frozenset[str]) -> Found | None:
    if "<tool_call>" not in text:
        return None
    calls: list[ToolCall] = []
    kept: list[str] = []
    start = 0
    for match in _HERMES.finditer(text):
        body = _unfence(match.group(1).strip())
        decoded = _decode(body)
        if decoded is None or decoded[1] != len(body):
            continue  # not a call: the block stays in the text
        found = _calls(decoded[0], names, marked=True)
        if found is None:
            continue
        kept.append(text[start : match.start()])
        start = match.end()
        calls += found
    if not calls:
        return None
    kept.append(text[start:])
    return "".join(kept).strip(), calls


def _call_sequence(
    text: str, names: frozenset[str], name: str | None = None
) -> tuple[list[ToolCall], str] | None:
    """The calls ``text`` starts with (JSON values, ";"- or ","-separated) and the text after
    them; with ``name``, the first value is that tool's arguments (Mistral's [ARGS] form)."""
    calls: list[ToolCall] = []
    rest = text.lstrip()
    while rest.startswith(("{", "[")):
        decoded = _decode(rest)
        if decoded is None:
            break
        value, end = decoded
        if name is not None:
            value, name = {"name": name, "arguments": value}, None
        found = _calls(value, names, marked=True)
        if found is None:
            if calls:
                break  # JSON after the calls that is not one: text, like any other
            return None
        calls += found
        rest = rest[end:].lstrip(_BETWEEN_CALLS)
    if not calls:
        return None
    return calls, rest


def _mistral(text: str, names: frozenset[str]) -> Found | None:
    head, *parts = text.split("[TOOL_CALLS]")
    if not parts:
        return None
    calls: list[ToolCall] = []
    kept = [head]
    for part in parts:
        named = _MISTRAL_NAME.match(part.lstrip())
        if named is None:
            found = _call_sequence(part, names)
        else:
            found = _call_sequence(part.lstrip()[named.end() :], names, named.group(1))
        if found is None:
            return None  # a marker without a call we understand: leave the text as it is
        calls += found[0]
        kept.append(found[1])
    return _remaining(kept), calls


def _python_tag(text: str, names: frozenset[str]) -> Found | None:
    head, tag, body = text.partition("<|python_tag|>")
    if not tag:
        return None
    found = _call_sequence(body, names)
    if found is None:
        return None
    return _remaining([head, found[1]]), found[0]


def _whole_json(text: str, names: frozenset[str]) -> Found | None:
    body = _unfence(text.strip())
    if not body.startswith(("{", "[")):
        return None
    decoded = _decode(body)
    if decoded is None or decoded[1] != len(body):
        return None
    calls = _calls(decoded[0], names, marked=False)
    return ("", calls) if calls else None
