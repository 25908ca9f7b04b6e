"""Which text can still become JSON valid for a schema: the automaton guided decoding runs on.

A real model is made to answer in a JSON schema's shape (a forced tool call's arguments,
``response_format`` json_schema / json_object) by offering it, at each step, only the tokens
whose text keeps the output a prefix of some valid instance.  :class:`JsonGuide` answers that
question one character at a time, with no I/O and no model: its states are immutable stacks
of frames (one frame per open value), a set of them when the schema leaves a choice open
(``anyOf``, several keys that share a start), so a state can be kept, tried and dropped.

    guide = JsonGuide({"type": "object", "properties": {"n": {"type": "integer"}}})
    states = guide.feed(guide.start(), '{"n": 4')   # still a prefix: a non-empty set
    guide.accepts(guide.feed(states, "2}"))         # True: '{"n": 42}' is complete

What it writes is JSON as a model writes it when told to be terse: keys in the schema's order
(OpenAI's structured outputs do the same), one optional space after ``:`` and ``,`` and none
elsewhere (a model cannot loop on whitespace), numbers without exponents, at most 16 integer
and 15 fraction digits.  Every live state can still be completed, so a model is never led into
a dead end: numeric bounds prune digits that no completion could bring back into range.
Honoured: ``type`` (and lists of types), ``enum``, ``const``, ``properties`` / ``required`` /
``additionalProperties``, ``minProperties`` / ``maxProperties``, ``items`` / ``prefixItems`` /
``minItems`` / ``maxItems``, ``minLength`` / ``maxLength``, ``minimum`` / ``maximum`` and their
exclusive forms, integer ``multipleOf``, ``anyOf`` / ``oneOf`` / ``allOf`` and local ``$ref``
(recursive ones too).  Not enforced: ``pattern``, ``uniqueItems``, ``not``, ``if``/``then``
(a prefix automaton cannot check them without a regex engine that matches partially).
Declared properties are the only ones written, even where others are allowed.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from oxiserve.engine.sim_json import SchemaTooLarge, merge_schemas

__all__ = ["JsonGuide", "SchemaTooLarge", "States"]

ALL_TYPES = frozenset({"object", "array", "string", "number", "integer", "boolean", "null"})
_INFERRED = (
    ("object", ("properties", "required", "additionalProperties", "minProperties")),
    ("array", ("items", "prefixItems", "minItems", "maxItems")),
    ("string", ("minLength", "maxLength", "pattern", "format")),
    ("number", ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf")),
)
_MAX_NODES = 20_000  # compiled schema nodes: a schema cannot make the guide unbounded
_MAX_EXPANSIONS = 512  # frames tried for one character (a self-referencing anyOf ends)
# Live states kept at most: a union of look-alike branches (a recursive anyOf of two array
# types) doubles them with every character; keeping some of them narrows the instances the
# guide allows, never past the valid ones, and bounds every step's work.
MAX_STATES = 64
_MAX_INT_DIGITS = 16
_MAX_FRACTION_DIGITS = 15
_HEX = frozenset("0123456789abcdefABCDEF")
_ESCAPES = frozenset('"\\/bfnrt')
_DIGITS = frozenset("0123456789")
PROBE = frozenset(chr(c) for c in range(0x20, 0x7F))  # what forced() tries, with literal chars

Frame = tuple[Any, ...]
Stack = tuple[Frame, ...]
States = frozenset[Stack]


def _literal(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": "), allow_nan=False)


def _number(value: object) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def nested(schema: Any, pointer: str) -> Any:
    """``schema`` to be placed at ``pointer`` (e.g. ``/properties/arguments``) inside another
    schema: its local ``$ref``s rewritten to still point into it."""
    if isinstance(schema, Mapping):
        out = {k: nested(v, pointer) for k, v in schema.items()}
        ref = schema.get("$ref")
        if isinstance(ref, str) and ref.startswith("#"):
            out["$ref"] = "#" + pointer + ref[1:]
        return out
    if isinstance(schema, list):
        return [nested(v, pointer) for v in schema]
    return schema


class _Node:
    """One schema, compiled: what a value of it may be.  Identity is the node's hash."""

    __slots__ = (
        "branches", "enum", "extra", "high", "items", "low", "max_items",
        "max_len", "max_props", "min_items", "min_len", "min_props", "open_high", "open_low",
        "prefix", "props", "required_from", "step", "types",
    )  # fmt: skip

    def __init__(self) -> None:
        self.types: frozenset[str] = ALL_TYPES
        self.enum: tuple[str, ...] | None = None  # literals: the value must be one of them
        self.branches: tuple[_Node, ...] = ()  # anyOf / oneOf: one of these instead
        self.props: tuple[tuple[str, _Node, bool], ...] = ()  # (key literal, value, required)
        self.required_from = 0  # props[i:] hold a required one for every i below this
        self.extra: _Node | None = None  # free keys' values (only when no props)
        self.min_props: float = 0
        self.max_props: float = math.inf
        self.prefix: tuple[_Node | None, ...] = ()
        self.items: _Node | None = None  # None: no items beyond the prefix
        self.min_items: float = 0
        self.max_items: float = math.inf
        self.min_len: float = 0
        self.max_len: float = math.inf
        self.low: float | None = None
        self.high: float | None = None
        self.open_low = self.open_high = False
        self.step = 0.0  # multipleOf (0: none)


