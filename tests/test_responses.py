"""Responses beyond the SDK flows: restart recovery, shutdown, the writer's bookkeeping."""

from __future__ import annotations

from pathlib import Path

import httpx

from oxiserve.engine.base import ToolCall
from oxiserve.responses import objects, recover
from oxiserve.responses.job import RESTARTED, SHUT_DOWN, response_record
from oxiserve.responses.writer import ListChannel, ResponseWriter, replay
from oxiserve.store.base import Kind
from oxiserve.store.sqlite import SqliteStore
from tests.conftest import TIMEOUT, running


def _response(status: str) -> dict[str, object]:
    response = objects.response_object(objects.new_id("resp"), "oxiserve-sim", {},
                                       background=True)  # fmt: skip
    response["status"] = status
    return response


async def test_recover_fails_what_a_previous_process_left_unfinished() -> None:
    store = await SqliteStore.open(":memory:")
    try:
        running_one, queued, done = (
            _response("in_progress"),
            _response("queued"),
            _response("completed"),
        )
        running_one["output"] = [objects.message_item("msg_1", "Half", "in_progress")]
        await store.put(response_record(running_one, "key"), response_record(queued, ""),
                        response_record(done, ""))  # fmt: skip
        assert await recover(store) == 2
        failed = await store.get(Kind.RESPONSE, str(running_one["id"]), owner="key")
        assert failed is not None
        assert failed["status"] == "failed"
        assert failed["error"] == {"code": "server_error", "message": RESTARTED}
        assert failed["output"][0]["status"] == "incomplete"
        assert failed["output"][0]["content"][0]["text"] == "Half"
        assert await store.get(Kind.RESPONSE, str(done["id"])) == done
        assert await recover(store) == 0
    finally:
        await store.close()


async def test_a_background_response_cut_by_shutdown_is_stored_failed(tmp_path: Path) -> None:
    db = str(tmp_path / "r.db")
    async with (
        running(db=db, sim_itl_ms=5, shutdown_timeout=0.1) as server,
        httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT) as http,
    ):
        created = await http.post("/v1/responses", json={
            "model": "oxiserve-sim", "input": "go", "background": True,
            "max_output_tokens": 100_000,
        })  # fmt: skip
        response_id = created.json()["id"]
    store = await SqliteStore.open(db)
    try:
        stored = await store.get(Kind.RESPONSE, response_id)
        assert stored is not None
        assert (stored["status"], stored["error"]) == (
            "failed", {"code": "server_error", "message": SHUT_DOWN},
        )  # fmt: skip
    finally:
        await store.close()


def test_the_writer_numbers_every_frame_and_finds_catch_up_numbers() -> None:
    writer = ResponseWriter(channel := ListChannel())
    response = _response("queued")  # a background response starts queued
    writer.begin(response)  # created, queued, in_progress: 0, 1, 2
    writer.open_message(0, "msg_1")  # 3, 4
    for piece in ("He", "ll", "o"):
        writer.text(0, piece)  # 5, 6, 7
    writer.close_message(0, "Hello")  # 8, 9, 10
    writer.function_call(1, "fc_1", ToolCall("call_1", "f", '{"a": 1}'))  # 11, 12, 13, 14
    assert len(channel.frames) == 15
    assert [f.count(b'"sequence_number":%d,' % i) for i, f in enumerate(channel.frames)] == [1] * 15
    assert writer.seqs[0].tolist() == [5, 6, 7]
    assert writer.ends[0].tolist() == [2, 4, 5]
    assert writer.delivered_at(6) == {0: 2}  # it had frame 5 ("He")
    assert writer.delivered_at(0) == {}
    assert b'"sequence_number":7,' in writer.catch_up(0, "llo", 2)  # stands for frames 6-7
    assert b'"delta":"llo"' in writer.catch_up(0, "llo", 2)


def test_a_replay_repeats_the_live_frames() -> None:
    writer = ResponseWriter(channel := ListChannel())
    response = _response("queued")
    writer.begin(response)
    writer.open_message(0, "msg_1")
    for piece in ("Hel", "lo", "!"):
        writer.text(0, piece)
    item = writer.close_message(0, "Hello!")
    response.update(status="completed", output=[item], _layout=writer.layout())
    writer.finish("response.completed", response)
    assert replay(response) == channel.frames
