"""API keys: 401 without the right one, objects scoped to the key that made them, reloads."""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import openai
import pytest

from oxiserve import Server
from oxiserve.api.keys import fingerprint
from oxiserve.config import Config
from tests.conftest import TIMEOUT, running


def sdk(server: Server, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0)


CHAT = [{"role": "user", "content": "Hi"}]


async def test_a_missing_or_wrong_key_is_401_and_the_right_one_works() -> None:
    async with running(api_key=("sk-one", "sk-two")) as server:
        async with sdk(server, "wrong") as client:
            with pytest.raises(openai.AuthenticationError) as caught:
                await client.models.list()
            assert caught.value.code == "invalid_api_key"
        async with httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT) as http:
            bare = await http.get("/v1/models")  # no Authorization at all
            assert bare.status_code == 401
            assert bare.json()["error"]["code"] == "invalid_api_key"
            assert (await http.get("/health")).status_code == 200  # liveness stays open
        for key in ("sk-one", "sk-two"):
            async with sdk(server, key) as client:
                reply = await client.chat.completions.create(model="oxiserve-sim", messages=CHAT)  # type: ignore[arg-type]
                assert reply.choices[0].message.content


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the SDK marks Assistants deprecated
async def test_objects_belong_to_the_key_that_made_them() -> None:
    async with (
        running(api_key=("sk-a", "sk-b")) as server,
        sdk(server, "sk-a") as a,
        sdk(server, "sk-b") as b,
    ):
        assistant = await a.beta.assistants.create(model="oxiserve-sim")
        thread = await a.beta.threads.create(messages=[{"role": "user", "content": "Hi"}])
        response = await a.responses.create(model="oxiserve-sim", input="Hi")
        conversation = await a.conversations.create()
        lookups = [
            lambda c: c.beta.assistants.retrieve(assistant.id),
            lambda c: c.beta.threads.retrieve(thread.id),
            lambda c: c.beta.threads.messages.list(thread_id=thread.id),
            lambda c: c.responses.retrieve(response.id),
            lambda c: c.conversations.retrieve(conversation.id),
            lambda c: c.beta.threads.runs.create(thread_id=thread.id, assistant_id=assistant.id),
        ]
        for lookup in lookups:
            with pytest.raises(openai.NotFoundError):
                await lookup(b)  # as if it did not exist
        assert (await b.beta.assistants.list()).data == []
        assert [x.id for x in (await a.beta.assistants.list()).data] == [assistant.id]
        assert (await a.responses.retrieve(response.id)).id == response.id
        with pytest.raises(openai.NotFoundError):
            await b.beta.assistants.delete(assistant.id)
        assert (await a.beta.assistants.retrieve(assistant.id)).id == assistant.id


async def test_the_keys_file_is_read_again_on_reload(tmp_path: Path) -> None:
    keys = tmp_path / "keys.txt"
    keys.write_text("# team keys\nsk-old\n\n")
    async with running(api_keys_file=str(keys)) as server:
        async with sdk(server, "sk-old") as old:
            await old.models.list()
        keys.write_text("sk-new  \n# sk-old was revoked\n")
        assert await server.reload_keys() == 1
        async with sdk(server, "sk-new") as new, sdk(server, "sk-old") as old:
            await new.models.list()
            with pytest.raises(openai.AuthenticationError):
                await old.models.list()
        keys.unlink()  # unreadable: the keys it has stay
        assert await server.reload_keys() == 1
        async with sdk(server, "sk-new") as new:
            await new.models.list()


def test_sighup_reloads_the_keys_file_of_a_running_server(tmp_path: Path) -> None:
    keys = tmp_path / "keys.txt"
    keys.write_text("sk-first\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "oxiserve", "--port", "0", "--db", ":memory:",
         "--api-keys-file", str(keys), "--loop", "asyncio"],
        stderr=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline().decode()
        url = re.search(r"(http://\S+)", line)
        assert url, line
        with httpx.Client(base_url=url.group(1), timeout=TIMEOUT) as http:
            auth = {"authorization": "Bearer sk-second"}
            assert http.get("/v1/models", headers=auth).status_code == 401
            keys.write_text("sk-second\n")
            proc.send_signal(signal.SIGHUP)
            for _ in range(500):  # bounded: the reload runs on a worker thread
                if http.get("/v1/models", headers=auth).status_code == 200:
                    break
            assert http.get("/v1/models", headers=auth).status_code == 200
            old = {"authorization": "Bearer sk-first"}
            assert http.get("/v1/models", headers=old).status_code == 401
            assert proc.poll() is None  # still serving: SIGHUP does not stop it
    finally:
        proc.terminate()
        proc.wait(timeout=TIMEOUT)
        if proc.stderr is not None:
            proc.stderr.close()


async def test_the_access_log_shows_a_fingerprint_never_the_key(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="oxiserve.access")  # before the server reads it
    async with (
        running(api_key=("sk-secret-value",), access_log=True) as server,
        sdk(server, "sk-secret-value") as client,
    ):
        await client.models.list()
    lines = [r.getMessage() for r in caplog.records if r.name == "oxiserve.access"]
    assert any(f"key={fingerprint('sk-secret-value')}" in line for line in lines)
    assert not any("sk-secret-value" in r.getMessage() for r in caplog.records)


def test_keys_come_from_the_environment_comma_separated() -> None:
    config = Config.from_env({"OXISERVE_API_KEY": "sk-1, sk-2,"})
    assert config.api_key == ("sk-1", "sk-2")


async def test_without_keys_everything_stays_open_and_shared() -> None:
    async with running() as server, sdk(server, "anything") as one, sdk(server, "other") as two:
        made = await one.responses.create(model="oxiserve-sim", input="Hi")
        assert (await two.responses.retrieve(made.id)).id == made.id
