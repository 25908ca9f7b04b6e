"""Tool-call parsing: every format open models write, exactly; what is not a call stays text;
arbitrary text never breaks the parser."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from oxiserve.engine.base import ToolCall, ToolSpec
from oxiserve.engine.tool_parse import (
    CallWatch,
    call_prefix_markers,
    parse_tool_calls,
    rest_to_send,
)

TOOLS = (ToolSpec("get_weather"), ToolSpec("now"))
PARIS = ("get_weather", '{"city":"Paris"}')


def pairs(calls: list[ToolCall]) -> list[tuple[str, str]]:
    return [(call.name, call.arguments) for call in calls]


@pytest.mark.parametrize(
    ("text", "rest", "expected"),
    [
        pytest.param(
            '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>',
            "",
            [PARIS],
            id="hermes",
        ),
        pytest.param(
            'Let me check.\n<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}'
            '</tool_call>\n<tool_call>{"name": "now", "arguments": {}}</tool_call>\nOne moment.',
            "Let me check.\n\n\nOne moment.",
            [PARIS, ("now", "{}")],
            id="hermes-several-with-text",
        ),
        pytest.param(
            '<tool_call>{"name": "now", "arguments": {"tz": "UTC"}}',
            "",
            [("now", '{"tz":"UTC"}')],
            id="hermes-unclosed-at-the-end",
        ),
        pytest.param(
            '<tool_call>{"name": "now"}</tool_call>', "", [("now", "{}")], id="hermes-no-arguments"
        ),
        pytest.param(
            '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"}}<|eom_id|>',
            "",
            [PARIS],
            id="llama31",
        ),
        pytest.param(
            'Checking.<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"}}; '
            '{"name": "now", "parameters": {}}',
            "Checking.",
            [PARIS, ("now", "{}")],
            id="llama31-several",
        ),
        pytest.param(
            '{"name": "get_weather", "parameters": {"city": "Paris"}}', "", [PARIS], id="bare"
        ),
        pytest.param(
            '\n```json\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n```\n',
            "",
            [PARIS],
            id="bare-fenced",
        ),
        pytest.param(
            '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris"}}, '
            '{"name": "now", "arguments": {}}]</s>',
            "",
            [PARIS, ("now", "{}")],
            id="mistral",
        ),
        pytest.param(
            'Sure. [TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}[TOOL_CALLS]now[ARGS]{}',
            "Sure.",
            [PARIS, ("now", "{}")],
            id="mistral-args-form",
        ),
        pytest.param(
            ' [{"name": "get_weather", "arguments": {"city": "Paris"}}, '
            '{"name": "now", "parameters": {}}] ',
            "",
            [PARIS, ("now", "{}")],
            id="json-list",
        ),
        pytest.param(
            '<tool_call>{"name": "get_weather", "arguments": "{\\"city\\": \\"Paris\\"}"}'
            "</tool_call>",
            "",
            [PARIS],
            id="arguments-as-a-json-string",
        ),
        pytest.param(
            '{"name": "get_weather", "arguments": {"city": "Zürich", "days": [1, 2.5]}}',
            "",
            [("get_weather", '{"city":"Zürich","days":[1,2.5]}')],
            id="compact-and-not-ascii-escaped",
        ),
    ],
)
def test_formats_are_parsed_exactly(text: str, rest: str, expected: list[tuple[str, str]]) -> None:
    left, calls = parse_tool_calls(text, TOOLS)
    assert (left, pairs(calls)) == (rest, expected)


@pytest.mark.parametrize(
    "text",
    [
        pytest.param('<tool_call>{"name": "delete_all", "arguments": {}}</tool_call>', id="hermes"),
        pytest.param('<|python_tag|>{"name": "delete_all", "parameters": {}}', id="llama31"),
        pytest.param('{"name": "delete_all", "arguments": {}}', id="bare"),
        pytest.param('[TOOL_CALLS] [{"name": "delete_all", "arguments": {}}]', id="mistral"),
        pytest.param('[TOOL_CALLS]delete_all[ARGS]{"x": 1}', id="mistral-args-form"),
        pytest.param(
            '[{"name": "now", "arguments": {}}, {"name": "delete_all", "arguments": {}}]',
            id="list-with-one-unknown",
        ),
    ],
)
def test_unknown_names_stay_text(text: str) -> None:
    assert parse_tool_calls(text, TOOLS) == (text, [])


@pytest.mark.parametrize(
    "text",
    [
        pytest.param('<tool_call>{"name": "now", "arguments": {</tool_call>', id="broken-json"),
        pytest.param('<tool_call>{"name": "now", "arguments": "{oops"}</tool_call>', id="str-args"),
        pytest.param('<tool_call>{"name": "now", "arguments": [1]}</tool_call>', id="list-args"),
        pytest.param('<tool_call>{"name": "now", "arguments": {"a": NaN}}</tool_call>', id="nan"),
        pytest.param('<tool_call>{"name": "now"} trailing</tool_call>', id="trailing-text"),
        pytest.param("<|python_tag|>brave_search.call(query='x')", id="llama-builtin-tool"),
        pytest.param('[TOOL_CALLS] [{"name": "now", "arguments": {}', id="mistral-cut-off"),
        pytest.param('{"name": "now"}', id="bare-object-without-arguments"),
        pytest.param('The call is {"name": "now", "arguments": {}}', id="json-not-whole-output"),
        pytest.param('{"name": "now", "arguments": {}} done', id="json-then-text"),
        pytest.param("[]", id="empty-list"),
        pytest.param('{"city": "Paris"}', id="unrelated-json"),
    ],
)
def test_what_is_not_a_valid_call_stays_text(text: str) -> None:
    assert parse_tool_calls(text, TOOLS) == (text, [])


def test_only_the_valid_block_of_several_is_taken_out() -> None:
    text = (
        '<tool_call>{"name": "nope", "arguments": {}}</tool_call>'
        '<tool_call>{"name": "now", "arguments": {}}</tool_call>'
    )
    left, calls = parse_tool_calls(text, TOOLS)
    assert left == '<tool_call>{"name": "nope", "arguments": {}}</tool_call>'
    assert pairs(calls) == [("now", "{}")]


def test_json_after_llama_calls_that_is_no_call_stays_text() -> None:
    text = '<|python_tag|>{"name": "now", "parameters": {}} [1, 2]'
    left, calls = parse_tool_calls(text, TOOLS)
    assert (left, pairs(calls)) == ("[1, 2]", [("now", "{}")])


def test_without_tools_nothing_is_a_call() -> None:
    text = '<tool_call>{"name": "now", "arguments": {}}</tool_call>'
    assert parse_tool_calls(text, ()) == (text, [])


def test_call_ids_are_call_and_24_random_hex_digits() -> None:
    text = '[{"name": "now", "arguments": {}}, {"name": "now", "arguments": {}}]'
    _, calls = parse_tool_calls(text, TOOLS)
    _, again = parse_tool_calls(text, TOOLS)
    ids = [call.id for call in calls + again]
    assert all(re.fullmatch(r"call_[0-9a-f]{24}", id_) for id_ in ids)
    assert len(set(ids)) == 4


def test_markers_cover_the_start_of_every_format() -> None:
    markers = call_prefix_markers()
    assert set(markers) >= {"<tool_call>", "<|python_tag|>", "[TOOL_CALLS]", "{", "["}
    starts = [
        '<tool_call>{"name": "now", "arguments": {}}</tool_call>',
        '<|python_tag|>{"name": "now", "parameters": {}}',
        '[TOOL_CALLS] [{"name": "now", "arguments": {}}]',
        '{"name": "now", "arguments": {}}',
        '[{"name": "now", "arguments": {}}]',
        '```json\n{"name": "now", "arguments": {}}\n```',
    ]
    for text in starts:
        assert parse_tool_calls(text, TOOLS)[1], text
        assert text.startswith(markers), text


PIECES = ["<tool_call>", "</tool_call>", "<|python_tag|>", "[TOOL_CALLS]", "[ARGS]", "```"]
PIECES += ["{", "}", "[", "]", '"name"', '"now"', '"arguments"', ":", ",", ";", "NaN", '"', "\\"]
MARKER_PIECES = st.sampled_from([*PIECES, " ", "\n"])


@given(st.lists(st.one_of(st.text(max_size=8), MARKER_PIECES), max_size=40))
def test_arbitrary_text_never_raises(pieces: list[str]) -> None:
    text = "".join(pieces)
    left, calls = parse_tool_calls(text, TOOLS)
    assert isinstance(left, str)
    for call in calls:
        assert call.name in {"get_weather", "now"}
        assert isinstance(json.loads(call.arguments), dict)
    if not calls:
        assert left == text


NO_MARKERS = ("{", "[", "<tool_call>", "<|python_tag|>")


@given(st.text().filter(lambda t: not any(mark in t for mark in NO_MARKERS)))
def test_text_without_markers_comes_back_unchanged(text: str) -> None:
    assert parse_tool_calls(text, TOOLS) == (text, [])


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)


@given(
    st.lists(
        st.tuples(st.sampled_from(["get_weather", "now"]), st.dictionaries(st.text(), JSON_VALUES)),
        min_size=1,
        max_size=3,
    )
)
def test_hermes_calls_round_trip(calls: list[tuple[str, dict[str, object]]]) -> None:
    text = "".join(
        f"<tool_call>{json.dumps({'name': name, 'arguments': args})}</tool_call>"
        for name, args in calls
    )
    left, found = parse_tool_calls(text, TOOLS)
    assert left == ""
    assert [(c.name, json.loads(c.arguments)) for c in found] == calls


def watched(pieces: list[str]) -> tuple[list[str], CallWatch]:
    watch = CallWatch()
    return [watch.feed(piece) for piece in pieces], watch


@given(st.lists(st.one_of(st.text(max_size=8), MARKER_PIECES), max_size=40))
def test_a_watched_stream_sends_a_prefix_and_then_the_rest_exactly(pieces: list[str]) -> None:
    text = "".join(pieces)
    sent, watch = watched(pieces)
    assert "".join(sent) == text[: watch.released]  # always a prefix of the output
    tail, calls = rest_to_send(text, watch.released, TOOLS)
    _, expected = parse_tool_calls(text, TOOLS)
    assert [(c.name, c.arguments) for c in calls] == [(c.name, c.arguments) for c in expected]
    if not calls:  # streamed or not, the same content
        assert "".join(sent) + tail == text
    for marker in ("<tool_call>", "<|python_tag|>", "[TOOL_CALLS]"):
        assert marker not in "".join(sent)  # a call's text is never sent as content


@pytest.mark.parametrize(
    ("pieces", "sent"),
    [
        (["Hel", "lo", " there", "."], ["Hel", "lo", " there", "."]),  # prose: as it comes
        (["  ", "Hi"], ["", "  Hi"]),  # leading space waits for the first word
        (["Sure", ". <tool", "_call>{", '"name"'], ["Sure", ". ", "", ""]),
        (["Sure <", "b>"], ["Sure ", "<b>"]),  # a tail like a marker waits, then goes
        (['{"', "name"], ["", ""]),  # a whole-JSON call may be coming: all waits
        (["{ not", " json"], ["{ not", " json"]),
        (["[1] ", "first"], ["[1] ", "first"]),
        (["[", "TOOL_CALLS]"], ["", ""]),
        (["```py", "thon\nprint", "(1)"], ["", "```python\nprint", "(1)"]),  # code streams
        (["```json\n", '{"name"'], ["", ""]),  # a fenced call waits
    ],
)
def test_what_a_watched_stream_lets_through(pieces: list[str], sent: list[str]) -> None:
    assert watched(pieces)[0] == sent


def test_the_rest_of_a_stream_with_a_call_after_text() -> None:
    text = 'Sure. <tool_call>{"name": "now", "arguments": {}}</tool_call>'
    sent, watch = watched(list(text))
    assert "".join(sent) == "Sure. "
    tail, calls = rest_to_send(text, watch.released, TOOLS)
    assert tail == ""
    assert [c.name for c in calls] == ["now"]


def test_text_around_a_call_with_leading_space_is_not_lost() -> None:
    pieces = [" Sure. ", '<tool_call>{"name": "now", "arguments": {}}</tool_call>', " Done."]
    sent, watch = watched(pieces)
    assert "".join(sent) == " Sure. "
    tail, calls = rest_to_send("".join(pieces), watch.released, TOOLS)
    assert [c.name for c in calls] == ["now"]
    assert tail.strip() == "Done."
