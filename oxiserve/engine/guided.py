"""Guided decoding on an oxillama engine: a real model made to write JSON valid for a schema.

oxillama has no grammar hook, but ``forward_logits(text)`` continues the KV cache (reset, then
``forward_logits(a)`` and ``forward_logits(b)`` give exactly the logits of ``a + b``), so a
decoder of our own steps the model one token at a time: at each step it offers the best
tokens in order and takes the first whose text :class:`~oxiserve.engine.json_guide.JsonGuide`
lets through, and text the schema fixes (keys, ``": "``) is written without asking the model
(jump-forward decoding).  A token is offered only if its text tokenizes back to itself, so
feeding the text is feeding the token.  Everything here runs on the engine's own thread.

    table = TokenTable(engine)                       # once per engine
    outcome = decode(engine, table, prompt, guide, Sampling(0.0, 1.0, None), max_tokens=256,
                     eog=frozenset(engine.eog_token_ids()), cancelled=token.is_cancelled,
                     emit=pieces.append)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from oxiserve.engine.json_guide import JsonGuide, States

TOP_K = 64  # candidates looked at in the model's order before a wider search
WIDE_K = 4096  # the wider search: past it, nothing valid is likely to be wanted


@dataclass(frozen=True, slots=True)
class Sampling:
    temperature: float
    top_p: float
    seed: int | None


@dataclass(frozen=True, slots=True)
class Outcome:
    """What ``generate_detailed`` returns, as far as the server reads it."""

    text: str
    finish_reason: str  # "eos" (the instance is complete), "max_tokens", "cancelled"
    prompt_tokens: int
    generated: int

    def completion_tokens(self) -> int:
        return self.generated


class TokenTable:
    """The text each token writes, for the tokens that can be fed back as text."""

    def __init__(self, engine: Any) -> None:
        self._engine = engine
        self._texts: dict[int, str | None] = {}

    def text(self, token: int) -> str | None:
        """None: the token writes nothing, part of a character, or text that tokenizes to
        something else (special tokens among them)."""
        try:
            return self._texts[token]
        except KeyError:
            pass
        engine = self._engine
        text: str | None = engine.decode_token(token)
        if not text or "\ufffd" in text or list(engine.tokenize(text)) != [token]:
            text = None
        self._texts[token] = text
        return text


def decode(
    engine: Any,
    table: TokenTable,
    prompt: str,
    guide: JsonGuide,
    sampling: Sampling,
    *,
    max_tokens: int,
    eog: frozenset[int],
    cancelled: Callable[[], bool],
    emit: Callable[[str], None],
    prompt_tokens: int = 0,
) -> Outcome:
    """Generate an instance of ``guide``'s schema after ``prompt`` (the KV cache is reset)."""
    import numpy as np

    rng = np.random.default_rng(sampling.seed)
    engine.reset()
    logits = engine.forward_logits(prompt)
    states, pieces, made = guide.start(), list[str](), 0

    def finish(reason: str) -> Outcome:
        return Outcome("".join(pieces), reason, prompt_tokens, made)

    while True:
        if cancelled():
            return finish("cancelled")
        if guide.done(states):
            return finish("eos")
        if made >= max_tokens:
            return finish("max_tokens")
        forced = guide.forced(states)
        if forced:
            count = len(engine.tokenize(forced))
            if made + count > max_tokens:
                return finish("max_tokens")
            states, made = guide.feed(states, forced), made + count
        else:
            chosen = _choose(np.asarray(logits, dtype=np.float32), states, guide, table, eog,
                             sampling, rng, cancelled)  # fmt: skip
            if chosen is None:  # the model ended a complete instance, or no token goes on
                return finish("eos" if guide.accepts(states) else "max_tokens")
            forced, states, made = chosen[1], chosen[2], made + 1
        pieces.append(forced)
        emit(forced)
        if not guide.done(states):
            logits = engine.forward_logits(forced)


Choice = tuple[int, str, States]  # a token, its text, the guide's states after it
END = "end"  # the model ends the generation here (the instance is complete)


def _choose(
    scores: Any,
    states: States,
    guide: JsonGuide,
    table: TokenTable,
    eog: frozenset[int],
    sampling: Sampling,
    rng: Any,
    cancelled: Callable[[], bool] = lambda: False,
) -> Choice | None:
    """The token to write: sampled among the best ones the guide allows (greedy at
    temperature 0), with its text and the states after it; None to end here."""
    import numpy as np

    ending = guide.accepts(states)

    def way(token: int) -> Choice | str | None:
        """The choice of ``token``, END, or None: the guide refuses it."""
        if token in eog:
            return END if ending else None
        text = table.text(token)
        following = guide.feed(states, text) if text is not None else None
        return (token, text, following) if following and text is not None else None

    k = min(TOP_K, len(scores))
    top = np.argpartition(scores, -k)[-k:]
    top = top[np.argsort(scores[top])[::-1]].tolist()
    found = _sample(scores[top], top, sampling, rng, way) if sampling.temperature > 0 else None
    if found is None:  # greedy: the model's order, then further down it
        wider = np.argsort(scores)[::-1][: min(WIDE_K, len(scores))].tolist()
        for n, token in enumerate(wider):
            found = way(token)
            if found is not None or (n % 256 == 255 and cancelled()):
                break
    return found if isinstance(found, tuple) else None  # END, or no way on: stop


def _sample(
    scores: Any,
    tokens: list[int],
    sampling: Sampling,
    rng: Any,
    way: Callable[[int], Choice | str | None],
) -> Choice | str | None:
    """Sample from the nucleus of the top tokens, dropping the ones the guide refuses."""
    import numpy as np

    weights = np.exp((scores - scores.max()) / sampling.temperature)
    weights /= weights.sum()
    if sampling.top_p < 1.0:
        keep = int(np.searchsorted(np.cumsum(weights), sampling.top_p) + 1)
        weights[keep:] = 0.0
    for _ in range(len(tokens)):
        total = weights.sum()
        if total <= 0:
            break
        i = int(rng.choice(len(tokens), p=weights / total))
        found = way(tokens[i])
        if found is not None:
            return found
        weights[i] = 0.0
    return None