class _Compiler:
    """Schemas to nodes, each schema once (so recursive ``$ref``s become cycles)."""

    def __init__(self, root: Mapping[str, Any]) -> None:
        self.root = root
        self.memo: dict[int, _Node | None] = {}
        self.keep: list[object] = []  # the schemas memo ids refer to stay alive
        self.literal_chars: set[str] = set()
        self.count = 0
        self.any = _Node()  # any value: objects with any keys, arrays of anything
        self.any.extra = self.any.items = self.any

    def node(self, schema: object, depth: int = 0) -> _Node | None:
        """None: no value is valid (the schema ``false``)."""
        if schema is False:
            return None
        if not isinstance(schema, Mapping) or not schema:
            return self.any  # true, {} or not a schema at all: any value
        key = id(schema)
        if key in self.memo:
            return self.memo[key]
        self.count += 1
        if self.count > _MAX_NODES:
            raise SchemaTooLarge(f"the schema has more than {_MAX_NODES} parts")
        node = _Node()
        self.memo[key] = node
        self.keep.append(schema)
        self.fill(node, schema, depth)
        return node

    def fill(self, node: _Node, schema: Mapping[str, Any], depth: int) -> None:
        if depth > 32:  # a schema that includes itself: give up on it, anything goes
            node.extra = node.items = self.any
            return
        inlined = self.inline(schema)
        if inlined is not schema:
            self.fill(node, inlined, depth + 1)
            return
        parts = [p for p in schema.get("allOf") or () if isinstance(p, Mapping)]
        if parts:
            rest = {k: v for k, v in schema.items() if k != "allOf"}
            self.fill(node, merge_schemas(rest, *map(self.inline, parts)), depth + 1)
            return
        for key in ("anyOf", "oneOf"):
            options = schema.get(key)
            if isinstance(options, list) and options:
                rest = {k: v for k, v in schema.items() if k != key}
                merged = [merge_schemas(rest, self.inline(o)) if isinstance(o, Mapping) else o
                          for o in options]  # fmt: skip
                self.keep.append(merged)
                found = [self.node(o, depth + 1) for o in merged]
                node.branches = tuple(n for n in found if n is not None)
                node.types = frozenset()
                return
        self.fill_value(node, schema, depth)

    def inline(self, schema: Mapping[str, Any]) -> Mapping[str, Any]:
        ref = schema.get("$ref")
        target = self.resolve(ref) if isinstance(ref, str) else None
        if target is None:
            return schema
        siblings = {k: v for k, v in schema.items() if k not in ("$ref", "$defs", "definitions")}
        return merge_schemas(target, siblings) if siblings else target

    def resolve(self, ref: str) -> Mapping[str, Any] | None:
        if not ref.startswith("#"):
            return None
        found: Any = self.root
        for part in ref[1:].split("/")[1:]:
            part = part.replace("~1", "/").replace("~0", "~")
            if isinstance(found, list) and part.isdigit() and int(part) < len(found):
                found = found[int(part)]
            elif isinstance(found, Mapping) and part in found:
                found = found[part]
            else:
                return None
        return found if isinstance(found, Mapping) else None

    def fill_value(self, node: _Node, schema: Mapping[str, Any], depth: int) -> None:
        if "const" in schema or isinstance(schema.get("enum"), list):
            values = [schema["const"]] if "const" in schema else list(schema["enum"])
            node.enum = tuple(dict.fromkeys(_literal(v) for v in values))
            for literal in node.enum:
                self.literal_chars.update(c for c in literal if c not in PROBE)
            return
        node.types = _types(schema)
        if "object" in node.types:
            self.fill_object(node, schema, depth)
        if "array" in node.types:
            prefix = schema.get("prefixItems")
            if isinstance(prefix, list):
                node.prefix = tuple(self.node(p, depth + 1) for p in prefix)
            node.items = self.node(schema.get("items", True), depth + 1)
            node.min_items = _count(schema.get("minItems"), 0)
            node.max_items = _count(schema.get("maxItems"), math.inf)
        if "string" in node.types:
            node.min_len = _count(schema.get("minLength"), 0)
            node.max_len = _count(schema.get("maxLength"), math.inf)
        if node.types & {"number", "integer"}:
            self.fill_number(node, schema)

    def fill_object(self, node: _Node, schema: Mapping[str, Any], depth: int) -> None:
        declared = schema.get("properties")
        declared = declared if isinstance(declared, Mapping) else {}
        required = [r for r in schema.get("required") or () if isinstance(r, str)]
        extra = schema.get("additionalProperties", True)
        props: list[tuple[str, _Node, bool]] = []
        for name in [*declared, *(r for r in required if r not in declared)]:
            child = self.node(declared.get(name, extra), depth + 1)
            if child is None:
                continue  # the schema false: this key cannot be written
            literal = _literal(name)
            self.literal_chars.update(c for c in literal if c not in PROBE)
            props.append((literal, child, name in required))
        node.props = tuple(props)
        node.required_from = max((i + 1 for i, p in enumerate(props) if p[2]), default=0)
        if not props and extra is not False:
            node.extra = self.node(extra, depth + 1)
        node.min_props = _count(schema.get("minProperties"), 0)
        node.max_props = _count(schema.get("maxProperties"), math.inf)

    def fill_number(self, node: _Node, schema: Mapping[str, Any]) -> None:
        low, high = _number(schema.get("minimum")), _number(schema.get("maximum"))
        ex_low, ex_high = schema.get("exclusiveMinimum"), schema.get("exclusiveMaximum")
        # draft 4: booleans beside the bounds; draft 6 on: bounds of their own
        node.open_low = ex_low is True and low is not None
        node.open_high = ex_high is True and high is not None
        strict_low, strict_high = _number(ex_low), _number(ex_high)
        if strict_low is not None and (low is None or strict_low >= low):
            low, node.open_low = strict_low, True
        if strict_high is not None and (high is None or strict_high <= high):
            high, node.open_high = strict_high, True
        node.low, node.high = low, high
        step = _number(schema.get("multipleOf"))
        if step is not None and step > 0:
            node.step = step


