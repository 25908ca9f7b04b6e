"""JSON the simulator makes: a seeded instance of a JSON schema (tool arguments, structured output).

Deterministic for a ``random.Random``; bounded in work however the schema is shaped
(a self-requiring or huge schema raises :class:`SchemaTooLarge`, answered as a 400).
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable, Mapping
from random import Random
from typing import Any

from oxiserve.engine.sim_text import LOREM_WORDS

_MAX_DEPTH = 8  # deeper than this, objects get only required members and arrays minItems
_GIVE_UP_DEPTH = 64  # a schema that requires itself has no finite instance; stop somewhere
_INT_LIMIT = 2**53 - 1  # keeps integers exact in every JSON parser
_NODE_BUDGET = 5000  # values generated per schema: a self-requiring schema must not explode
_MAX_COUNT = 512  # largest minItems / minProperties / minLength the sampler will honour
MAX_JSON_CHARS = 256 * 1024  # a simulated JSON answer or arguments (a const can be huge)


class SchemaTooLarge(ValueError):
    """The schema's smallest instance is too big (or infinite) to simulate."""


_NUMBER_HINTS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf")


def sample_json(schema: object, rng: Random) -> Any:
    """A deterministic JSON value valid against ``schema``; a missing schema gives ``{}``.

    Covers what tool definitions use: ``type`` (also lists), ``properties``/``required``,
    ``items``/``prefixItems``/``minItems``/``maxItems``, ``enum``, ``const``, numeric bounds,
    string lengths and common ``format`` values, ``anyOf``/``oneOf`` (first non-null branch),
    ``allOf`` and local ``$ref``.  ``pattern`` is not honoured.

    >>> sample_json({"type": "object", "properties": {"n": {"type": "integer", "minimum": 5,
    ...     "maximum": 5}}}, Random(0))
    {'n': 5}
    """
    if not isinstance(schema, Mapping) or not schema:
        return {}
    return _Sampler(schema, rng).value(schema, 0)


def checked_size(text: str) -> str:
    """``text`` if it is a JSON text the simulator will answer; SchemaTooLarge beyond."""
    if len(text) > MAX_JSON_CHARS:
        raise SchemaTooLarge(f"its instance is {len(text)} characters, more than {MAX_JSON_CHARS}")
    return text


def merge_schemas(*parts: Mapping[str, Any]) -> dict[str, Any]:
    """Each part applied on top of the ones before, uniting properties and required lists;
    one pass, however many parts (an allOf of 40,000 branches is linear work).  A property
    several parts describe must satisfy each (an ``allOf`` of them), and ``type``s intersect
    (``number`` with ``integer`` is ``integer``); other keywords: the last part's."""
    merged: dict[str, Any] = {}
    props: dict[str, Any] = {}
    required: dict[str, None] = {}
    types: list[Any] = []
    for part in parts:
        merged.update(part)
        declared = part.get("properties") or {}
        if not isinstance(declared, Mapping):
            raise TypeError("'properties' must be an object")
        for name, sub in declared.items():
            earlier = props.get(name)
            props[name] = sub if earlier is None or earlier is sub else {"allOf": [earlier, sub]}
        required.update(dict.fromkeys(part.get("required") or ()))
        if "type" in part:
            types.append(part["type"])
    merged.pop("properties", None)
    merged.pop("required", None)
    if props:
        merged["properties"] = props
    if required:
        merged["required"] = list(required)
    if len(types) > 1:
        merged["type"] = _common_types(types)
    return merged


def _common_types(types: list[Any]) -> list[str]:
    """The types every one of ``types`` (strings or lists of them) allows."""
    common: set[str] | None = None
    for kind in types:
        allowed = {kind} if isinstance(kind, str) else {k for k in kind if isinstance(k, str)}
        if "number" in allowed:
            allowed.add("integer")  # every integer is a number
        common = allowed if common is None else common & allowed
    return sorted(common or ())


