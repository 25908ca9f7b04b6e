"""The JSON-schema prefix automaton of guided decoding (no model: characters in, states out)."""

from __future__ import annotations

import json
import random
from enum import StrEnum
from typing import Any, Literal

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, Field

from oxiserve.engine.json_guide import MAX_STATES, JsonGuide, SchemaTooLarge, nested
from oxiserve.engine.sim_json import sample_json


class Colour(StrEnum):
    red = "red"
    green = "green"


class Address(BaseModel):
    street: str
    city: str = Field(min_length=2, max_length=12)
    zip_code: int | None = None


class Person(BaseModel):
    name: str
    age: int = Field(ge=0, le=130)
    height: float = Field(gt=0, lt=3)
    tags: list[str] = Field(max_length=3)
    address: Address
    colour: Colour
    mood: Literal["happy", "sad"] = "happy"
    scores: dict[str, int] = {}
    employed: bool


TREE = {
    "$defs": {
        "node": {
            "type": "object",
            "properties": {
                "v": {"type": "integer", "minimum": -5, "maximum": 5},
                "kids": {"type": "array", "items": {"$ref": "#/$defs/node"}, "maxItems": 2},
            },
            "required": ["v", "kids"],
            "additionalProperties": False,
        }
    },
    "$ref": "#/$defs/node",
}
STRICT = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "unit": {"type": ["string", "null"], "enum": ["c", "f", None]},
        "days": {"type": "integer", "exclusiveMinimum": 0, "exclusiveMaximum": 8},
        "step": {"type": "integer", "multipleOf": 5, "minimum": 0, "maximum": 50},
    },
    "required": ["city", "unit", "days", "step"],
    "additionalProperties": False,
}
SCHEMAS: dict[str, Any] = {
    "pydantic": Person.model_json_schema(),
    "tree": TREE,
    "strict": STRICT,
    "any object": {"type": "object"},
    "anything": {},
    "tuple": {
        "type": "array",
        "prefixItems": [{"type": "boolean"}, {"const": {"k": [1, "é"]}}, {"type": "null"}],
        "items": False,
        "minItems": 2,
    },
    "bounded array": {"type": "array", "items": {"type": "number"}, "minItems": 1, "maxItems": 3},
    "string lengths": {"type": "string", "minLength": 2, "maxLength": 4},
    "mixed enum": {"enum": [1, "one", [1], {"one": 1}, None, True, 1.5]},
    "union": {"anyOf": [{"type": "string"}, {"type": "integer", "minimum": 10}]},
    "all of": {
        "allOf": [
            {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]},
            {"properties": {"b": {"type": "boolean"}}, "required": ["b"]},
        ]
    },
    "free values": {
        "type": "object",
        "additionalProperties": {"type": "integer"},
        "maxProperties": 2,
    },
}
CHARS = sorted({*(chr(c) for c in range(0x20, 0x7F)), "é", "日", "\n"})
CLOSING = '"}]0123456789nft'  # what a walk prefers when it has gone on long enough


def walk(guide: JsonGuide, rng: random.Random, limit: int = 400) -> str | None:
    """A random instance, one allowed character at a time; None if it did not end in time.
    Every state on the way must have a way on (no dead end)."""
    states, out = guide.start(), list[str]()
    for step in range(limit):
        if guide.done(states) or (guide.accepts(states) and rng.random() < 0.2):
            return "".join(out)
        allowed = [c for c in CHARS if guide.feed(states, c)]
        assert allowed or guide.accepts(states), f"dead end after {''.join(out)!r}"
        if not allowed:
            return "".join(out)
        preferred = [c for c in CLOSING if c in allowed] if step > 60 else []
        char = preferred[0] if preferred else rng.choice(allowed)
        out.append(char)
        states = guide.feed(states, char)
    return None


def exponents(value: Any) -> bool:
    if isinstance(value, float):
        return "e" in repr(value)
    if isinstance(value, dict):
        return any(exponents(v) for v in value.values())
    if isinstance(value, list):
        return any(exponents(v) for v in value)
    return False


def validate(instance: Any, schema: Any) -> None:
    jsonschema.Draft202012Validator(schema).validate(instance)


