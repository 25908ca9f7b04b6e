"""Guided decoding's loop, on a scripted model whose wishes are known exactly."""

from __future__ import annotations

import json

from oxiserve.engine.guided import Sampling, TokenTable, decode
from oxiserve.engine.json_guide import JsonGuide

VOCAB = [
    "",
    "{",
    "}",
    "[",
    "]",
    '"',
    "a",
    ":",
    " ",
    ",",
    "1",
    "2",
    '"a',
    "x",
    "y",
    "é",
    "\ufffd",
    '{"a"',
]
EOS = 0
GREEDY = Sampling(0.0, 1.0, None)


class ScriptedModel:
    """A model that wants to write ``wish`` (then end): each step, the tokens that continue
    it score by their length; everything else scores 0 but ``fallback``, which scores 1.
    It tokenizes by longest match, as a BPE tokenizer would for these texts."""

    def __init__(self, wish: str, fallback: str = "x") -> None:
        self.wish, self.fallback = wish, VOCAB.index(fallback)
        self.fed: list[str] = []  # every forward_logits text after the prompt
        self.prompt = True

    def reset(self) -> None:
        self.fed = []
        self.prompt = True

    def tokenize(self, text: str) -> list[int]:
        out, i = [], 0
        while i < len(text):
            token = max((t for t in range(1, len(VOCAB)) if text.startswith(VOCAB[t], i)),
                        key=lambda t: len(VOCAB[t]), default=None)  # fmt: skip
            assert token is not None, text
            out.append(token)
            i += len(VOCAB[token])
        return out

    def decode_token(self, token: int) -> str:
        return VOCAB[token]

    def forward_logits(self, text: str) -> list[float]:
        if self.prompt:
            self.prompt = False
        else:
            self.fed.append(text)
        written = "".join(self.fed)
        rest = self.wish[len(written) :] if self.wish.startswith(written) else None
        scores = [0.0] * len(VOCAB)
        scores[self.fallback] = 1.0
        if rest == "":
            scores[EOS] = 50.0
        elif rest is not None:
            for t, piece in enumerate(VOCAB):
                if t and piece and rest.startswith(piece):
                    scores[t] = 10.0 + len(piece)
        return scores


Result = tuple[str, str, int, list[str]]  # text, finish reason, tokens, pieces emitted


def run(
    model: ScriptedModel,
    schema: object,
    *,
    max_tokens: int = 50,
    sampling: Sampling = GREEDY,
    cancel_after: int | None = None,
) -> Result:
    emitted: list[str] = []

    def cancelled() -> bool:
        return cancel_after is not None and len(emitted) >= cancel_after

    guide = JsonGuide(schema)  # type: ignore[arg-type]
    outcome = decode(model, TokenTable(model), "PROMPT", guide, sampling, max_tokens=max_tokens,
                     eog=frozenset({EOS}), emit=emitted.append, cancelled=cancelled)  # fmt: skip
    assert outcome.text == "".join(emitted)
    return outcome.text, outcome.finish_reason, outcome.completion_tokens(), emitted


OBJECT_A = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}


def test_the_models_own_answer_comes_out_when_it_is_valid() -> None:
    model = ScriptedModel('{"a": 12}')
    text, reason, tokens, pieces = run(model, OBJECT_A)
    assert (text, reason) == ('{"a": 12}', "eos")
    assert pieces == ['{"a":', " ", "1", "2", "}"]  # the key is written without asking
    assert model.fed == pieces[:-1]  # the last token needs no logits after it
    assert tokens == len(model.tokenize('{"a":')) + 4


def test_a_wish_the_schema_refuses_gives_way_to_the_best_valid_token() -> None:
    text, reason, _, _ = run(ScriptedModel('{"a": "no"}'), OBJECT_A)
    json.loads(text)  # the model wanted a string: it gets the best number it scores
    assert reason == "eos"
    assert text.startswith('{"a":')
    assert isinstance(json.loads(text)["a"], int)


def test_text_the_schema_fixes_costs_no_model_step() -> None:
    model = ScriptedModel("anything")
    text, reason, _, pieces = run(model, {"const": {"a": "é"}})
    assert (text, reason, pieces) == ('{"a": "é"}', "eos", ['{"a": "é"}'])
    assert model.fed == []  # nothing was asked of the model after the prompt


def test_the_model_ends_when_the_instance_may_end() -> None:
    text, reason, _, _ = run(ScriptedModel("12"), {"type": "integer"})
    assert (text, reason) == ("12", "eos")  # 12 could go on (120...): the model chose the end


def test_max_tokens_cuts_the_instance() -> None:
    text, reason, tokens, _ = run(ScriptedModel("[1, 2, 1]"), {"type": "array"}, max_tokens=3)
    assert (text, reason, tokens) == ("[1,", "max_tokens", 3)


def test_cancelling_stops_between_tokens() -> None:
    text, reason, _, pieces = run(ScriptedModel("[1, 2, 1]"), {"type": "array"}, cancel_after=2)
    assert reason == "cancelled"
    assert pieces == ["[", "1"]
    assert text == "[1"


def test_tokens_that_do_not_round_trip_are_never_offered() -> None:
    # The replacement character is part of a character, the empty token is special:
    # neither may be written, whatever it scores.
    model = ScriptedModel('"\ufffd"', fallback="y")
    text, reason, _, _ = run(model, {"type": "string", "maxLength": 3})
    assert "\ufffd" not in text
    assert reason == "eos"
    assert json.loads(text) == "yyy"  # the fallback until the string must end


def test_sampling_is_reproducible_for_a_seed_and_stays_valid() -> None:
    def sample(seed: int) -> str:
        model = ScriptedModel('{"a": 1}', fallback="2")
        return run(model, OBJECT_A, sampling=Sampling(5.0, 1.0, seed))[0]

    texts = [sample(seed) for seed in range(8)]
    assert texts == [sample(seed) for seed in range(8)]
    for text in texts:
        assert isinstance(json.loads(text)["a"], int)
    assert len(set(texts)) > 1  # a hot temperature does sample


def test_a_dead_end_is_not_a_complete_answer() -> None:
    # Only "a" may be written, yet two properties are asked for: no way to close the object.
    schema = {"type": "object", "properties": {"a": {"const": 1}}, "minProperties": 2}
    text, reason, _, _ = run(ScriptedModel('{"a": 1}'), schema)
    assert text.startswith('{"a":')
    assert reason == "max_tokens"  # reported as cut short, never as a finished answer
