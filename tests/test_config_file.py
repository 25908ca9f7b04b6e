"""Settings from a TOML file, under the environment and the command line; model names."""

from __future__ import annotations

from pathlib import Path

import httpx
import openai
import pytest

from oxiserve.__main__ import config_from_args
from oxiserve.config_file import ConfigFileError, read_config_file
from tests.conftest import running


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "oxiserve.toml"
    path.write_text(text)
    return path


def test_keys_are_option_names_with_dashes_or_underscores(tmp_path: Path) -> None:
    path = write(tmp_path, 'model-name = "x"\nsim_itl_ms = 20\naccess-log = false\n'
                           'api-key = ["a", "b"]\nserved-model-name = "solo"\n')  # fmt: skip
    assert read_config_file(path) == {
        "model_name": "x", "sim_itl_ms": 20.0, "access_log": False, "api_key": ("a", "b"),
        "served_model_name": ("solo",),
    }  # fmt: skip


def test_command_line_over_environment_over_file_over_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, 'sim-itl-ms = 20\nsim-ttft-ms = 30\nsim-mode = "echo"\n')
    env = {"OXISERVE_SIM_TTFT_MS": "40", "OXISERVE_SIM_MODE": "fixed"}
    config = config_from_args(["--config", str(path), "--sim-mode", "lorem"], env)
    assert config.sim_itl_ms == 20.0  # the file's, over the default
    assert config.sim_ttft_ms == 40.0  # the environment's, over the file's
    assert config.sim_mode == "lorem"  # the command line's, over both
    assert config.sim_itl_jitter_ms == 0.0  # nobody's: the default
    from_env = config_from_args([], {"OXISERVE_CONFIG": str(path)})
    assert from_env.sim_mode == "echo"  # the file named by the environment


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("sim-itl-mss = 2", "'sim-itl-mss' is not a setting (did you mean 'sim-itl-ms'?)"),
        ('sim-itl-ms = "fast"', "'sim-itl-ms' must be a number, not 'fast'"),
        ("port = 8000.5", "'port' must be an integer, not 8000.5"),
        ("port = true", "'port' must be an integer, not True"),
        ('access-log = "yes"', "'access-log' must be true or false"),
        ('sim-mode = "poetry"', "'sim-mode' must be one of echo, lorem, fixed"),
        ("api-key = [1]", "'api-key' must be a list of strings"),
        ("[server]\nport = 1", "'server' is not a setting"),
        ("port = ", "is not valid TOML"),
    ],
)
def test_a_bad_file_stops_startup_naming_the_key(
    tmp_path: Path, text: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigFileError) as caught:
        read_config_file(path)
    assert message in str(caught.value)
    with pytest.raises(SystemExit) as stopped:
        config_from_args(["--config", str(path)], {})
    assert stopped.value.code == 2
    assert message in capsys.readouterr().err


def test_a_missing_file_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        config_from_args(["--config", str(tmp_path / "nope.toml")], {})
    assert "cannot read the config file" in capsys.readouterr().err


def test_served_model_names_take_several_values_and_repeat() -> None:
    config = config_from_args(["--served-model-name", "a", "b", "--served-model-name", "c"], {})
    assert config.served_model_name == ("a", "b", "c")


async def test_every_served_name_is_listed_and_answers() -> None:
    async with running(served_model_name=("gpt-4o", "llama-3")) as server:
        sdk = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
        async with sdk:
            listed = [m.id for m in (await sdk.models.list()).data]
            assert listed == ["gpt-4o", "llama-3"]
            for name in listed:
                reply = await sdk.chat.completions.create(
                    model=name, messages=[{"role": "user", "content": "Hi"}]
                )
                assert reply.model == name
            with pytest.raises(openai.NotFoundError):
                await sdk.chat.completions.create(
                    model="oxiserve-sim", messages=[{"role": "user", "content": "Hi"}]
                )


async def test_accept_any_model_serves_whatever_name_is_asked() -> None:
    async with (
        running(accept_any_model=True) as server,
        httpx.AsyncClient(base_url=server.url) as http,
    ):
        body = {"model": "anything-at-all", "messages": [{"role": "user", "content": "Hi"}]}
        reply = await http.post("/v1/chat/completions", json=body)
        assert reply.status_code == 200
        assert reply.json()["model"] == "anything-at-all"
        listed = (await http.get("/v1/models")).json()["data"]
        assert [m["id"] for m in listed] == ["oxiserve-sim"]  # the list stays what is served
        embedded = await http.post("/v1/embeddings", json={"model": "other", "input": "x"})
        assert embedded.status_code == 200


async def test_readiness_waits_for_the_startup_delay_and_ends_with_the_shutdown() -> None:
    import time

    from oxiserve.api.models import ready

    async with (
        running(sim_startup_delay=30) as server,
        httpx.AsyncClient(base_url=server.url) as http,
    ):
        starting = await http.get("/health/ready")
        assert starting.status_code == 503
        assert starting.json() == {"status": "starting"}
        assert 29 <= int(starting.headers["retry-after"]) <= 30
        assert (await http.get("/health")).status_code == 200  # liveness answers at once
        chat = {"model": "oxiserve-sim", "messages": [{"role": "user", "content": "Hi"}]}
        assert (await http.post("/v1/chat/completions", json=chat)).status_code == 200
        assert server.state is not None
        server.state.ready_at = time.monotonic()  # as if the 30 s had passed
        answer = await http.get("/health/ready")
        assert (answer.status_code, answer.json()) == (200, {"status": "ready"})
        state = server.state
    assert state.stopping  # the server stopped: not ready for anything new
    stopped = ready(state, None)  # type: ignore[arg-type]
    assert stopped.status == 503


def test_a_setting_given_twice_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigFileError, match="set twice"):
        read_config_file(write(tmp_path, 'model-name = "a"\nmodel_name = "b"\n'))