@pytest.mark.parametrize("name", SCHEMAS)
@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32))
def test_every_text_the_guide_lets_through_is_a_valid_instance(name: str, seed: int) -> None:
    schema = SCHEMAS[name]
    text = walk(JsonGuide(schema), random.Random(seed))
    if text is not None:
        validate(json.loads(text), schema)


@pytest.mark.parametrize("name", [n for n in SCHEMAS if n not in ("tuple", "mixed enum")])
@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32))
def test_instances_written_tersely_in_schema_order_are_accepted(name: str, seed: int) -> None:
    schema = SCHEMAS[name]
    value = sample_json(schema, random.Random(seed))
    text = json.dumps(value, ensure_ascii=False, separators=(", ", ": "))
    if exponents(value):
        return  # the guide writes plain decimals only
    guide = JsonGuide(schema)
    states = guide.feed(guide.start(), text)
    assert guide.accepts(states), text
    compact = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    assert guide.accepts(guide.feed(guide.start(), compact)), compact


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32), cuts=st.lists(st.integers(0, 200), max_size=6))
def test_feeding_in_pieces_is_feeding_whole(seed: int, cuts: list[int]) -> None:
    guide = JsonGuide(SCHEMAS["pydantic"])
    text = walk(guide, random.Random(seed))
    if text is None:
        return
    whole = guide.feed(guide.start(), text)
    states = guide.start()
    start = 0
    for cut in [*sorted({min(c, len(text)) for c in cuts}), len(text)]:
        states = guide.feed(states, text[start:cut])
        start = cut
    assert states == whole


def accepted(guide: JsonGuide, text: str) -> bool:
    return guide.accepts(guide.feed(guide.start(), text))


def alive(guide: JsonGuide, text: str) -> bool:
    return bool(guide.feed(guide.start(), text))


def test_keys_come_in_schema_order_and_required_ones_are_never_skipped() -> None:
    guide = JsonGuide(
        {
            "type": "object",
            "properties": {"a": {}, "b": {"type": "integer"}, "c": {}},
            "required": ["b"],
        }
    )
    assert accepted(guide, '{"b": 1}')
    assert accepted(guide, '{"a": 1, "b": 2, "c": 3}')
    assert not alive(guide, '{"c"')  # skips the required b
    assert not alive(guide, '{"b": 1, "a"')  # a after b: out of order
    assert not alive(guide, '{"a": 1}')  # b is missing: the object cannot close
    assert not alive(guide, '{"b": 1, "d"')  # not declared
    assert alive(guide, '{"a": 1, "b"')


def test_whitespace_only_after_colon_and_comma_once() -> None:
    guide = JsonGuide({"type": "array", "items": {"type": "integer"}})
    assert accepted(guide, "[1, 2,3]")
    for text in ["[ ", "[1 ", "[1,  ", " [", "[1]\n"]:
        assert not alive(guide, text), text


