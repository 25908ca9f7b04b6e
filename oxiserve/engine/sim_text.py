"""Text the simulator produces: its tokenizer, seeded lorem ipsum and logprobs (JSON: sim_json).

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
from itertools import chain
from random import Random
from typing import Protocol

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


class RandomBytes(Protocol):
    def randbytes(self, n: int, /) -> bytes: ...


def lorem_pieces(rng: RandomBytes, count: int, first: bool) -> list[str]:
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
