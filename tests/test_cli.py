"""python -m oxiserve: flags from Config, env vars, startup line, signals."""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import subprocess
import sys
import urllib.request

import pytest

from oxiserve.__main__ import build_parser, config_from_args
from oxiserve.config import Config


def test_help_lists_every_option_with_its_default() -> None:
    text = " ".join(build_parser().format_help().split())
    for f in dataclasses.fields(Config):
        flag = "--" + f.name.replace("_", "-")
        assert flag in text, flag
        assert f"OXISERVE_{f.name.upper()}" in text
    assert "(default: 'lorem')" in text
    assert "(default: 16384)" in text


def test_flags_and_environment_build_the_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OXISERVE_SIM_ITL_MS", "2.5")
    monkeypatch.setenv("OXISERVE_ACCESS_LOG", "false")
    config = config_from_args(["--port", "0", "--sim-mode", "echo", "--max-connections", "7"])
    assert (config.port, config.sim_mode, config.max_connections) == (0, "echo", 7)
    assert config.sim_itl_ms == 2.5
    assert config.access_log is False
    assert config_from_args(["--access-log"]).access_log is True  # flag beats env


@pytest.mark.parametrize(
    "argv",
    [["--port", "99999"], ["--sim-mode", "poetry"], ["--max-body-bytes", "lots"],
     ["--sim-failure-rate", "2"], ["--header-timeout", "-1"]],
)  # fmt: skip
def test_invalid_options_exit_with_a_message(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as caught:
        config_from_args(argv)
    assert caught.value.code == 2
    assert "error:" in capsys.readouterr().err


def _start(*args: str, loop: str = "(asyncio|uvloop)") -> tuple[subprocess.Popen[bytes], str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "oxiserve", "--port", "0", "--db", ":memory:", *args],
        stderr=subprocess.PIPE, env=env,
    )  # fmt: skip
    assert proc.stderr is not None
    line = proc.stderr.readline().decode()
    match = re.fullmatch(
        rf"oxiserve listening on (http://127\.0\.0\.1:(\d+)) \(engine=sim, loop={loop}\)\n", line
    )
    assert match, line
    assert int(match.group(2)) != 0
    return proc, match.group(1)


@pytest.mark.parametrize(
    ("sig", "loop"),
    [(signal.SIGTERM, "asyncio"), (signal.SIGINT, "asyncio"), (signal.SIGTERM, "uvloop"),
     (signal.SIGINT, "auto")],
)  # fmt: skip
def test_serves_then_exits_0_on_signal(sig: signal.Signals, loop: str) -> None:
    # auto picks uvloop where it is installed (the dev extra installs it)
    proc, url = _start(
        "--log-level", "info", "--loop", loop, loop="uvloop" if loop == "auto" else loop
    )
    try:
        with urllib.request.urlopen(url + "/health", timeout=5) as response:
            assert response.read() == b'{"status":"ok"}'
        proc.send_signal(sig)
        assert proc.wait(timeout=10) == 0
        assert proc.stderr is not None
        log = proc.stderr.read().decode()
        assert re.search(r"GET /health 200 15 [\d.]+ms id=req_", log), log  # access log line
    finally:
        proc.kill()
        proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


def test_asking_for_uvloop_without_it_installed_says_how_to_get_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from oxiserve import __main__, loops

    monkeypatch.setattr(loops, "uvloop_installed", lambda: False)
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop now fails
    assert loops.resolve("auto")[0] == "asyncio"
    assert __main__.main(["--loop", "uvloop", "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "pip install 'oxiserve[fast]'" in err
