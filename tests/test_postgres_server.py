"""A whole server on the PostgreSQL store: runs, responses and a restart, through the SDK."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from oxiserve import Config, Server
from tests.conftest import running
from tests.postgres import PrivatePostgres

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the SDK's Assistants


def sdk(server: Server) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)


async def test_runs_and_responses_are_kept_across_a_restart(
    private_postgres: PrivatePostgres,
) -> None:
    db = private_postgres.new_database()
    async with running(db=db) as server, sdk(server) as client:
        assistant = await client.beta.assistants.create(model="oxiserve-sim", name="pg")
        thread = await client.beta.threads.create(
            messages=[{"role": "user", "content": "Hello there"}]
        )
        run = await client.beta.threads.runs.create_and_poll(
            thread_id=thread.id, assistant_id=assistant.id, poll_interval_ms=5
        )
        assert run.status == "completed"
        first = await client.responses.create(model="oxiserve-sim", input="Hi")
        chained = await client.responses.create(
            model="oxiserve-sim", input="And then?", previous_response_id=first.id
        )
        messages = await client.beta.threads.messages.list(thread_id=thread.id, order="asc")
    async with running(db=db) as server, sdk(server) as client:  # another process' worth
        assert (await client.beta.assistants.retrieve(assistant.id)).name == "pg"
        again = await client.beta.threads.runs.retrieve(run.id, thread_id=thread.id)
        assert again.status == "completed"
        kept = await client.beta.threads.messages.list(thread_id=thread.id, order="asc")
        assert [m.id for m in kept.data] == [m.id for m in messages.data]
        assert (await client.responses.retrieve(chained.id)).output_text == chained.output_text
        items: Any = await client.responses.input_items.list(chained.id)
        assert items.data


async def test_a_run_left_unfinished_fails_at_the_next_start(
    private_postgres: PrivatePostgres,
) -> None:
    db = private_postgres.new_database()
    server = Server(Config(port=0, db=db, access_log=False, sim_itl_ms=50,
                           sim_default_max_tokens=1000))  # fmt: skip
    await server.start()
    async with sdk(server) as client:
        assistant = await client.beta.assistants.create(model="oxiserve-sim")
        thread = await client.beta.threads.create(
            messages=[{"role": "user", "content": "Hello there"}]
        )
        run = await client.beta.threads.runs.create(thread_id=thread.id, assistant_id=assistant.id)
    assert server.state is not None
    assert server.state.store is not None
    await server.state.store.close()  # the process "dies": nothing more reaches the database
    server.state.store = None
    await server.stop(timeout=0)
    async with running(db=db) as restarted, sdk(restarted) as client:
        failed = await client.beta.threads.runs.retrieve(run.id, thread_id=thread.id)
    assert failed.status == "failed"
    assert failed.last_error is not None
    assert "restarted" in failed.last_error.message