def _types(schema: Mapping[str, Any]) -> frozenset[str]:
    kind = schema.get("type")
    if isinstance(kind, str):
        kinds = {kind}
    elif isinstance(kind, list):
        kinds = {k for k in kind if isinstance(k, str)}
    else:
        kinds = {t for t, keys in _INFERRED if any(k in schema for k in keys)}
        if not kinds:
            return ALL_TYPES
    if schema.get("nullable") is True:  # OpenAPI 3.0
        kinds.add("null")
    return frozenset(kinds) & ALL_TYPES


def _count(value: object, default: float) -> float:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return default


class JsonGuide:
    """The prefixes of the schema's JSON instances (see the module docstring)."""

    def __init__(self, schema: Mapping[str, Any] | bool | None = None) -> None:
        root = schema if isinstance(schema, Mapping) else {}
        compiler = _Compiler(root)
        node = compiler.node(schema if schema is not None else True)
        self._keep = compiler.keep
        self._start: States = frozenset({(("V", node),)}) if node is not None else frozenset()
        self.probe = PROBE | compiler.literal_chars

    def start(self) -> States:
        return self._start

    def feed(self, states: States, text: str) -> States:
        """The states after ``text``: empty when no valid instance starts with it."""
        for char in text:
            if not states:
                break
            following: set[Stack] = set()
            for stack in states:
                _step(stack, char, following)
                if len(following) >= MAX_STATES:
                    break  # ways on enough: what is kept is still only valid instances
            states = frozenset(following)
        return states

    def accepts(self, states: States) -> bool:
        """Whether the text so far is a complete instance (it may go on: ``4`` -> ``42``)."""
        return any(not s or (len(s) == 1 and _may_end(s[0])) for s in states)

    def done(self, states: States) -> bool:
        """Whether the instance is complete and nothing can follow it."""
        return bool(states) and all(not s for s in states)

    def forced(self, states: States, limit: int = 64) -> str:
        """The text every continuation starts with (keys, ``": "``...): a decoder writes it
        without asking the model.  Empty inside a free string or where the value may end."""
        out: list[str] = []
        while len(out) < limit and states and not self.accepts(states):
            if any(s[-1][0] == "S" for s in states if s):
                break  # a free string: almost any character
            nexts = [c for c in self.probe if self.feed(states, c)]
            if len(nexts) != 1:
                break
            out.append(nexts[0])
            states = self.feed(states, nexts[0])
        return "".join(out)


