"""Runs beyond the SDK flows: injected engine failures, restart recovery on a store, expiry
of a run waiting for tool outputs, and the pieces (records, replay) the API builds on."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from oxiserve.config import Config
from oxiserve.engine.sim import SimEngine
from oxiserve.jobs import JobSupervisor
from oxiserve.runs import objects
from oxiserve.runs.manager import RESTARTED, NotAccepting, Runs
from oxiserve.runs.worker import RunContext, message_record, run_record, step_record
from oxiserve.store.base import Kind
from oxiserve.store.sqlite import SqliteStore
from tests.conftest import TIMEOUT, running
from tests.test_assistants_events import (
    BETA,
    FORCE_WEATHER,
    WEATHER,
    assistant_and_thread,
    of,
    parse_sse,
    shape,
    text_of,
)


async def _stream_run(
    http: httpx.AsyncClient, headers: dict[str, str], **body: Any
) -> tuple[dict[str, Any], list[Any]]:
    asst, thread = await assistant_and_thread(http)
    response = await http.post(
        f"/v1/threads/{thread['id']}/runs",
        json={"assistant_id": asst["id"], "stream": True, **body},
        headers=headers,
    )
    assert response.status_code == 200, response.text
    return thread, parse_sse(response.content)


@pytest.mark.parametrize(
    ("status", "code"), [("500", "server_error"), ("429", "rate_limit_exceeded")]
)
async def test_an_engine_failure_before_any_token_fails_the_run(status: str, code: str) -> None:
    async with (
        running() as server,
        httpx.AsyncClient(base_url=server.url, headers=BETA, timeout=TIMEOUT) as http,
    ):
        thread, events = await _stream_run(http, {"x-sim-error": status})
        assert shape(events) == [
            "thread.run.created", "thread.run.queued", "thread.run.in_progress",
            "thread.run.failed", "done",
        ]  # fmt: skip
        (run,) = of(events, "thread.run.failed")
        assert run["status"] == "failed"
        assert run["last_error"]["code"] == code
        assert run["failed_at"] is not None
        stored = (await http.get(f"/v1/threads/{thread['id']}/runs/{run['id']}")).json()
        assert (stored["status"], stored["last_error"]) == ("failed", run["last_error"])
        # The thread is free again: the next run goes through.
        again = await http.post(f"/v1/threads/{thread['id']}/runs",
                                json={"assistant_id": run["assistant_id"]})  # fmt: skip
        assert again.status_code == 200


async def test_a_failure_mid_message_keeps_the_text_so_far_incomplete() -> None:
    async with (
        running() as server,
        httpx.AsyncClient(base_url=server.url, headers=BETA, timeout=TIMEOUT) as http,
    ):
        headers = {"x-sim-error": "502", "x-sim-error-at": "7"}
        thread, events = await _stream_run(http, headers)
        assert shape(events)[-4:] == [
            "thread.message.incomplete", "thread.run.step.failed", "thread.run.failed", "done",
        ]  # fmt: skip
        deltas = "".join(d["delta"]["content"][0]["text"]["value"]
                         for d in of(events, "thread.message.delta"))  # fmt: skip
        assert len(of(events, "thread.message.delta")) == 7
        (message,) = of(events, "thread.message.incomplete")
        assert message["incomplete_details"] == {"reason": "run_failed"}
        assert text_of(message) == deltas
        listed = (await http.get(f"/v1/threads/{thread['id']}/messages")).json()["data"]
        assert [m["status"] for m in listed] == ["incomplete", "completed"]
        assert text_of(listed[0]) == deltas
        (step,) = of(events, "thread.run.step.failed")
        assert step["last_error"] == of(events, "thread.run.failed")[0]["last_error"]


async def test_a_run_waiting_for_tool_outputs_expires() -> None:
    async with (
        running(run_timeout=0.3) as server,
        httpx.AsyncClient(base_url=server.url, headers=BETA, timeout=TIMEOUT) as http,
    ):
        thread, events = await _stream_run(http, {}, tools=[WEATHER], tool_choice=FORCE_WEATHER)
        (run,) = of(events, "thread.run.requires_action")
        path = f"/v1/threads/{thread['id']}/runs/{run['id']}"
        for _ in range(500):  # bounded: the run expires 0.3 s after it was created
            stored = (await http.get(path)).json()
            if stored["status"] != "requires_action":
                break
        assert stored["status"] == "expired"
        assert stored["required_action"] is None
        call = run["required_action"]["submit_tool_outputs"]["tool_calls"][0]
        outputs = {"tool_outputs": [{"tool_call_id": call["id"], "output": "x"}]}
        late = await http.post(f"{path}/submit_tool_outputs", json=outputs)
        assert late.status_code == 400
        steps = (await http.get(f"{path}/steps")).json()["data"]
        assert [(s["type"], s["status"]) for s in steps] == [("tool_calls", "expired")]


async def test_recover_fails_what_a_previous_process_left_unfinished() -> None:
    config = Config(db=":memory:")
    store = await SqliteStore.open(":memory:")
    try:
        run = {"id": "run_1", "thread_id": "thread_1", "assistant_id": "asst_1",
               "status": "in_progress", "last_error": None, "required_action": None}  # fmt: skip
        done = {**run, "id": "run_2", "status": "completed"}
        waiting = {**run, "id": "run_3", "status": "requires_action", "required_action": {}}
        message = objects.message_object("thread_1", "assistant", objects.text_content("Half"),
                                         run_id="run_1", status="in_progress")  # fmt: skip
        step = objects.step_object(run, "message_creation",
                                   objects.message_step_details(message["id"]))  # fmt: skip
        await store.put(run_record(run, "k1"), run_record(done, ""), run_record(waiting, ""),
                        message_record(message, "k1"), step_record(step, "k1"))  # fmt: skip
        runs = Runs(RunContext(config, SimEngine(config), store), JobSupervisor())
        assert await runs.recover() == 2
        failed = await store.get(Kind.RUN, "run_1", owner="k1")  # the owner is kept
        assert failed is not None
        assert failed["status"] == "failed"
        assert failed["last_error"] == {"code": "server_error", "message": RESTARTED}
        assert (await store.get(Kind.RUN, "run_2")) == done  # finished work is untouched
        expired = await store.get(Kind.RUN, "run_3")
        assert expired is not None
        assert (expired["status"], expired["required_action"]) == ("failed", None)
        kept = await store.get(Kind.MESSAGE, message["id"], owner="k1")
        assert kept is not None
        assert (kept["status"], kept["incomplete_details"]) == (
            "incomplete", {"reason": "run_failed"},
        )  # fmt: skip
        assert objects.message_text(kept) == "Half"
        step_now = await store.get(Kind.STEP, step["id"], owner="k1")
        assert step_now is not None
        assert step_now["status"] == "failed"
        assert await runs.recover() == 0  # nothing is left to recover
    finally:
        await store.close()


async def test_a_finished_run_is_replayed_from_the_store() -> None:
    async with (
        running() as server,
        httpx.AsyncClient(base_url=server.url, headers=BETA, timeout=TIMEOUT) as http,
    ):
        thread, events = await _stream_run(http, {})
        run_id = events[0][1]["id"]
        assert server.state is not None
        assert server.state.jobs.get(run_id) is None  # its frames left memory when it ended
        replay = await http.get(f"/v1/threads/{thread['id']}/runs/{run_id}/stream")
        again = parse_sse(replay.content)
        assert shape(again) == [
            "thread.run.created", "thread.run.step.created", "thread.message.created",
            "thread.message.delta x N", "thread.message.completed", "thread.run.step.completed",
            "thread.run.completed", "done",
        ]  # fmt: skip
        live = "".join(d["delta"]["content"][0]["text"]["value"]
                       for d in of(events, "thread.message.delta"))  # fmt: skip
        (delta,) = of(again, "thread.message.delta")
        assert delta["delta"]["content"][0]["text"]["value"] == live
        assert of(again, "thread.run.completed") == of(events, "thread.run.completed")


# --- rejected requests change nothing (found by review) ------------------------------------


async def test_a_bad_stream_flag_creates_no_run_and_no_thread() -> None:
    async with (
        running() as server,
        httpx.AsyncClient(base_url=server.url, headers=BETA, timeout=TIMEOUT) as http,
    ):
        asst, thread = await assistant_and_thread(http)
        bad = await http.post(f"/v1/threads/{thread['id']}/runs",
                              json={"assistant_id": asst["id"], "stream": "yes"})  # fmt: skip
        assert (bad.status_code, bad.json()["error"]["param"]) == (400, "stream")
        runs = (await http.get(f"/v1/threads/{thread['id']}/runs")).json()["data"]
        assert runs == []
        assert server.state is not None
        store = server.state.store
        assert store is not None
        before = (await store.list(Kind.THREAD, limit=100)).data
        bad = await http.post("/v1/threads/runs", json={
            "assistant_id": asst["id"], "stream": 1,
            "thread": {"messages": [{"role": "user", "content": "hi"}]},
        })  # fmt: skip
        assert bad.status_code == 400
        assert (await store.list(Kind.THREAD, limit=100)).data == before


async def test_a_bad_stream_flag_on_submit_leaves_the_run_waiting() -> None:
    async with (
        running() as server,
        httpx.AsyncClient(base_url=server.url, headers=BETA, timeout=TIMEOUT) as http,
    ):
        thread, events = await _stream_run(http, {}, tools=[WEATHER], tool_choice=FORCE_WEATHER)
        (run,) = of(events, "thread.run.requires_action")
        (step,) = of(events, "thread.run.step.created")
        assert step["usage"] is None  # a step in progress has no usage yet
        path = f"/v1/threads/{thread['id']}/runs/{run['id']}"
        call = run["required_action"]["submit_tool_outputs"]["tool_calls"][0]
        outputs = [{"tool_call_id": call["id"], "output": "21C"}]
        bad = await http.post(f"{path}/submit_tool_outputs",
                              json={"tool_outputs": outputs, "stream": "true"})  # fmt: skip
        assert bad.status_code == 400
        assert (await http.get(path)).json()["status"] == "requires_action"
        good = await http.post(f"{path}/submit_tool_outputs", json={"tool_outputs": outputs})
        assert good.status_code == 200
        for _ in range(500):  # bounded: a zero-latency leg ends within a few polls
            if (await http.get(path)).json()["status"] == "completed":
                break
        steps = (await http.get(f"{path}/steps", params={"order": "asc"})).json()["data"]
        assert steps[0]["type"] == "tool_calls"
        assert steps[0]["usage"]["completion_tokens"] > 0  # filled in when it completed


@pytest.mark.parametrize("what", ["delete", "modify"])
async def test_the_message_a_run_is_writing_cannot_be_changed(what: str) -> None:
    async with (
        running(sim_itl_ms=2) as server,
        httpx.AsyncClient(base_url=server.url, headers=BETA, timeout=TIMEOUT) as http,
    ):
        asst, thread = await assistant_and_thread(http)
        created = await http.post(f"/v1/threads/{thread['id']}/runs",
                                  json={"assistant_id": asst["id"],
                                        "max_completion_tokens": 2000})  # fmt: skip
        run = created.json()
        path = f"/v1/threads/{thread['id']}/messages"
        message = None
        for _ in range(2000):  # bounded: the message appears with the first token
            listed = (await http.get(path, params={"run_id": run["id"]})).json()["data"]
            if listed:
                message = listed[0]
                break
        assert message is not None
        if what == "delete":
            refused = await http.delete(f"{path}/{message['id']}")
        else:
            refused = await http.post(f"{path}/{message['id']}", json={"metadata": {"k": "v"}})
        assert refused.status_code == 400
        assert run["id"] in refused.json()["error"]["message"]
        await http.post(f"/v1/threads/{thread['id']}/runs/{run['id']}/cancel")
        kept = (await http.get(f"{path}/{message['id']}")).json()
        assert kept["metadata"] == {}


async def test_tool_choice_must_name_a_tool_the_run_has() -> None:
    async with (
        running() as server,
        httpx.AsyncClient(base_url=server.url, headers=BETA, timeout=TIMEOUT) as http,
    ):
        asst, thread = await assistant_and_thread(http, tools=[WEATHER])
        path = f"/v1/threads/{thread['id']}/runs"
        nope = {"type": "function", "function": {"name": "nope"}}
        for choice in (nope, "required"):
            tools = [] if choice == "required" else None
            body = {"assistant_id": asst["id"], "tool_choice": choice}
            if tools is not None:
                body["tools"] = tools
            refused = await http.post(path, json=body)
            assert (refused.status_code, refused.json()["error"]["param"]) == (400, "tool_choice")
        assert (await http.get(path)).json()["data"] == []


async def test_cancelling_a_finished_run_names_its_status() -> None:
    async with (
        running() as server,
        httpx.AsyncClient(base_url=server.url, headers=BETA, timeout=TIMEOUT) as http,
    ):
        thread, events = await _stream_run(http, {})
        run_id = events[0][1]["id"]
        refused = await http.post(f"/v1/threads/{thread['id']}/runs/{run_id}/cancel")
        assert refused.status_code == 400
        assert "'completed'" in refused.json()["error"]["message"]


async def test_a_thread_being_changed_takes_no_second_holder() -> None:
    config = Config(db=":memory:")
    store = await SqliteStore.open(":memory:")
    try:
        runs = Runs(RunContext(config, SimEngine(config), store), JobSupervisor())
        with runs.reserving("thread_1"):
            assert runs.active_run("thread_1") is not None
            with pytest.raises(NotAccepting), runs.reserving("thread_1"):
                pass
        assert runs.active_run("thread_1") is None  # released when nothing took it over
    finally:
        await store.close()