def _bound(value: object) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _limit(
    schema: Mapping[str, Any], key: str, exclusive_key: str, stricter: Callable[..., float]
) -> tuple[float | None, bool]:
    """A numeric bound and whether it is exclusive (draft 4 booleans and draft 6+ numbers)."""
    inclusive = _bound(schema.get(key))
    exclusive = schema.get(exclusive_key)
    bound = _bound(exclusive)
    if bound is not None and (inclusive is None or stricter(bound, inclusive) == bound):
        return bound, True
    return inclusive, exclusive is True and inclusive is not None


def _count(value: object) -> int:
    """A schema's min* count (0 when absent); SchemaTooLarge beyond what we simulate."""
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        return 0
    if value > _MAX_COUNT:
        raise SchemaTooLarge(f"a minimum count of {value} is more than {_MAX_COUNT}")
    return value


class _Sampler:
    """Walks one schema; ``root`` resolves ``$ref``s of the form ``#/...``."""

    def __init__(self, root: Mapping[str, Any], rng: Random) -> None:
        self.root = root
        self.rng = rng
        self.budget = _NODE_BUDGET

    def charge(self, work: int) -> None:
        self.budget -= work
        if self.budget < 0:
            raise SchemaTooLarge(f"the schema needs more than {_NODE_BUDGET} values")

    def value(self, schema: object, depth: int) -> Any:
        self.charge(1)
        if not isinstance(schema, Mapping) or depth > _GIVE_UP_DEPTH:
            return self.rng.choice(LOREM_WORDS)
        if "$ref" in schema and self._resolve(schema["$ref"]) is not None:
            return self.value(self._inline(schema), depth + 1)
        if "const" in schema:
            const = schema["const"]
            if isinstance(const, str):
                checked_size(const)  # refused before a megabyte string is encoded
            return const
        enum = schema.get("enum")
        if isinstance(enum, list) and enum:
            return self.rng.choice(enum)
        deep = depth >= _MAX_DEPTH
        types = schema.get("type")
        if deep and isinstance(types, list) and "null" in types:
            return None  # deep in a recursive schema, null ends the recursion
        for key in ("allOf", "anyOf", "oneOf"):
            branches = [b for b in schema.get(key) or () if isinstance(b, Mapping)]
            if deep and key != "allOf" and any(b.get("type") == "null" for b in branches):
                return None
            if branches:
                rest = {k: v for k, v in schema.items() if k != key}
                if key == "allOf":
                    self.charge(len(branches))
                    return self.value(merge_schemas(rest, *map(self._inline, branches)), depth + 1)
                usable = [b for b in branches if b.get("type") != "null"] or branches
                return self.value(merge_schemas(rest, self._inline(usable[0])), depth + 1)
        kind = self._type(schema)
        if kind == "object":
            return self._object(schema, depth)
        if kind == "array":
            return self._array(schema, depth)
        if kind in ("integer", "number"):
            return self._number(schema, kind == "integer")
        if kind == "boolean":
            return self.rng.random() < 0.5
        if kind == "null":
            return None
        return self._string(schema)

    def _inline(self, schema: Mapping[str, Any]) -> Mapping[str, Any]:
        """``schema`` with a local ``$ref`` replaced by its target, the keywords beside the
        ``$ref`` (draft 2019+ allows them) applied on top."""
        target = self._resolve(schema.get("$ref"))
        if target is None:
            return schema
        siblings = {k: v for k, v in schema.items() if k not in ("$ref", "$defs", "definitions")}
        self.charge(1 + len(siblings.get("properties") or ()))
        return merge_schemas(target, siblings) if siblings else target

    def _resolve(self, ref: object) -> Mapping[str, Any] | None:
        if not isinstance(ref, str) or not ref.startswith("#"):
            return None
        node: Any = self.root
        for part in ref[1:].split("/")[1:]:
            part = part.replace("~1", "/").replace("~0", "~")
            if not isinstance(node, Mapping) or part not in node:
                return None
            node = node[part]
        return node if isinstance(node, Mapping) else None

    @staticmethod
    def _type(schema: Mapping[str, Any]) -> str:
        kind = schema.get("type")
        if isinstance(kind, list):
            named = [k for k in kind if isinstance(k, str)]
            kind = next((k for k in named if k != "null"), "null" if named else None)
        if isinstance(kind, str):
            return kind
        if any(k in schema for k in ("properties", "required", "additionalProperties")):
            return "object"
        if "items" in schema or "prefixItems" in schema:
            return "array"
        if any(k in schema for k in _NUMBER_HINTS):
            return "number"
        return "string"

    def _object(self, schema: Mapping[str, Any], depth: int) -> dict[str, Any]:
        props = schema.get("properties")
        props = props if isinstance(props, Mapping) else {}
        required = [r for r in schema.get("required") or () if isinstance(r, str)]
        extra = schema.get("additionalProperties")
        out: dict[str, Any] = {}
        for name, sub in props.items():
            if depth < _MAX_DEPTH or name in required:
                out[name] = self.value(sub, depth + 1)
        for name in required:
            if name not in out:
                out[name] = self.value(extra if isinstance(extra, Mapping) else {}, depth + 1)
        wanted = _count(schema.get("minProperties"))
        if wanted and extra is not False:
            while len(out) < wanted:
                out[f"field{len(out) + 1}"] = self.value(extra or {}, depth + 1)
        return out

    def _array(self, schema: Mapping[str, Any], depth: int) -> list[Any]:
        prefix = schema.get("prefixItems")
        prefix = prefix if isinstance(prefix, list) else []
        items = schema.get("items")
        low = _count(schema.get("minItems"))
        high = schema.get("maxItems")
        high = high if isinstance(high, int) and high >= low else low + 3
        if items is False:
            high = min(high, len(prefix))
        count = low if depth >= _MAX_DEPTH else max(low, min(high, self.rng.randint(1, 3)))
        out: list[Any] = []
        for _ in range(4 * count + 4):  # bounded retries when items must be unique
            if len(out) >= count:
                break
            i = len(out)
            sub = prefix[i] if i < len(prefix) else items if isinstance(items, Mapping) else {}
            item = self.value(sub, depth + 1)
            if not schema.get("uniqueItems") or item not in out:
                out.append(item)
        return out

    def _number(self, schema: Mapping[str, Any], integer: bool) -> int | float:
        low, open_low = _limit(schema, "minimum", "exclusiveMinimum", max)
        high, open_high = _limit(schema, "maximum", "exclusiveMaximum", min)
        if low is None:
            low = high - 100 if high is not None else 0.0
        if high is None:
            high = low + 100
        low, high = max(low, -_INT_LIMIT), min(high, _INT_LIMIT)
        step = _bound(schema.get("multipleOf"))
        if integer or (step is not None and step > 0):
            unit = step if step is not None and step > 0 else 1.0
            if integer and unit != int(unit):
                unit = 1.0
            first = math.floor(low / unit) + 1 if open_low else math.ceil(low / unit)
            last = math.ceil(high / unit) - 1 if open_high else math.floor(high / unit)
            k = self.rng.randint(first, last) if first <= last else first
            if integer or unit == int(unit):
                return int(k * unit) if integer else k * unit
            return round(k * unit, 12)
        value = round(low + (high - low) * self.rng.random(), 2)
        above = value > low or (value == low and not open_low)
        below = value < high or (value == high and not open_high)
        if not (above and below):
            value = (low + high) / 2
        return value

    def _string(self, schema: Mapping[str, Any]) -> str:
        rng = self.rng
        fmt = schema.get("format")
        word = rng.choice(LOREM_WORDS)
        if fmt == "date-time":
            date = f"2025-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
            text = f"{date}T{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:00Z"
        elif fmt == "date":
            text = f"2025-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
        elif fmt == "time":
            text = f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:00"
        elif fmt == "email":
            text = f"{word}@example.com"
        elif fmt in ("uri", "url", "iri"):
            text = f"https://example.com/{word}"
        elif fmt == "hostname":
            text = f"{word}.example.com"
        elif fmt == "ipv4":
            text = f"192.0.2.{rng.randint(1, 254)}"
        elif fmt == "uuid":
            text = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        else:
            text = " ".join([word, *rng.choices(LOREM_WORDS, k=rng.randint(0, 2))])
        low, high = _count(schema.get("minLength")), schema.get("maxLength")
        if len(text) < low:
            text += "x" * (low - len(text))
        if isinstance(high, int) and high >= 0 and len(text) > high:
            text = text[:high]
        return text