# --- the frames ---------------------------------------------------------------------------------
# Each step function takes the top frame and a character and returns the ways on:
# (frames replacing the top, consumed).  Not consumed: the character goes to the new top
# (the top was popped, or replaced by a frame that takes it).


def _step(stack: Stack, char: str, out: set[Stack]) -> None:
    work = [stack]
    tries = 0
    while work and tries < _MAX_EXPANSIONS:
        tries += 1
        current = work.pop()
        if not current:
            continue  # a complete instance: nothing may follow
        top, base = current[-1], current[:-1]
        for frames, consumed in _STEPS[top[0]](top, char):
            following = base + frames
            if consumed:
                out.add(_settle(following))
            else:
                work.append(following)


def _settle(stack: Stack) -> Stack:
    """Pop literals that are complete with nothing that could extend them."""
    while stack and stack[-1][0] == "E" and all(len(c) == stack[-1][2] for c in stack[-1][1]):
        stack = stack[:-1]
    return stack


def _may_end(frame: Frame) -> bool:
    if frame[0] == "E":
        return any(len(c) == frame[2] for c in frame[1])
    if frame[0] == "N":
        return frame[2] in _NUMBER_ENDS and _in_range(frame[1], frame[3])
    return False


Way = tuple[tuple[Frame, ...], bool]


def _value(frame: Frame, char: str) -> list[Way]:
    node: _Node = frame[1]
    if node.enum is not None:
        return [((("E", node.enum, 0),), False)]
    if node.branches:
        return [((("V", b),), False) for b in node.branches]
    types = node.types
    if char == "{" and "object" in types:
        return [((("O", node, 0, 0, 0, None),), True)]
    if char == "[" and "array" in types:
        return [((("A", node, 0, 0),), True)]
    if char == '"' and "string" in types:
        return [((("S", node, 0, 0),), True)]
    if (char == "-" or char in _DIGITS) and types & {"number", "integer"}:
        return [((("N", node, 0, ""),), False)]
    if char in "tf" and "boolean" in types:
        return [((("E", ("true", "false"), 0),), False)]
    if char == "n" and "null" in types:
        return [((("E", ("null",), 0),), False)]
    return []


