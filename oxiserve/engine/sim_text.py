"""Text the simulator produces: its tokenizer, seeded lorem ipsum, logprobs and tool arguments.

Benchmark clients recount a server's output with their own tokenizer (usually OpenAI's
``cl100k_base``) to compute inter-token latency, so a simulated token is what a BPE
tokenizer would make of the text.  ``split_pieces`` is a pure-Python approximation of
cl100k: first its pre-tokenizer (contractions, a letter run with one leading non-letter,
digits in threes, punctuation runs, whitespace runs; the leading space sticks to the
word), then the cuts BPE tends to make inside those pieces, by length and script:

* an ASCII letter run is one piece up to 12 letters after a space, 6 with nothing
  before it and 5 after a symbol (``"word``, ``.append``); the rest goes 3 letters a
  piece.  In text with more than one accented Latin letter in 250 characters (French,
  German, Spanish...) the limits are 7, 5 and 4, since cl100k's mostly English
  vocabulary cuts those languages' words more often;
* a run of accented Latin letters is a piece of its own; Cyrillic goes 3 letters, then
  2 a piece; every other letter (Greek, Arabic, Hebrew, Indic, Thai, CJK, Hangul...),
  mark and non-ASCII symbol (emoji) is a piece by itself;
* ASCII punctuation runs are cut every 3 characters.

On English prose, code, JSON and numbers the count is within a few percent of cl100k's,
on European languages within about 10-15% (tests/test_sim_tokens.py measures it).  A piece
is never less than a character, so text that cl100k spends more than one token a character
on (much of CJK, Indic scripts, emoji) is undercounted.  Whatever the text, ``"".join`` of
the pieces is the text, no piece is empty and ``count_tokens`` is their number.

Lorem text is made of pieces that are each one cl100k token (``oxiserve.engine.sim_vocab``,
generated with tiktoken by ``scripts/lorem_tokens.py``), so for lorem output cl100k's count
is exactly the usage.
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Callable, Mapping
from itertools import chain
from random import Random
from typing import Any

from oxiserve.engine import sim_vocab
from oxiserve.engine.base import TokenLogprob, TopLogprob

# --- the tokenizer --------------------------------------------------------------------------

_ACCENTED = "\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u024f\u1e00-\u1eff"  # Latin letters with marks
_CYRILLIC = "\u0400-\u0481\u048a-\u052f"  # its letters, not its marks
_PUNCT = r"!-/:-@\[-`{-~"  # ASCII punctuation and symbols, "_" included
_FOREIGN_SHARE = 250  # one accented letter in this many characters: not English


def _pattern(space: int, bare: int, after_symbol: int, rest: int) -> re.Pattern[str]:
    r"""The pieces regex for these ASCII word limits (see the module docstring).

    It is cl100k's pre-tokenizer with the cuts added, its branches reordered so that
    common pieces are tried first (a branch that starts like an earlier one stays after
    it, so the pieces are the same).  ``[^\W\d_]`` is a letter: stdlib ``re`` has no
    ``\p{L}``.
    """
    word = rf"(?:[A-Za-z]{{1,{after_symbol}}}|[{_ACCENTED}]+|[{_CYRILLIC}]{{1,3}})"
    punct = rf"[{_PUNCT}]{{1,3}}[\r\n]*"
    return re.compile(
        "|".join(
            (
                # a space and what follows it: a word, a letter, punctuation or a symbol
                rf" (?:[A-Za-z]{{1,{space}}}|[{_ACCENTED}]+|[{_CYRILLIC}]{{1,3}}|[^\W\d_]"
                rf"|{punct}|[^\s\w])",
                r"'(?i:s|t|re|ve|m|ll|d)",  # contractions, before "'" can lead a word
                # a symbol leads a word, unless it ends a run of them (cl100k's run took it)
                rf"(?<![^\s\w]|_)(?:[^\s\w]|_){word}",
                rf"(?<![^\s\w]|_)[{_PUNCT}][^\W\d_]",
                punct,
                r"[^\s\w]",
                rf"[^\S\r\n ]{word}",  # a tab or other blank leads a word too
                r"(?:[^\S\r\n]*[\r\n])+",  # cl100k's \s*[\r\n]+ without its backtracking
                r"\s+(?!\S)",  # leaves a blank for the word after it
                r"\s+",
                rf"[A-Za-z](?<=[A-Za-z]{{2}})[A-Za-z]{{0,{rest - 1}}}",  # a long word goes on
                rf"[A-Za-z]{{1,{bare}}}",
                r"\d{1,3}",
                rf"[{_ACCENTED}]+",
                rf"[{_CYRILLIC}](?<=[{_CYRILLIC}]{{2}})[{_CYRILLIC}]?",
                rf"[{_CYRILLIC}]{{1,3}}",
                r"[^\W\d_]",
            )
        )
    )


_ENGLISH = _pattern(space=12, bare=6, after_symbol=5, rest=3)
_OTHER_LATIN = _pattern(space=7, bare=5, after_symbol=4, rest=3)
_ACCENTED_LETTER = re.compile(f"[{_ACCENTED}]")


def _pieces_pattern(text: str) -> re.Pattern[str]:
    """The English limits, or the shorter ones for text with many accented Latin letters.

    ``isascii`` settles most text at C speed; otherwise counting accented letters is one
    more regex pass, far cheaper than the pieces (it matches only those letters).
    """
    if text.isascii():
        return _ENGLISH
    accented = len(_ACCENTED_LETTER.findall(text))
    return _OTHER_LATIN if accented * _FOREIGN_SHARE > len(text) else _ENGLISH


def split_pieces(text: str) -> list[str]:
    """Split ``text`` into the simulator's tokens; ``"".join`` of the result is ``text``.

    >>> split_pieces("Hello! This is oxiserve's answer.")
    ['Hello', '!', ' This', ' is', ' oxiserve', "'s", ' answer', '.']
    """
    return _pieces_pattern(text).findall(text)


def count_tokens(text: str) -> int:
    """``len(split_pieces(text))`` without making the pieces: ``subn`` with an empty
    replacement counts matches and creates no object per match."""
    return _pieces_pattern(text).subn("", text)[1]


# --- lorem ipsum ----------------------------------------------------------------------------

LOREM_WORDS = sim_vocab.WORDS

# A random byte picks two pieces: a word, "." or "," and then a word (a capitalized one
# after "."), so punctuation is its own token, never follows punctuation and is always
# followed by a word.  A chunk is then one randbytes() call for half its length and a
# table lookup per pair.  About one piece in sixteen is a "." and one in sixteen a ",".
_SPACED = tuple(" " + word for word in LOREM_WORDS)
_STARTS = tuple(" " + word for word in sim_vocab.SENTENCE_STARTS)


def _pair(i: int) -> tuple[str, str]:
    second = _SPACED[(5 * i + i // len(_SPACED)) % len(_SPACED)]
    if i % 8 == 7:
        return ".", _STARTS[i // 8 % len(_STARTS)]
    if i % 8 == 3:
        return ",", second
    return _SPACED[i % len(_SPACED)], second


_PAIRS = tuple(_pair(i) for i in range(256))
_WORD_OF = tuple(_SPACED[i % len(_SPACED)] for i in range(256))
_TEXT_START = tuple(sim_vocab.TEXT_STARTS[i % len(sim_vocab.TEXT_STARTS)] for i in range(256))
_PUNCTUATION = frozenset(".,")
_flatten = chain.from_iterable

_ALTERNATIVES = _SPACED
_RING_SPACED = _ALTERNATIVES * 2  # a window of it wraps around the word list
_RING_BARE = tuple(word[1:] for word in _RING_SPACED)
_HALVING = tuple(math.log(0.75 / 2**j) for j in range(len(_ALTERNATIVES) + 1))


def lorem_pieces(rng: Random, count: int, first: bool) -> list[str]:
    """``count`` seeded lorem tokens; the first token of a text is capitalized, without space.

    A chunk never ends with punctuation, so the next chunk (which cannot know) may start
    with any pair.
    """
    raw = rng.randbytes((count + 1) // 2)
    pieces = list(_flatten(map(_PAIRS.__getitem__, raw)))
    if count & 1:
        del pieces[-1]
        if pieces[-1] in _PUNCTUATION:
            pieces[-1] = _WORD_OF[raw[-1]]
    if first and pieces:
        pieces[0] = _TEXT_START[raw[0]]
        if count > 1:
            pieces[1] = _WORD_OF[raw[0]]  # not a sentence start after the first word
    return pieces


def token_logprob(token: str, rng: Random, top_n: int) -> TokenLogprob:
    """Plausible log-probabilities for ``token``: in [-3, 0), ``top_n`` entries led by the token.

    The alternatives are consecutive lorem words from a seeded start; they share what
    probability the token leaves, about halving each time, so the entries are strictly
    decreasing and their probabilities sum to less than 1.
    """
    logprob = -3.0 * (1.0 - rng.random()) ** 2
    if top_n <= 0:
        return TokenLogprob(token, logprob)
    spread = rng.random()
    share = math.log(min(math.exp(logprob), -math.expm1(logprob))) - 0.25 * spread
    ring = _RING_SPACED if token.startswith(" ") else _RING_BARE
    start = int(spread * len(_ALTERNATIVES))
    top = [TopLogprob(token, logprob)]
    for word in ring[start : start + top_n]:  # holds the token at most once
        if len(top) == top_n:
            break
        if word != token:
            top.append(TopLogprob(word, share + _HALVING[len(top)]))
    return TokenLogprob(token, logprob, tuple(top))


# --- tool-call arguments --------------------------------------------------------------------

_MAX_DEPTH = 8  # deeper than this, objects get only required members and arrays minItems
_GIVE_UP_DEPTH = 64  # a schema that requires itself has no finite instance; stop somewhere
_INT_LIMIT = 2**53 - 1  # keeps integers exact in every JSON parser
_NODE_BUDGET = 5000  # values generated per schema: a self-requiring schema must not explode
_MAX_COUNT = 512  # largest minItems / minProperties / minLength the sampler will honour


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


def _merge(outer: Mapping[str, Any], inner: Mapping[str, Any]) -> dict[str, Any]:
    """``inner`` applied on top of ``outer``, uniting their properties and required lists."""
    merged = {**outer, **inner}
    props = {**(outer.get("properties") or {}), **(inner.get("properties") or {})}
    if props:
        merged["properties"] = props
    required = [*(outer.get("required") or ()), *(inner.get("required") or ())]
    if required:
        merged["required"] = list(dict.fromkeys(required))
    return merged


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

    def value(self, schema: object, depth: int) -> Any:
        self.budget -= 1
        if self.budget < 0:
            raise SchemaTooLarge(f"the schema needs more than {_NODE_BUDGET} values")
        if not isinstance(schema, Mapping) or depth > _GIVE_UP_DEPTH:
            return self.rng.choice(LOREM_WORDS)
        resolved = self._resolve(schema.get("$ref"))
        if resolved is not None:
            return self.value(resolved, depth + 1)
        if "const" in schema:
            return schema["const"]
        enum = schema.get("enum")
        if isinstance(enum, list) and enum:
            return self.rng.choice(enum)
        for key in ("allOf", "anyOf", "oneOf"):
            branches = [b for b in schema.get(key) or () if isinstance(b, Mapping)]
            if branches:
                rest = {k: v for k, v in schema.items() if k != key}
                if key == "allOf":
                    for branch in branches:
                        rest = _merge(rest, branch)
                    return self.value(rest, depth + 1)
                usable = [b for b in branches if b.get("type") != "null"] or branches
                return self.value(_merge(rest, usable[0]), depth + 1)
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
