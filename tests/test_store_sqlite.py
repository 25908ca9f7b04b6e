"""The stores: scoping, cascades and pagination on SQLite and PostgreSQL alike; SqliteStore's
batching, migrations, thread and durability."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sqlite3
import sys
import threading
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oxiserve.store import Kind, Order, Page, Record, SqliteStore, StoreError, open_store
from oxiserve.store.postgres import PostgresStore
from oxiserve.store.sqlite import MIGRATIONS
from tests.postgres import PrivatePostgres

TIMEOUT = 5.0
ROOT = str(Path(__file__).resolve().parents[1])  # the child process imports oxiserve from here
T = TypeVar("T")


async def within(awaitable: Awaitable[T]) -> T:
    return await asyncio.wait_for(awaitable, TIMEOUT)


@pytest.fixture
async def sqlite_store() -> AsyncIterator[SqliteStore]:
    opened = await within(SqliteStore.open(":memory:"))
    yield opened
    await within(opened.close())


@pytest.fixture(params=["sqlite", "postgres"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    """Each implementation of the store, on an empty database (the generic tests run on
    both; the ones about SQLite's thread and files use ``SqliteStore`` themselves)."""
    if request.param == "sqlite":
        opened: Any = await within(SqliteStore.open(":memory:"))
    else:
        server = request.getfixturevalue("private_postgres")
        opened = await within(PostgresStore.open(server.new_database()))
    yield opened
    await within(opened.close())


def message(object_id: str, thread: str = "thread_1", **fields: Any) -> Record:
    return Record(
        Kind.MESSAGE, object_id, {"id": object_id}, thread_id=thread, parent=thread, **fields
    )


async def ids(page: Awaitable[Page]) -> tuple[list[str], bool]:
    got = await within(page)
    return [body["id"] for body in got.data], got.has_more


def hold(store: SqliteStore) -> tuple[threading.Event, asyncio.Future[Any]]:
    """Keep the store's thread busy until the event is set, so later calls queue up."""
    release = threading.Event()
    held = store._writer.submit(lambda conn: release.wait(TIMEOUT), writes=False)
    return release, held


# Objects: round trips, replacement, scoping, cascades


async def test_put_get_round_trip_keeps_nested_json_and_unicode(store: SqliteStore) -> None:
    body = {"id": "asst_1", "name": "Zoë 助手 🚀", "tools": [{"type": "x", "n": [1, 2.5, None]}]}
    await within(store.put(Record(Kind.ASSISTANT, "asst_1", body)))
    assert await within(store.get(Kind.ASSISTANT, "asst_1")) == body
    assert await within(store.get(Kind.ASSISTANT, "asst_2")) is None


async def test_put_of_nothing_returns_at_once(sqlite_store: SqliteStore) -> None:
    before = sqlite_store.statistics()
    await within(sqlite_store.put())
    assert sqlite_store.statistics() == before


async def test_changing_the_dict_after_put_does_not_change_what_is_stored(
    store: SqliteStore,
) -> None:
    body: dict[str, Any] = {"id": "thread_1", "metadata": {"k": "v"}}
    put = asyncio.ensure_future(store.put(Record(Kind.THREAD, "thread_1", body)))
    await asyncio.sleep(0)  # one turn: put has encoded the body and queued it
    body["metadata"]["k"] = "changed"
    body["extra"] = 1
    await within(put)
    assert await within(store.get(Kind.THREAD, "thread_1")) == {
        "id": "thread_1",
        "metadata": {"k": "v"},
    }


async def test_replacing_a_record_keeps_its_place_in_the_list(store: SqliteStore) -> None:
    await within(store.put(message("m1"), message("m2"), message("m3")))
    await within(store.put(Record(Kind.MESSAGE, "m1", {"id": "m1", "v": 2}, parent="thread_1")))
    assert await ids(store.list(Kind.MESSAGE, "thread_1", order="asc")) == (
        ["m1", "m2", "m3"],
        False,
    )
    assert await within(store.get(Kind.MESSAGE, "m1")) == {"id": "m1", "v": 2}


async def test_get_list_and_delete_are_scoped_to_kind_and_owner(store: SqliteStore) -> None:
    await within(store.put(Record(Kind.THREAD, "thread_1", {"id": "thread_1"}, owner="alice")))
    await within(store.put(message("m1", owner="alice"), message("m2", owner="bob")))
    assert await within(store.get(Kind.THREAD, "thread_1")) is None
    assert await within(store.get(Kind.THREAD, "thread_1", owner="bob")) is None
    assert await within(store.get(Kind.MESSAGE, "thread_1", owner="alice")) is None
    assert await within(store.get(Kind.THREAD, "thread_1", owner="alice")) == {"id": "thread_1"}
    assert await ids(store.list(Kind.MESSAGE, "thread_1", owner="alice")) == (["m1"], False)
    assert await ids(store.list(Kind.MESSAGE, "thread_1", owner="bob")) == (["m2"], False)
    assert await ids(store.list(Kind.MESSAGE, "thread_1")) == ([], False)
    assert await ids(store.list(Kind.RUN, "thread_1", owner="alice")) == ([], False)
    assert await within(store.delete(Kind.THREAD, "thread_1", owner="bob")) is False
    assert await within(store.delete(Kind.MESSAGE, "thread_1", owner="alice")) is False
    assert await within(store.get(Kind.THREAD, "thread_1", owner="alice")) == {"id": "thread_1"}


async def test_deleting_a_thread_deletes_its_messages_runs_and_steps(store: SqliteStore) -> None:
    def record(kind: Kind, object_id: str, thread: str, parent: str) -> Record:
        return Record(kind, object_id, {"id": object_id}, thread_id=thread, parent=parent)

    await within(
        store.put(
            record(Kind.THREAD, "thread_1", "", ""),
            record(Kind.THREAD, "thread_2", "", ""),
            record(Kind.MESSAGE, "m1", "thread_1", "thread_1"),
            record(Kind.RUN, "run_1", "thread_1", "thread_1"),
            record(Kind.STEP, "step_1", "thread_1", "run_1"),
            record(Kind.MESSAGE, "m2", "thread_2", "thread_2"),
            record(Kind.RUN, "run_2", "thread_2", "thread_2"),
            record(Kind.STEP, "step_2", "thread_2", "run_2"),
        )
    )
    assert await within(store.delete(Kind.THREAD, "thread_1")) is True
    for kind, object_id in [
        (Kind.THREAD, "thread_1"),
        (Kind.MESSAGE, "m1"),
        (Kind.RUN, "run_1"),
        (Kind.STEP, "step_1"),
    ]:
        assert await within(store.get(kind, object_id)) is None
    assert await ids(store.list(Kind.THREAD, order="asc")) == (["thread_2"], False)
    assert await ids(store.list(Kind.MESSAGE, "thread_2")) == (["m2"], False)
    # A run's steps go with the run (parent = run id).
    assert await within(store.delete(Kind.RUN, "run_2")) is True
    assert await ids(store.list(Kind.STEP, "run_2")) == ([], False)
    assert await ids(store.list(Kind.MESSAGE, "thread_2")) == (["m2"], False)
    assert await within(store.delete(Kind.THREAD, "thread_9")) is False
    assert await within(store.delete(Kind.THREAD, "thread_1")) is False


# Lists and find


@pytest.fixture
async def five(store: SqliteStore) -> SqliteStore:
    """m1..m5 under thread_1 (m2 and m4 made by run_1), and m9 under another thread."""
    records = [message(f"m{n}", run_id="run_1" if n % 2 == 0 else "") for n in range(1, 6)]
    await within(store.put(*records[:2]))
    await within(store.put(message("m9", thread="thread_2")))
    await within(store.put(*records[2:]))
    return store


@pytest.mark.parametrize(
    ("order", "limit", "after", "before", "expected"),
    [
        ("asc", 20, None, None, (["m1", "m2", "m3", "m4", "m5"], False)),
        ("desc", 20, None, None, (["m5", "m4", "m3", "m2", "m1"], False)),
        ("asc", 2, None, None, (["m1", "m2"], True)),
        ("desc", 2, None, None, (["m5", "m4"], True)),
        ("asc", 5, None, None, (["m1", "m2", "m3", "m4", "m5"], False)),
        ("asc", 2, "m2", None, (["m3", "m4"], True)),
        ("asc", 3, "m2", None, (["m3", "m4", "m5"], False)),
        ("desc", 2, "m4", None, (["m3", "m2"], True)),
        ("desc", 2, "m2", None, (["m1"], False)),
        ("asc", 20, "m5", None, ([], False)),
        # `before` alone: the page just before it, has_more towards the start
        ("asc", 2, None, "m4", (["m2", "m3"], True)),
        ("asc", 3, None, "m4", (["m1", "m2", "m3"], False)),
        ("desc", 2, None, "m2", (["m4", "m3"], True)),
        ("desc", 20, None, "m2", (["m5", "m4", "m3"], False)),
        ("asc", 20, None, "m1", ([], False)),
        # both: the range between them, paged from `after`
        ("asc", 20, "m1", "m5", (["m2", "m3", "m4"], False)),
        ("asc", 2, "m1", "m5", (["m2", "m3"], True)),
        ("desc", 20, "m5", "m1", (["m4", "m3", "m2"], False)),
        ("asc", 20, "m4", "m2", ([], False)),
        # cursors not in this list
        ("asc", 20, "nope", None, ([], False)),
        ("asc", 20, None, "nope", ([], False)),
        ("asc", 20, "m9", None, ([], False)),
        ("desc", 20, "m1", "m9", ([], False)),
    ],
)
async def test_list_pages(
    five: SqliteStore,
    order: Order,
    limit: int,
    after: str | None,
    before: str | None,
    expected: tuple[list[str], bool],
) -> None:
    page = five.list(Kind.MESSAGE, "thread_1", limit=limit, order=order, after=after, before=before)
    assert await ids(page) == expected


async def test_list_filters_by_run_id(five: SqliteStore) -> None:
    assert await ids(five.list(Kind.MESSAGE, "thread_1", order="asc", run_id="run_1")) == (
        ["m2", "m4"],
        False,
    )
    # The cursor need not be one of the run's messages, only in the thread's list.
    page = five.list(Kind.MESSAGE, "thread_1", limit=1, order="asc", after="m1", run_id="run_1")
    assert await ids(page) == (["m2"], True)
    assert await ids(five.list(Kind.MESSAGE, "thread_1", run_id="run_9")) == ([], False)
    assert await ids(five.list(Kind.MESSAGE, "thread_2", run_id="")) == (["m9"], False)


async def test_list_rejects_a_limit_below_one(store: SqliteStore) -> None:
    with pytest.raises(ValueError, match="limit"):
        await within(store.list(Kind.MESSAGE, "thread_1", limit=0))
    with pytest.raises(ValueError, match="limit"):
        await within(store.find(Kind.RUN, ["queued"], limit=0))


async def test_find_returns_matching_statuses_of_every_owner_in_insert_order(
    store: SqliteStore,
) -> None:
    def run(object_id: str, status: str, owner: str) -> Record:
        body = {"id": object_id, "status": status}
        return Record(Kind.RUN, object_id, body, status=status, owner=owner)

    await within(
        store.put(
            run("run_1", "queued", "alice"),
            run("run_2", "completed", "alice"),
            run("run_3", "in_progress", "bob"),
            run("run_4", "queued", ""),
        )
    )
    await within(store.put(Record(Kind.MESSAGE, "m1", {"id": "m1"}, status="in_progress")))
    found = await within(store.find(Kind.RUN, {"queued", "in_progress"}))
    assert [body["id"] for body in found] == ["run_1", "run_3", "run_4"]
    assert [b["id"] for b in await within(store.find(Kind.RUN, ["queued"], limit=1))] == ["run_1"]
    assert await within(store.find(Kind.RUN, [])) == []
    assert await within(store.find(Kind.RUN, ["expired"])) == []


async def test_find_of_one_job_is_its_record_and_those_of_its_run(store: SqliteStore) -> None:
    def step(object_id: str, run_id: str, status: str) -> Record:
        body = {"id": object_id, "run_id": run_id}
        return Record(Kind.STEP, object_id, body, run_id=run_id, status=status, owner="bob")

    await within(store.put(
        Record(Kind.RUN, "run_1", {"id": "run_1"}, status="in_progress", owner="bob"),
        Record(Kind.RUN, "run_2", {"id": "run_2"}, status="in_progress"),
        step("step_1", "run_1", "in_progress"), step("step_2", "run_2", "in_progress"),
        step("step_3", "run_1", "completed"),
    ))  # fmt: skip
    runs = await within(store.find(Kind.RUN, ["in_progress"], job="run_1"))
    assert [b["id"] for b in runs] == ["run_1"]
    steps = await within(store.find(Kind.STEP, ["in_progress"], job="run_1"))
    assert [b["id"] for b in steps] == ["step_1"]
    assert await within(store.find(Kind.STEP, ["in_progress"], job="run_9")) == []


# Pagination against a model


@dataclass
class Model:
    """Lists as plain Python: ids in first-insert order per parent."""

    rows: dict[str, tuple[int, str, str]] = field(default_factory=dict)  # id -> seq, parent, run
    seq: int = 0

    def put(self, object_id: str, parent: str, run_id: str) -> None:
        if object_id not in self.rows:
            self.seq += 1
        seq = self.rows[object_id][0] if object_id in self.rows else self.seq
        self.rows[object_id] = (seq, parent, run_id)

    def listing(self, parent: str, order: Order) -> list[str]:
        mine = sorted((seq, i) for i, (seq, p, _) in self.rows.items() if p == parent)
        return [i for _, i in (mine if order == "asc" else reversed(mine))]

    def page(
        self, parent: str, order: Order, limit: int, after: str | None, before: str | None
    ) -> tuple[list[str], bool]:
        listing = self.listing(parent, order)
        if (after is not None and after not in listing) or (
            before is not None and before not in listing
        ):
            return [], False
        start = listing.index(after) + 1 if after is not None else 0
        end = listing.index(before) if before is not None else len(listing)
        window = listing[start:end]
        page = window[-limit:] if before is not None and after is None else window[:limit]
        return page, len(window) > limit


ID = st.sampled_from([f"m{n}" for n in range(8)])
STEP = st.one_of(
    st.tuples(st.just("put"), ID, st.sampled_from(["a", "b"]), st.sampled_from(["", "r"])),
    st.tuples(st.just("delete"), ID),
)


async def walk(
    store: SqliteStore, parent: str, order: Order, limit: int, *, backwards: bool
) -> list[str]:
    """Every id of the list, a page at a time (from the end with `before` if backwards)."""
    seen: list[str] = []
    cursor: str | None = None
    if backwards:
        other: Order = "desc" if order == "asc" else "asc"
        seen, _ = await ids(store.list(Kind.MESSAGE, parent, limit=1, order=other))
        cursor = seen[0] if seen else None
        if cursor is None:
            return []
    for _ in range(20):
        before, after = (cursor, None) if backwards else (None, cursor)
        page = store.list(
            Kind.MESSAGE, parent, limit=limit, order=order, after=after, before=before
        )
        got, more = await ids(page)
        assert len(got) == limit if more else len(got) <= limit
        seen = got + seen if backwards else seen + got
        if not more:
            return seen
        cursor = got[0] if backwards else got[-1]
    raise AssertionError("the walk did not end")


async def check_against_model(steps: list[tuple[str, ...]], db: str = ":memory:") -> None:
    store: Any = await within(open_store(db))
    model = Model()
    try:
        for step in steps:
            if step[0] == "put":
                _, object_id, parent, run_id = step
                body = {"id": object_id, "parent": parent}
                record = Record(Kind.MESSAGE, object_id, body, parent=parent, run_id=run_id)
                await within(store.put(record))
                model.put(object_id, parent, run_id)
            else:
                assert await within(store.delete(Kind.MESSAGE, step[1])) is (step[1] in model.rows)
                model.rows.pop(step[1], None)
        for parent in ("a", "b"):
            for order in ("asc", "desc"):
                expected = model.listing(parent, order)
                for limit in (1, 2, 3):
                    assert await walk(store, parent, order, limit, backwards=False) == expected
                    assert await walk(store, parent, order, limit, backwards=True) == expected
                cursors = [None, "nope", *model.rows]
                for after in cursors:
                    for before in cursors:
                        page = store.list(
                            Kind.MESSAGE, parent, limit=2, order=order, after=after, before=before
                        )
                        assert await ids(page) == model.page(parent, order, 2, after, before)
            runs = [i for i in model.listing(parent, "asc") if model.rows[i][2] == "r"]
            assert await ids(store.list(Kind.MESSAGE, parent, order="asc", run_id="r")) == (
                runs,
                False,
            )
    finally:
        await within(store.close())


@settings(max_examples=60, deadline=None)
@given(steps=st.lists(STEP, max_size=25))
def test_pages_match_a_model_over_random_puts_and_deletes(steps: list[tuple[str, ...]]) -> None:
    asyncio.run(check_against_model(steps))


@settings(max_examples=30, deadline=None)
@given(steps=st.lists(STEP, max_size=25))
def test_postgres_pages_match_the_model_too(
    private_postgres: PrivatePostgres, steps: list[tuple[str, ...]]
) -> None:
    import psycopg

    db = private_postgres.kept_database("model")  # one database, emptied for each example
    with contextlib.suppress(psycopg.errors.UndefinedTable), psycopg.connect(db) as conn:
        conn.execute("DELETE FROM objects")
    asyncio.run(check_against_model(steps, db))


# Batching and failures


async def test_many_concurrent_puts_all_land_in_fewer_transactions(
    sqlite_store: SqliteStore,
) -> None:
    before = sqlite_store.statistics()
    await within(asyncio.gather(*(sqlite_store.put(message(f"m{n:03}")) for n in range(500))))
    after = sqlite_store.statistics()
    assert after.operations - before.operations == 500
    assert after.transactions - before.transactions < 500
    page = await within(sqlite_store.list(Kind.MESSAGE, "thread_1", limit=1000, order="asc"))
    assert [body["id"] for body in page.data] == [f"m{n:03}" for n in range(500)]


async def test_a_failing_call_fails_alone_in_its_batch(sqlite_store: SqliteStore) -> None:
    release, held = hold(sqlite_store)
    bad = Record(Kind.MESSAGE, None, {"id": "bad"})  # type: ignore[arg-type]  # NOT NULL fails
    before = sqlite_store.statistics()
    calls = [
        asyncio.ensure_future(sqlite_store.put(message("m1"))),
        asyncio.ensure_future(sqlite_store.put(message("m2"), bad)),
        asyncio.ensure_future(sqlite_store.put(message("m3"))),
        asyncio.ensure_future(sqlite_store.get(Kind.MESSAGE, "m1")),
    ]
    await asyncio.sleep(0)  # one turn: each call has queued its operation behind the held one
    release.set()
    await within(held)
    results = await within(asyncio.gather(*calls, return_exceptions=True))
    assert (
        sqlite_store.statistics().transactions - before.transactions <= 2
    )  # held one, then the rest
    assert results[0] is None
    assert isinstance(results[1], StoreError)
    assert isinstance(results[1].__cause__, sqlite3.IntegrityError)
    assert results[2] is None
    assert results[3] == {"id": "m1"}  # it read the batch's own write
    # The failing call's other record was rolled back with it.
    assert await ids(sqlite_store.list(Kind.MESSAGE, "thread_1", order="asc")) == (
        ["m1", "m3"],
        False,
    )


async def test_a_body_orjson_cannot_encode_fails_that_put_at_once(store: SqliteStore) -> None:
    with pytest.raises(TypeError):
        await within(store.put(message("m1"), Record(Kind.MESSAGE, "m2", {"x": object()})))
    await within(store.put(message("m3")))
    assert await ids(store.list(Kind.MESSAGE, "thread_1")) == (["m3"], False)


class Crash(BaseException):
    pass


async def test_if_the_thread_fails_every_waiting_and_later_call_gets_store_error(
    sqlite_store: SqliteStore, caplog: pytest.LogCaptureFixture
) -> None:
    release, held = hold(sqlite_store)

    def crash(conn: sqlite3.Connection) -> None:
        raise Crash

    crashed = sqlite_store._writer.submit(crash, writes=True)
    queued = asyncio.ensure_future(sqlite_store.put(message("m1")))
    await asyncio.sleep(0)  # one turn: the put is queued behind the crash
    with caplog.at_level(logging.CRITICAL, logger="oxiserve.store"):
        release.set()
        await within(asyncio.gather(held, return_exceptions=True))  # its batch may be the crash's
        with pytest.raises(StoreError, match="thread failed") as failed:
            await within(crashed)
        with pytest.raises(StoreError, match="thread failed"):
            await within(queued)
    assert isinstance(failed.value.__cause__, Crash)
    assert [r.message for r in caplog.records] == [
        "the store's thread failed; the store is unusable"
    ]
    with pytest.raises(StoreError, match="thread failed"):
        await within(sqlite_store.get(Kind.MESSAGE, "m1"))


async def test_sqlite_runs_only_on_the_store_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    threads: set[int] = set()
    connect = sqlite3.connect

    class Recording(sqlite3.Connection):
        def execute(self, *args: Any, **kwargs: Any) -> sqlite3.Cursor:
            threads.add(threading.get_ident())
            return super().execute(*args, **kwargs)

        def executemany(self, *args: Any, **kwargs: Any) -> sqlite3.Cursor:
            threads.add(threading.get_ident())
            return super().executemany(*args, **kwargs)

        def executescript(self, *args: Any, **kwargs: Any) -> sqlite3.Cursor:
            threads.add(threading.get_ident())
            return super().executescript(*args, **kwargs)

    def recording_connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        threads.add(threading.get_ident())
        return connect(*args, factory=Recording, **kwargs)

    monkeypatch.setattr(sqlite3, "connect", recording_connect)
    store = await within(SqliteStore.open(":memory:"))
    await within(store.put(message("m1")))
    await within(store.get(Kind.MESSAGE, "m1"))
    await within(store.list(Kind.MESSAGE, "thread_1", after="m1"))
    await within(store.find(Kind.MESSAGE, ["x"]))
    await within(store.delete(Kind.MESSAGE, "m1"))
    store_thread = store._writer.thread.ident
    await within(store.close())
    assert threads == {store_thread}
    assert threading.get_ident() not in threads


# Opening, migrations and closing


async def test_a_fresh_database_has_every_migration_and_reopening_keeps_data(
    tmp_path: Path,
) -> None:
    path = str(tmp_path / "store.db")
    store = await within(SqliteStore.open(path))
    await within(store.put(Record(Kind.THREAD, "thread_1", {"id": "thread_1"})))
    await within(store.close())
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (len(MIGRATIONS),)
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    conn.close()
    store = await within(SqliteStore.open(path))
    assert await within(store.get(Kind.THREAD, "thread_1")) == {"id": "thread_1"}
    await within(store.close())


async def test_a_database_from_a_newer_oxiserve_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    conn.close()
    with pytest.raises(
        StoreError, match=r"schema version 2 is newer than this oxiserve knows \(1\)"
    ):
        await within(SqliteStore.open(str(path)))


async def test_a_file_that_is_not_sqlite_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_bytes(b"these are not the pages you are looking for\n" * 100)
    with pytest.raises(StoreError, match="not an SQLite database") as refused:
        await within(SqliteStore.open(str(path)))
    assert "\n" not in str(refused.value)
    assert isinstance(refused.value.__cause__, sqlite3.DatabaseError)


async def test_calls_after_close_raise_and_close_is_idempotent() -> None:
    store = await within(SqliteStore.open(":memory:"))
    put = asyncio.ensure_future(store.put(message("m1")))
    await asyncio.sleep(0)  # one turn: the put is queued
    await within(store.close())
    await within(put)  # queued before close: finished, not dropped
    await within(store.close())
    assert not store._writer.thread.is_alive()
    with pytest.raises(StoreError, match="closed"):
        await within(store.get(Kind.MESSAGE, "m1"))
    with pytest.raises(StoreError, match="closed"):
        await within(store.put(message("m2")))


DURABILITY_SCRIPT = """
import asyncio, os, signal, sys
from oxiserve.store import Kind, Record, SqliteStore

async def main():
    store = await SqliteStore.open(sys.argv[1])
    await store.put(Record(Kind.THREAD, "thread_1", {"id": "thread_1", "n": 1}))
    print("ok", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)

asyncio.run(main())
"""


async def test_a_put_that_returned_survives_sigkill(tmp_path: Path) -> None:
    path = str(tmp_path / "store.db")
    env = {**os.environ, "PYTHONPATH": ROOT}
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", DURABILITY_SCRIPT, path, stdout=asyncio.subprocess.PIPE, env=env
    )
    stdout, _ = await asyncio.wait_for(child.communicate(), 30)
    assert (stdout, child.returncode) == (b"ok\n", -signal.SIGKILL)
    assert (tmp_path / "store.db-wal").exists()  # killed before any checkpoint or clean close
    store = await within(SqliteStore.open(path))
    assert await within(store.get(Kind.THREAD, "thread_1")) == {"id": "thread_1", "n": 1}
    await within(store.close())


async def test_a_postgres_failure_is_a_store_error(private_postgres: PrivatePostgres) -> None:
    import psycopg

    db = private_postgres.new_database()
    store = await within(PostgresStore.open(db))
    try:
        await within(store.put(message("m1")))
        with psycopg.connect(db, autocommit=True) as conn:
            conn.execute("DROP TABLE objects")  # the database changes under the store
        with pytest.raises(StoreError, match="the operation failed"):
            await within(store.get(Kind.MESSAGE, "m1"))
    finally:
        await within(store.close())
    with pytest.raises(StoreError, match="closed"):
        await store.get(Kind.MESSAGE, "m1")


async def test_a_postgres_schema_from_a_newer_oxiserve_is_refused(
    private_postgres: PrivatePostgres,
) -> None:
    import psycopg

    db = private_postgres.new_database()
    await within((await within(PostgresStore.open(db))).close())
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("INSERT INTO oxiserve_schema VALUES (99)")
    with pytest.raises(StoreError, match="newer than this oxiserve knows"):
        await within(PostgresStore.open(db))