def _enum(frame: Frame, char: str) -> list[Way]:
    _, candidates, i = frame
    going = tuple(c for c in candidates if len(c) > i and c[i] == char)
    ways: list[Way] = [((("E", going, i + 1),), True)] if going else []
    if any(len(c) == i for c in candidates):
        ways.append(((), False))  # the literal ended before this character
    return ways


def _string(frame: Frame, char: str) -> list[Way]:
    _, node, length, escape = frame
    if escape == 1:  # after a backslash
        if char in _ESCAPES:
            return [((("S", node, length + 1, 0),), True)]
        return [((("S", node, length, 14),), True)] if char == "u" else []
    if escape:  # 10 + the hex digits still to come of a \uXXXX
        if char not in _HEX:
            return []
        left = escape - 11
        return [((("S", node, length + (not left), 10 + left if left else 0),), True)]
    if char == '"':
        return [((), True)] if length >= node.min_len else []
    if length >= node.max_len or char < " ":
        return []
    if char == "\\":
        return [((("S", node, length, 1),), True)]
    return [((("S", node, length + 1, 0),), True)]


# Number phases: 0 start, 1 after "-", 2 a leading "0", 3 integer digits, 4 after ".",
# 5 fraction digits.  A number may end in 2, 3 and 5.
_NUMBER_ENDS = frozenset({2, 3, 5})


def _numeral(frame: Frame, char: str) -> list[Way]:
    _, node, phase, text = frame
    integer = "number" not in node.types
    if char in _DIGITS:
        digits = len(text.lstrip("-").partition(".")[0 if phase < 4 else 2])
        if phase == 2 or (phase == 3 and digits >= _MAX_INT_DIGITS):
            following = -1
        elif phase in (0, 1, 3):
            following = 2 if phase != 3 and char == "0" else 3
        else:
            following = 5 if digits < _MAX_FRACTION_DIGITS else -1
    elif char == "-" and phase == 0:
        following = 1 if node.low is None or node.low < 0 else -1
    elif char == "." and phase in (2, 3) and not integer:
        following = 4
    else:
        following = -1
    if following >= 0 and _reachable(node, text + char, following):
        return [((("N", node, following, text + char),), True)]
    if phase in _NUMBER_ENDS and _in_range(node, text):
        return [((), False)]
    return []


def _reachable(node: _Node, text: str, phase: int) -> bool:
    """Whether some number starting with ``text`` is within the node's bounds (and a multiple
    of its step): the values its completions can take are a few intervals, one per count of
    digits still to come."""
    if node.low is None and node.high is None and not node.step:
        return True
    negative = text.startswith("-")
    body = text.lstrip("-")
    if not body:
        return node.low is None or node.low < 0
    integer = "number" not in node.types
    if phase >= 4:  # in the fraction: the value is fixed up to its next digits
        whole, _, fraction = body.partition(".")
        start = float(f"{whole}.{fraction or 0}")
        more = len(fraction) < _MAX_FRACTION_DIGITS
        spans = [(start, start + 10.0 ** -len(fraction) if more else start)]
    elif phase == 2:
        spans = [(0.0, 0.0 if integer else 1.0)]
    else:
        p, k = int(body), len(body)
        spans = [(float(p * 10**j), float((p + 1) * 10**j - (1 if integer else 0)))
                 for j in range(_MAX_INT_DIGITS - k + 1)]  # fmt: skip
    return any(_fits(node, -b if negative else a, -a if negative else b, integer)
               for a, b in spans)  # fmt: skip


