"""Tiny llama-architecture GGUF models built locally in about a second, for tests and demos.

Two kinds, both with a byte-level BPE tokenizer trained on the spot (no download):

* the *parrot* (:func:`build_parrot`) always answers with one fixed text and stops with EOS,
  whatever the prompt and even when sampling: an exact expected output for tests;
* the *random* model (:func:`build_random`) has random weights, emits gibberish and never an
  end-of-generation token: it always runs to ``max_tokens`` (throughput tests).

How the parrot works: one-hot token embeddings, zero ``attn_output`` and ``ffn_down`` (so the
residual stream stays the embedding of the current token), and an output matrix that maps each
token to the one that must follow it. The text is emitted through *dedicated* tokens appended to
the vocabulary: byte pieces of the text that no BPE merge produces, so no prompt ever tokenizes
into them. Hence the last prompt token is always an ordinary token, and every ordinary token maps
to the first piece, each piece to the next, the last one to EOS. This holds whatever the prompt
ends with (even the text itself), and a text may repeat words: the pieces only have to be distinct
byte strings that are not ordinary tokens (:func:`parrot_pieces` finds them or raises ValueError).
Pieces are about three bytes long, so multi-byte characters are split across tokens.

``gguf``, ``tokenizers`` and ``numpy`` are an optional extra: they are imported inside functions.

    python -m oxiserve.engine.tiny_gguf --out /tmp/parrot.gguf
    python -m oxiserve.engine.tiny_gguf --out /tmp/random.gguf --random
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    Matrix = npt.NDArray[np.float32]

PARROT_TEXT = "Hello from the parrot: café, naïve, 日本語 🦜."

# The ChatML template as Hugging Face models ship it (stored as `tokenizer.chat_template`).
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

ENDOFTEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = (ENDOFTEXT, IM_START, IM_END)

_CORPUS = (
    "The quick brown fox jumps over the lazy dog.",
    "You are a helpful assistant. Say hello to the user, please!",
    "system user assistant: what is 2 + 2? It is 4.",
)
_PIECE_LENGTHS = (3, 2, 4, 5, 6)  # preferred byte lengths of a parrot piece, in order
_PARROT_LOGIT = 32.0  # the chosen token's logit; every other one is 0
_HEAD_DIM = 64
_TOKEN_NORMAL, _TOKEN_CONTROL = 1, 3  # gguf.TokenType values


@dataclass(frozen=True, slots=True)
class GGUFInfo:
    """What a GGUF file says about itself (see :func:`read_metadata`)."""

    architecture: str
    context_length: int | None
    chat_template: str | None
    eos_token_id: int | None
    bos_token_id: int | None
    name: str | None
    embedding_length: int | None


@dataclass(frozen=True, slots=True)
class _Vocab:
    """A byte-level BPE vocabulary in GGUF form (tokens spelled in GPT-2's byte alphabet)."""

    tokens: list[str]
    types: list[int]
    merges: list[str]

    def id_of(self, token: str) -> int:
        return self.tokens.index(token)


@dataclass(frozen=True, slots=True)
class _Shape:
    vocab: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    ffn: int
    context_length: int


def _byte_alphabet() -> dict[int, str]:
    """GPT-2's byte -> printable character map, the alphabet of byte-level BPE tokens."""
    from tokenizers import pre_tokenizers

    alphabet = pre_tokenizers.ByteLevel.alphabet()  # the 256 characters, unordered
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    assert set(table.values()) == set(alphabet)
    return table


def _train_vocab(sentences: Iterable[str], vocab_size: int) -> _Vocab:
    """Train a byte-level BPE on `sentences`: all 256 bytes, then the specials, then merges."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(list(sentences), trainer=trainer)
    by_id = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    tokens = [token for token, _ in by_id]
    if tokens[: len(SPECIAL_TOKENS)] != list(SPECIAL_TOKENS):
        raise RuntimeError(f"unexpected BPE layout: {tokens[:5]}")
    model = json.loads(tokenizer.to_str())["model"]
    # `tokenizers` writes a merge as a pair; older versions as one "a b" string.
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    types = [_TOKEN_CONTROL if t in SPECIAL_TOKENS else _TOKEN_NORMAL for t in tokens]
    return _Vocab(tokens, types, merges)


def _spell(piece: bytes, alphabet: dict[int, str]) -> str:
    return "".join(alphabet[b] for b in piece)


def _split_pieces(data: bytes, forbidden: set[str], alphabet: dict[int, str]) -> list[bytes]:
    """Split `data` into distinct pieces whose spellings are not in `forbidden` (or raise)."""
    used: set[str] = set()
    dead_ends: set[int] = set()  # positions from which no split was found (bounds the search)

    def split(start: int) -> list[bytes] | None:
        if start == len(data):
            return []
        if start in dead_ends:
            return None
        for length in _PIECE_LENGTHS:
            piece = data[start : start + length]
            spelling = _spell(piece, alphabet)
            if len(piece) < length or spelling in forbidden or spelling in used:
                continue
            used.add(spelling)
            rest = split(start + length)
            if rest is not None:
                return [piece, *rest]
            used.discard(spelling)
        dead_ends.add(start)
        return None

    if len(data) > 2 * sys.getrecursionlimit():
        raise ValueError(f"parrot text too long ({len(data)} bytes)")
    pieces = split(0)
    if not pieces:
        raise ValueError(
            "parrot text cannot be split into distinct pieces that are not ordinary tokens "
            f"(a text needs at least 2 bytes and not too many repeats): {data!r}"
        )
    return pieces


def _parrot_vocab(text: str) -> tuple[_Vocab, list[bytes]]:
    vocab = _train_vocab([*_CORPUS, text], vocab_size=320)
    alphabet = _byte_alphabet()
    pieces = _split_pieces(text.encode(), set(vocab.tokens), alphabet)
    spelled = [_spell(piece, alphabet) for piece in pieces]
    extended = _Vocab(
        [*vocab.tokens, *spelled], [*vocab.types, *[_TOKEN_NORMAL] * len(pieces)], vocab.merges
    )
    return extended, pieces


def parrot_pieces(text: str = PARROT_TEXT) -> list[bytes]:
    """The byte pieces (one token each) in which the parrot built for `text` emits it.

    >>> b"".join(parrot_pieces("Hello, parrot!")) == "Hello, parrot!".encode()
    True
    """
    return _parrot_vocab(text)[1]


def build_parrot(
    path: str | os.PathLike[str],
    text: str = PARROT_TEXT,
    *,
    chat_template: str | None = CHATML_TEMPLATE,
    context_length: int = 512,
) -> None:
    """Write a model that answers every prompt with exactly `text`, then EOS (``<|im_end|>``).

    Raises ValueError if `text` cannot be emitted unambiguously (see :func:`parrot_pieces`).
    """
    import numpy as np

    vocab, pieces = _parrot_vocab(text)
    size = len(vocab.tokens)
    hidden = -(-size // _HEAD_DIM) * _HEAD_DIM  # one dimension per token, whole heads
    shape = _Shape(size, hidden, 1, hidden // _HEAD_DIM, 1, _HEAD_DIM, context_length)
    first_piece = size - len(pieces)
    follower = np.full(size, first_piece, dtype=np.int64)  # ordinary tokens start the text
    follower[first_piece:-1] = np.arange(first_piece + 1, size)
    follower[-1] = vocab.id_of(IM_END)
    embedding = np.eye(size, hidden, dtype=np.float32)
    # RMSNorm turns the one-hot vector into sqrt(hidden) times itself.
    output = np.zeros((size, hidden), dtype=np.float32)
    output[follower, np.arange(size)] = _PARROT_LOGIT / np.sqrt(hidden)
    zeros = _zero_blocks(shape)
    tensors = {"token_embd.weight": embedding, **zeros, "output.weight": output}
    _write(path, "oxiserve tiny parrot", shape, vocab, chat_template, tensors)


def build_random(
    path: str | os.PathLike[str],
    *,
    vocab: int = 512,
    hidden: int = 64,
    layers: int = 2,
    seed: int = 0,
    context_length: int = 2048,
) -> None:
    """Write a model with random weights that never emits an end-of-generation token."""
    import numpy as np

    if vocab < 256 + len(SPECIAL_TOKENS):
        raise ValueError(f"vocab must be at least {256 + len(SPECIAL_TOKENS)}, got {vocab}")
    if hidden < 16 or hidden % 16:
        raise ValueError(f"hidden must be a positive multiple of 16, got {hidden}")
    if layers < 1:
        raise ValueError(f"layers must be at least 1, got {layers}")
    words = random.Random(seed)
    corpus = [*_CORPUS, *("".join(words.choices("abcdefghijklmnop", k=6)) for _ in range(400))]
    bpe = _train_vocab(corpus, vocab_size=vocab)
    padding = [f"[unused{i}]" for i in range(vocab - len(bpe.tokens))]  # never produced
    tokens = _Vocab(
        [*bpe.tokens, *padding], [*bpe.types, *[_TOKEN_NORMAL] * len(padding)], bpe.merges
    )
    heads = hidden // 16
    shape = _Shape(vocab, hidden, layers, heads, heads, 2 * hidden, context_length)
    rng = np.random.default_rng(seed)
    tensors = _random_tensors(shape, rng)
    # Dimension 0 of the residual stream is a constant (nothing writes to it): a large negative
    # weight on it keeps every end-of-generation token's logit far below the others.
    tensors["token_embd.weight"][:, 0] = 4.0
    for name, tensor in tensors.items():
        if name.endswith(("attn_output.weight", "ffn_down.weight")):
            tensor[0, :] = 0.0
    output = tensors["output.weight"]
    output[:, 0] = 0.0
    output[[tokens.id_of(t) for t in (ENDOFTEXT, IM_END)], 0] = -1000.0
    _write(path, "oxiserve tiny random", shape, tokens, CHATML_TEMPLATE, tensors)


def _zero_blocks(shape: _Shape) -> dict[str, Matrix]:
    import numpy as np

    kv = shape.kv_heads * (shape.hidden // shape.heads)
    dims = _block_dims(shape, kv)
    tensors = {}
    for layer in range(shape.layers):
        for part, dim in dims.items():
            fill = np.ones if part.endswith("norm") else np.zeros
            tensors[f"blk.{layer}.{part}.weight"] = fill(dim, dtype=np.float32)
    tensors["output_norm.weight"] = np.ones(shape.hidden, dtype=np.float32)
    return tensors


def _random_tensors(shape: _Shape, rng: np.random.Generator) -> dict[str, Matrix]:
    import numpy as np

    def normal(*dim: int) -> Matrix:
        sample: Matrix = (rng.standard_normal(dim) / np.sqrt(dim[-1])).astype(np.float32)
        return sample

    tensors = _zero_blocks(shape)
    for name, tensor in tensors.items():
        if tensor.ndim == 2:
            tensors[name] = normal(*tensor.shape)
    tensors["token_embd.weight"] = rng.standard_normal((shape.vocab, shape.hidden)).astype(
        np.float32
    )
    tensors["output.weight"] = normal(shape.vocab, shape.hidden)
    return tensors


def _block_dims(shape: _Shape, kv: int) -> dict[str, tuple[int, ...]]:
    """The shapes, numpy order (out, in), of one llama block's tensors."""
    h, f = shape.hidden, shape.ffn
    return {
        "attn_norm": (h,),
        "attn_q": (h, h),
        "attn_k": (kv, h),
        "attn_v": (kv, h),
        "attn_output": (h, h),
        "ffn_norm": (h,),
        "ffn_gate": (f, h),
        "ffn_up": (f, h),
        "ffn_down": (h, f),
    }


def _write(
    path: str | os.PathLike[str],
    name: str,
    shape: _Shape,
    vocab: _Vocab,
    chat_template: str | None,
    tensors: dict[str, Matrix],
) -> None:
    from gguf import GGUFWriter

    writer = GGUFWriter(os.fspath(path), "llama")
    writer.add_name(name)
    writer.add_context_length(shape.context_length)
    writer.add_embedding_length(shape.hidden)
    writer.add_block_count(shape.layers)
    writer.add_feed_forward_length(shape.ffn)
    writer.add_head_count(shape.heads)
    writer.add_head_count_kv(shape.kv_heads)
    writer.add_rope_dimension_count(shape.hidden // shape.heads)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_vocab_size(shape.vocab)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.types)
    writer.add_token_merges(vocab.merges)
    writer.add_bos_token_id(vocab.id_of(ENDOFTEXT))
    writer.add_eos_token_id(vocab.id_of(IM_END))
    writer.add_eot_token_id(vocab.id_of(ENDOFTEXT))
    writer.add_add_bos_token(False)
    if chat_template is not None:
        writer.add_chat_template(chat_template)
    for tensor_name, tensor in tensors.items():
        writer.add_tensor(tensor_name, tensor)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def read_metadata(path: str | os.PathLike[str]) -> GGUFInfo:
    """Read a GGUF file's metadata; a file that is not GGUF raises a one-line ValueError."""
    from gguf import GGUFReader

    try:
        reader = GGUFReader(os.fspath(path))
    except (ValueError, OSError, IndexError, KeyError, TypeError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ValueError(f"{os.fspath(path)}: not a GGUF model file: {reason}") from None
    fields: dict[str, Any] = {key: field.contents() for key, field in reader.fields.items()}
    architecture = str(fields.get("general.architecture", ""))

    def integer(key: str) -> int | None:
        value = fields.get(key)
        return int(value) if isinstance(value, int) else None

    def text(key: str) -> str | None:
        value = fields.get(key)
        return value if isinstance(value, str) else None

    return GGUFInfo(
        architecture=architecture,
        context_length=integer(f"{architecture}.context_length"),
        chat_template=text("tokenizer.chat_template"),
        eos_token_id=integer("tokenizer.ggml.eos_token_id"),
        bos_token_id=integer("tokenizer.ggml.bos_token_id"),
        name=text("general.name"),
        embedding_length=integer(f"{architecture}.embedding_length"),
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m oxiserve.engine.tiny_gguf",
        description="Build a tiny llama GGUF model locally (default: the parrot).",
    )
    parser.add_argument("--out", required=True, help="where to write the .gguf file")
    kind = parser.add_mutually_exclusive_group()
    kind.add_argument(
        "--parrot",
        nargs="?",
        const=PARROT_TEXT,
        metavar="TEXT",
        help="a model that always answers TEXT (default text: %(const)r)",
    )
    kind.add_argument("--random", action="store_true", help="random weights (throughput)")
    args = parser.parse_args(argv)
    try:
        if args.random:
            build_random(args.out)
        else:
            build_parrot(args.out, args.parrot if args.parrot is not None else PARROT_TEXT)
    except (ValueError, OSError) as error:
        parser.exit(2, f"error: {error}\n")
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
