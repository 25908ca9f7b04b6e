"""Tiny GGUF models: the parrot answers exactly its text, the random model runs to max_tokens."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ox = pytest.importorskip("oxillama_py")
jinja2 = pytest.importorskip("jinja2")
pytest.importorskip("gguf")
pytest.importorskip("tokenizers")

from oxiserve.engine import tiny_gguf  # noqa: E402
from oxiserve.engine.tiny_gguf import CHATML_TEMPLATE, PARROT_TEXT  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

CONVERSATION = [
    {"role": "system", "content": "You are a parrot."},
    {"role": "user", "content": "Say something."},
    {"role": "assistant", "content": PARROT_TEXT},
    {"role": "user", "content": "Again, please: café 日本語?"},
]
CHATML_PROMPT = (
    "<|im_start|>system\nYou are a parrot.<|im_end|>\n"
    "<|im_start|>user\nSay something.<|im_end|>\n"
    f"<|im_start|>assistant\n{PARROT_TEXT}<|im_end|>\n"
    "<|im_start|>user\nAgain, please: café 日本語?<|im_end|>\n"
    "<|im_start|>assistant\n"
)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("tiny_gguf")
    paths = {"parrot": folder / "parrot.gguf", "random": folder / "random.gguf"}
    tiny_gguf.build_parrot(paths["parrot"])
    tiny_gguf.build_random(paths["random"])
    return paths


def _engine(path: Path, context_size: int) -> ox.Engine:
    engine = ox.Engine(ox.EngineConfig(str(path), context_size=context_size, num_threads=1))
    engine.load_model()
    assert engine.is_loaded()
    return engine


@pytest.fixture(scope="module")
def parrot(models: dict[str, Path]) -> ox.Engine:
    return _engine(models["parrot"], 512)


@pytest.fixture(scope="module")
def random_model(models: dict[str, Path]) -> ox.Engine:
    return _engine(models["random"], 2048)


def _generate(
    engine: ox.Engine, prompt: str, max_tokens: int = 64, **sampler: float | int
) -> tuple[ox.GenerationOutcome, list[str]]:
    config = ox.GenerationConfig(
        max_tokens=max_tokens, sampler=ox.SamplerConfig(**sampler) if sampler else None
    )
    pieces: list[str] = []
    engine.reset()
    outcome = engine.generate_detailed(prompt, config, pieces.append)
    return outcome, pieces


def test_chatml_template_renders_a_conversation() -> None:
    template = jinja2.Environment().from_string(CHATML_TEMPLATE)
    assert template.render(messages=CONVERSATION, add_generation_prompt=True) == CHATML_PROMPT
    without = template.render(messages=CONVERSATION, add_generation_prompt=False)
    assert without == CHATML_PROMPT.removesuffix("<|im_start|>assistant\n")


@pytest.mark.parametrize(
    "prompt",
    [
        "Hi",
        "Tell me something.",  # ends like the text does
        "Hel",  # a prefix of the text
        PARROT_TEXT,  # the whole text: the parrot still starts from the beginning
        "<|im_end|>",
        CHATML_PROMPT,
    ],
)
def test_parrot_answers_its_text_whatever_the_prompt(parrot: ox.Engine, prompt: str) -> None:
    outcome, pieces = _generate(parrot, prompt)
    assert outcome.text == PARROT_TEXT
    assert "".join(pieces) == PARROT_TEXT
    assert outcome.finish_reason.as_openai_str() == "stop"
    assert outcome.finish_reason == ox.FinishReason.Eos
    assert len(outcome.generated_tokens) == len(tiny_gguf.parrot_pieces())


@pytest.mark.parametrize("seed", [1, 2])
def test_parrot_answers_its_text_when_sampling(parrot: ox.Engine, seed: int) -> None:
    outcome, pieces = _generate(parrot, CHATML_PROMPT, temperature=0.7, seed=seed)
    assert outcome.text == PARROT_TEXT
    assert "".join(pieces) == PARROT_TEXT
    assert outcome.finish_reason == ox.FinishReason.Eos


def test_parrot_splits_multibyte_characters_across_tokens(parrot: ox.Engine) -> None:
    outcome, pieces = _generate(parrot, "Hi")
    expected = tiny_gguf.parrot_pieces()
    assert b"".join(expected) == PARROT_TEXT.encode()

    def valid(piece: bytes) -> bool:
        try:
            piece.decode()
        except UnicodeDecodeError:
            return False
        return True

    assert not all(valid(piece) for piece in expected)
    ids = outcome.generated_tokens
    decoded = [piece.decode(errors="replace") for piece in expected]
    assert [parrot.decode_token(token) for token in ids] == decoded
    # the stream never carries half a character: every piece is whole text
    assert all("\ufffd" not in piece for piece in pieces)
    # why the parrot is robust: no prompt tokenizes into the tokens it speaks with
    assert not set(ids) & set(parrot.tokenize(PARROT_TEXT + CHATML_PROMPT))


def test_read_metadata_of_the_parrot(models: dict[str, Path], parrot: ox.Engine) -> None:
    info = tiny_gguf.read_metadata(models["parrot"])
    assert info.architecture == "llama"
    assert info.chat_template == CHATML_TEMPLATE
    assert info.context_length == 512
    assert info.embedding_length == parrot.hidden_size()
    assert info.name
    assert info.eos_token_id is not None
    assert parrot.tokenize("<|im_end|>") == [info.eos_token_id]
    assert parrot.is_eos(info.eos_token_id)
    assert parrot.tokenize("<|endoftext|>") == [info.bos_token_id]
    assert set(parrot.eog_token_ids()) == {info.eos_token_id, info.bos_token_id}


def test_read_metadata_without_template(tmp_path: Path) -> None:
    path = tmp_path / "bare.gguf"
    tiny_gguf.build_parrot(path, "Bare text!", chat_template=None, context_length=256)
    info = tiny_gguf.read_metadata(path)
    assert (info.chat_template, info.context_length) == (None, 256)
    outcome, _ = _generate(_engine(path, 256), "Hello")
    assert outcome.text == "Bare text!"


@pytest.mark.parametrize("content", [b"", b"not a model\n", b"GGUF\x00\x00"])
def test_read_metadata_rejects_a_file_that_is_not_gguf(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "fake.gguf"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="not a GGUF model file") as caught:
        tiny_gguf.read_metadata(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ")
    assert "\n" not in message


@pytest.mark.parametrize("text", ["", "x"])
def test_parrot_refuses_a_text_it_cannot_say(tmp_path: Path, text: str) -> None:
    with pytest.raises(ValueError, match="parrot text"):
        tiny_gguf.build_parrot(tmp_path / "p.gguf", text)
    assert not (tmp_path / "p.gguf").exists()


@pytest.mark.parametrize("sampler", [{}, {"temperature": 0.7, "seed": 3}])
def test_random_model_runs_to_max_tokens(
    random_model: ox.Engine, sampler: dict[str, float | int]
) -> None:
    outcome, pieces = _generate(random_model, "Hello", max_tokens=256, **sampler)
    assert outcome.finish_reason == ox.FinishReason.MaxTokens
    assert outcome.finish_reason.as_openai_str() == "length"
    assert len(outcome.generated_tokens) == 256
    assert "".join(pieces) == outcome.text


def _cli(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "oxiserve.engine.tiny_gguf", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout.strip()


def test_cli_writes_a_loadable_parrot(tmp_path: Path) -> None:
    path = tmp_path / "cli.gguf"
    assert _cli("--out", str(path), "--parrot", "Polly wants a cracker.") == str(path)
    outcome, _ = _generate(_engine(path, 512), "Hi")
    assert outcome.text == "Polly wants a cracker."


def test_cli_writes_a_loadable_random_model(tmp_path: Path) -> None:
    path = tmp_path / "cli-random.gguf"
    assert _cli("--out", str(path), "--random") == str(path)
    outcome, _ = _generate(_engine(path, 2048), "Hi", max_tokens=8)
    assert len(outcome.generated_tokens) == 8