def _fits(node: _Node, lo: float, hi: float, integer: bool) -> bool:
    """Whether [lo, hi] holds a value the node allows (an integer, for an integer node)."""
    low = -math.inf if node.low is None else node.low
    high = math.inf if node.high is None else node.high
    if integer:
        if math.isfinite(low):
            low = (
                math.floor(low) + 1 if node.open_low and low == math.floor(low) else math.ceil(low)
            )
        if math.isfinite(high):
            high = (
                math.ceil(high) - 1
                if node.open_high and high == math.ceil(high)
                else math.floor(high)
            )
        lo, hi = max(math.ceil(lo), low), min(math.floor(hi), high)
    else:
        lo, hi = max(lo, low), min(hi, high)
        if lo == hi and (
            (node.open_low and lo == node.low) or (node.open_high and hi == node.high)
        ):
            return False
    if lo > hi:
        return False
    if node.step and math.isfinite(lo) and math.isfinite(hi):
        return math.ceil(lo / node.step - 1e-9) * node.step <= hi + 1e-9
    return True


def _in_range(node: _Node, text: str) -> bool:
    if not text or text.endswith(("-", ".")):
        return False
    value = float(text)
    if node.low is not None and (value < node.low or (node.open_low and value == node.low)):
        return False
    if node.high is not None and (value > node.high or (node.open_high and value == node.high)):
        return False
    return not node.step or math.isclose(math.remainder(value, node.step), 0.0, abs_tol=1e-9)


# Object phases: 0 after "{", 1 after a key, 2 after ":", 3 after ": ", 4 after a value,
# 5 after ",", 6 after ", ".  Frame: ("O", node, phase, next property, keys written, value).
def _object(frame: Frame, char: str) -> list[Way]:
    _, node, phase, index, written, pending = frame
    if phase in (0, 5, 6):
        if char == "}" and phase == 0 and _closable(node, index, written):
            return [((), True)]
        if char == " " and phase == 5:
            return [((("O", node, 6, index, written, None),), True)]
        return _keys(node, index, written, char)
    if phase == 1:
        return [((("O", node, 2, index, written, pending),), True)] if char == ":" else []
    if phase == 2 and char == " ":
        return [((("O", node, 3, index, written, pending),), True)]
    if phase in (2, 3):
        return [((("O", node, 4, index, written, None), ("V", pending)), False)]
    if char == "," and _more_keys(node, index, written):
        return [((("O", node, 5, index, written, None),), True)]
    if char == "}" and _closable(node, index, written):
        return [((), True)]
    return []


def _keys(node: _Node, index: int, written: int, char: str) -> list[Way]:
    if char != '"' or written >= node.max_props:
        return []
    if node.extra is not None:
        return [((("O", node, 1, index, written + 1, node.extra), ("S", _KEY, 0, 0)), True)]
    ways: list[Way] = []
    for i in range(index, len(node.props)):
        literal, child, required = node.props[i]
        ways.append(((("O", node, 1, i + 1, written + 1, child), ("E", (literal,), 0)), False))
        if required:
            break  # a required key cannot be left out: none after it comes first
    return ways


def _closable(node: _Node, index: int, written: int) -> bool:
    return index >= node.required_from and written >= node.min_props


def _more_keys(node: _Node, index: int, written: int) -> bool:
    return written < node.max_props and (node.extra is not None or index < len(node.props))


_KEY = _Node()
_KEY.types = frozenset({"string"})


# Array phases: 0 after "[", 1 after an item, 2 after ",", 3 after ", ".
def _array(frame: Frame, char: str) -> list[Way]:
    _, node, phase, count = frame
    if phase in (0, 1) and char == "]" and count >= node.min_items:
        return [((), True)]
    if phase == 1:
        if char == "," and count < node.max_items and _item(node, count) is not None:
            return [((("A", node, 2, count),), True)]
        return []
    if phase == 2 and char == " ":
        return [((("A", node, 3, count),), True)]
    item = _item(node, count)
    if item is None or count >= node.max_items:
        return []
    return [((("A", node, 1, count + 1), ("V", item)), False)]


def _item(node: _Node, index: int) -> _Node | None:
    if index < len(node.prefix):
        return node.prefix[index]
    return node.items


_STEPS = {"V": _value, "E": _enum, "S": _string, "N": _numeral, "O": _object, "A": _array}