def test_numbers_are_plain_and_bounds_prune_digits_no_completion_could_repair() -> None:
    guide = JsonGuide({"type": "integer", "minimum": 5, "maximum": 70})
    assert alive(guide, "1")
    assert not accepted(guide, "1")
    assert not alive(guide, "0")  # a leading 0 is the whole number, and too small
    assert accepted(guide, "70")
    assert not alive(guide, "71")
    sevens = JsonGuide({"type": "integer", "multipleOf": 7, "maximum": 12, "minimum": 0})
    assert not alive(sevens, "1")  # 1 and 10 to 12 hold no multiple of 7
    assert accepted(sevens, "7")
    assert accepted(sevens, "0")
    assert not alive(guide, "-")
    assert not alive(guide, "6.")  # an integer has no fraction
    assert not alive(guide, "06")
    floats = JsonGuide({"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1})
    assert not accepted(floats, "0")
    assert accepted(floats, "0.5")
    assert not alive(floats, "1.")
    assert not alive(floats, "0.5e")  # no exponents
    assert not alive(JsonGuide({"type": "number"}), "1" * 17)  # at most 16 integer digits


def test_strings_count_characters_and_escapes() -> None:
    guide = JsonGuide({"type": "string", "minLength": 2, "maxLength": 3})
    assert not accepted(guide, '"a"')
    assert accepted(guide, '"ab"')
    assert accepted(guide, '"\\u00e9b\\n"')
    assert not alive(guide, '"abcd')
    assert not alive(guide, '"a\nb"')  # a raw control character
    assert not alive(guide, '"\\x')
    assert accepted(guide, '"日本"')


def test_forced_text_is_what_every_continuation_starts_with() -> None:
    guide = JsonGuide(
        {
            "type": "object",
            "properties": {"name": {"const": "get_weather"}, "arguments": {"type": "object"}},
            "required": ["name", "arguments"],
        }
    )
    forced = guide.forced(guide.start())
    assert forced == '{"name":'
    states = guide.feed(guide.start(), forced + " ")
    assert guide.forced(states) == '"get_weather",'
    assert guide.forced(guide.feed(guide.start(), '{"name": "get_weather", ')) == '"arguments":'
    inside = guide.feed(guide.start(), '{"name": "get_weather", "arguments": {"q": "x')
    assert guide.forced(inside) == ""  # a free string: the model writes it
    accents = JsonGuide({"enum": ["é1", "é2"]})
    assert accents.forced(accents.start()) == '"é'  # literal characters are tried too


def test_a_complete_instance_takes_nothing_more() -> None:
    guide = JsonGuide({"type": "object"})
    states = guide.feed(guide.start(), "{}")
    assert guide.done(states)
    assert guide.accepts(states)
    assert not guide.feed(states, " ")
    number = JsonGuide({"type": "integer"})
    states = number.feed(number.start(), "4")
    assert number.accepts(states)
    assert not number.done(states)


def test_self_referencing_schemas_end() -> None:
    loop = JsonGuide({"anyOf": [{"$ref": "#"}]})  # no finite meaning: the guide gives up
    assert accepted(loop, '{"a": [1]}')  # on constraining it (anything goes) and ends
    within = JsonGuide({"allOf": [{"$ref": "#"}], "type": "integer"})
    assert accepted(within, "3")


def test_a_schema_of_unbounded_size_is_refused() -> None:
    wide = {"type": "object", "properties": {f"p{i}": {"type": "object"} for i in range(30_000)}}
    with pytest.raises(SchemaTooLarge):
        JsonGuide(wide)


def test_a_nested_schema_keeps_its_references() -> None:
    inner = {"$defs": {"n": {"type": "integer"}}, "type": "array", "items": {"$ref": "#/$defs/n"}}
    x = nested(inner, "/anyOf/1/properties/x")
    outer = {"anyOf": [{"type": "null"}, {"properties": {"x": x}, "required": ["x"]}]}
    guide = JsonGuide(outer)
    assert accepted(guide, '{"x": [1, 2]}')
    assert not alive(guide, '{"x": ["')


def test_the_schema_false_and_a_false_property() -> None:
    assert not JsonGuide(False).start()
    guide = JsonGuide({"type": "object", "properties": {"a": False, "b": {"type": "null"}}})
    assert accepted(guide, '{"b": null}')
    assert not alive(guide, '{"a"')


def test_look_alike_unions_stay_bounded() -> None:
    twin = {"type": "array", "items": {"$ref": "#"}}
    guide = JsonGuide({"anyOf": [twin, dict(twin)]})  # each "[" would double the states
    states = guide.feed(guide.start(), "[" * 40)
    assert 0 < len(states) <= MAX_STATES
    assert guide.accepts(guide.feed(states, "]" * 40))  # and what is kept is still valid


def test_all_of_a_property_in_two_parts_must_satisfy_both() -> None:
    guide = JsonGuide(
        {
            "allOf": [
                {"properties": {"a": {"type": "integer"}}, "required": ["a"]},
                {"properties": {"a": {"minimum": 0}}, "type": ["object", "null"]},
            ],
            "type": "object",
        }
    )
    assert accepted(guide, '{"a": 2}')
    assert not accepted(guide, '{"a": 1.5}')  # the first part's type
    assert not accepted(guide, '{"a": -1}')  # the second part's bound
    assert not accepted(guide, "null")  # object and [object, null]: only object
