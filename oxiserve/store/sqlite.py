"""The embedded store: SQLite on one writer thread that batches calls into shared transactions.

The event loop never touches sqlite.  Each call becomes an operation queued to the store's one
thread, which owns the only connection (so ``":memory:"`` works: that database lives in its
connection).  The thread takes everything waiting, runs it in one transaction with a savepoint
per operation (a failing call fails alone), commits, then answers each caller on its loop.  One
commit for many calls is what makes many small writes cheap; WAL with ``synchronous=NORMAL``
keeps every committed write when the process dies.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import sqlite3
import threading
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import orjson

from oxiserve.store.base import Kind, Order, Page, Record, StoreError
from oxiserve.store.queries import (
    PageQuery,
    check_limit,
    cursor_sql,
    encode,
    first_schema,
    upsert_sql,
)

# Each script runs once, in order; PRAGMA user_version counts the ones a database has had.
MIGRATIONS: tuple[str, ...] = (first_schema("INTEGER PRIMARY KEY AUTOINCREMENT", "BLOB"),)

BATCH_LIMIT = 256  # operations per transaction: bounds how long one commit keeps callers waiting

_UPSERT = upsert_sql("?")
_SCOPE = "kind = ? AND owner = ?"

log = logging.getLogger("oxiserve.store")
T = TypeVar("T")
Body = dict[str, Any]
Work = Callable[[sqlite3.Connection], T]


@dataclass(frozen=True, slots=True)
class StoreStatistics:
    operations: int  # calls the thread has run (a put of many records is one)
    transactions: int  # batches run, each in one transaction


@dataclass(slots=True, eq=False)
class _Operation:
    work: Work[Any]
    writes: bool
    future: asyncio.Future[Any]
    answered: bool = False


class _BatchLost(Exception):
    """SQLite rolled the whole batch back (I/O error, disk full): none of its writes stand."""


def _settle(future: asyncio.Future[Any], value: Any, error: BaseException | None) -> None:
    if future.done():  # the caller was cancelled: nobody is waiting
        return
    if error is None:
        future.set_result(value)
    else:
        future.set_exception(error)


def _answer(op: _Operation, value: Any = None, error: BaseException | None = None) -> None:
    op.answered = True
    with contextlib.suppress(RuntimeError):  # that loop is closed: nobody can be waiting
        op.future.get_loop().call_soon_threadsafe(_settle, op.future, value, error)


def _failure(message: str, cause: BaseException) -> StoreError:
    error = StoreError(f"{message}: {cause}")
    error.__cause__ = cause
    return error


def _connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)  # we write BEGIN and COMMIT ourselves
    try:
        conn.execute("PRAGMA busy_timeout = 5000")
        conn.execute("PRAGMA journal_mode = WAL")  # ":memory:" stays "memory", which is fine
        conn.execute("PRAGMA synchronous = NORMAL")
        _migrate(conn, path)
    except BaseException:
        conn.close()
        raise
    return conn


def _migrate(conn: sqlite3.Connection, path: str) -> None:
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    if version > len(MIGRATIONS):
        raise StoreError(
            f"{path}: schema version {version} is newer than this oxiserve knows "
            f"({len(MIGRATIONS)}); use a newer oxiserve or another database"
        )
    if version == len(MIGRATIONS):
        return
    scripts = "\n".join(MIGRATIONS[version:])
    try:  # BEGIN inside the script: executescript() commits a transaction begun outside it
        conn.executescript(
            f"BEGIN IMMEDIATE;\n{scripts}\nPRAGMA user_version = {len(MIGRATIONS)};\nCOMMIT;"
        )
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _open_failure(path: str, exc: Exception) -> StoreError:
    if isinstance(exc, StoreError):
        return exc
    if isinstance(exc, sqlite3.DatabaseError) and "not a database" in str(exc):
        return _failure(f"{path}: not an SQLite database", exc)
    return _failure(f"{path}: cannot open the store", exc)


class _Writer:
    """The store's thread: the queue it serves, its connection and its counters."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.queue: collections.deque[_Operation] = collections.deque()
        self.cond = threading.Condition()
        self.closing = False
        self.broken: StoreError | None = None
        self.operations = 0
        self.transactions = 0
        self.thread = threading.Thread(target=self._main, name="oxiserve-store", daemon=True)

    def submit(self, work: Work[Any], *, writes: bool) -> asyncio.Future[Any]:
        op = _Operation(work, writes, asyncio.get_running_loop().create_future())
        with self.cond:
            if self.broken is not None:
                raise self.broken
            if self.closing:
                raise StoreError(f"{self.path}: the store is closed")
            self.queue.append(op)
            self.cond.notify()
        return op.future

    def stop(self) -> None:
        with self.cond:
            self.closing = True
            self.cond.notify()

    def _main(self) -> None:
        opened = self.queue.popleft()  # open() queued it before starting the thread
        try:
            conn = _connect(self.path)
        except Exception as exc:
            self._fail_all([opened], _open_failure(self.path, exc))
            return
        _answer(opened)
        batch: list[_Operation] = []
        try:
            while batch := self._take():
                self._run_batch(conn, batch)
        except BaseException as exc:  # a bug or MemoryError: fail everyone rather than hang them
            log.critical("the store's thread failed; the store is unusable", exc_info=exc)
            self._fail_all(batch, _failure("the store's thread failed", exc))
        finally:
            conn.close()

    def _take(self) -> list[_Operation]:
        with self.cond:
            while not self.queue and not self.closing:
                self.cond.wait()
            return [self.queue.popleft() for _ in range(min(len(self.queue), BATCH_LIMIT))]

    def _run_batch(self, conn: sqlite3.Connection, batch: list[_Operation]) -> None:
        outcomes: list[tuple[Any, StoreError | None]] = []
        try:
            conn.execute("BEGIN IMMEDIATE" if any(op.writes for op in batch) else "BEGIN")
            outcomes.extend(self._run_one(conn, op) for op in batch)
            conn.execute("COMMIT")
        except (sqlite3.Error, _BatchLost) as exc:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):  # the next BEGIN will report it
                    conn.execute("ROLLBACK")
            lost = _failure("the transaction failed", exc.__cause__ or exc)
            outcomes = [(None, lost)] * len(batch)
        self.transactions += 1
        self.operations += len(batch)
        for op, (value, error) in zip(batch, outcomes, strict=True):
            _answer(op, value, error)

    @staticmethod
    def _run_one(conn: sqlite3.Connection, op: _Operation) -> tuple[Any, StoreError | None]:
        if op.writes:
            conn.execute("SAVEPOINT operation")
        try:
            value = op.work(conn)
        except Exception as exc:
            if not conn.in_transaction:
                raise _BatchLost from exc
            if op.writes:
                try:
                    conn.execute("ROLLBACK TO operation")
                    conn.execute("RELEASE operation")
                except sqlite3.Error:
                    raise _BatchLost from exc
            return None, _failure("the operation failed", exc)
        if op.writes:
            conn.execute("RELEASE operation")
        return value, None

    def _fail_all(self, batch: list[_Operation], error: StoreError) -> None:
        with self.cond:
            self.broken = error
            pending = [op for op in batch if not op.answered] + list(self.queue)
            self.queue.clear()
        for op in pending:
            _answer(op, error=error)


def _read_page(query: PageQuery) -> Work[Page]:
    def read(conn: sqlite3.Connection) -> Page:
        bounds = []
        for cursor, later in query.cursors():
            row = conn.execute(cursor_sql("?"), query.cursor_args(cursor)).fetchone()
            if row is None:
                return Page([], has_more=False)
            bounds.append((row[0], later))
        sql, args = query.sql("?", bounds)
        return query.page([body for (body,) in conn.execute(sql, args).fetchall()])

    return read


class SqliteStore:
    """:class:`~oxiserve.store.base.Store` on SQLite; make one with ``await open(path)``.

    ``list``: ``after`` and ``before`` bound the page; with ``before`` alone the page is the
    ``limit`` records just before it (the previous page), and ``has_more`` says whether more lie
    beyond it towards the start.  A body orjson cannot encode makes ``put`` raise orjson's
    ``TypeError`` at once; every failure of the database is a :class:`StoreError`.
    """

    def __init__(self, writer: _Writer) -> None:
        self._writer = writer

    @classmethod
    async def open(cls, path: str) -> SqliteStore:
        writer = _Writer(path)
        opened = writer.submit(lambda conn: None, writes=False)
        writer.thread.start()
        try:
            await opened
        except BaseException:
            writer.stop()
            raise
        return cls(writer)

    def statistics(self) -> StoreStatistics:
        return StoreStatistics(self._writer.operations, self._writer.transactions)

    async def put(self, *records: Record) -> None:
        if not records:
            return
        rows = [encode(record) for record in records]  # now: the caller may change its dicts

        def put(conn: sqlite3.Connection) -> None:
            conn.executemany(_UPSERT, rows)

        await self._call(put, writes=True)

    async def get(self, kind: Kind, object_id: str, *, owner: str = "") -> Body | None:
        def get(conn: sqlite3.Connection) -> Body | None:
            sql = f"SELECT body FROM objects WHERE id = ? AND {_SCOPE}"
            row = conn.execute(sql, (object_id, kind, owner)).fetchone()
            return None if row is None else cast(Body, orjson.loads(row[0]))

        return await self._call(get, writes=False)

    async def delete(self, kind: Kind, object_id: str, *, owner: str = "") -> bool:
        def delete(conn: sqlite3.Connection) -> bool:
            sql = f"DELETE FROM objects WHERE id = ? AND {_SCOPE}"
            if conn.execute(sql, (object_id, kind, owner)).rowcount == 0:
                return False
            sql = "DELETE FROM objects WHERE thread_id = ? OR parent = ?"
            conn.execute(sql, (object_id, object_id))
            return True

        return await self._call(delete, writes=True)

    async def list(
        self,
        kind: Kind,
        parent: str = "",
        *,
        limit: int = 20,
        order: Order = "desc",
        after: str | None = None,
        before: str | None = None,
        run_id: str | None = None,
        owner: str = "",
    ) -> Page:
        query = PageQuery(kind, parent, owner, limit, order, after, before, run_id)
        return await self._call(_read_page(query), writes=False)

    async def find(
        self, kind: Kind, statuses: Collection[str], *, limit: int = 1000, job: str | None = None
    ) -> Sequence[Body]:
        check_limit(limit)
        wanted = [*statuses]
        if not wanted:
            return []

        def find(conn: sqlite3.Connection) -> list[Body]:
            marks = ", ".join("?" * len(wanted))
            of_job, args = ("", []) if job is None else (" AND (id = ? OR run_id = ?)", [job] * 2)
            sql = f"SELECT body FROM objects WHERE kind = ? AND status IN ({marks}){of_job}"
            rows = conn.execute(f"{sql} ORDER BY seq LIMIT ?", [kind, *wanted, *args, limit])
            return [orjson.loads(body) for (body,) in rows]

        return await self._call(find, writes=False)

    async def close(self) -> None:
        self._writer.stop()  # the thread finishes what is queued, then closes the connection
        await asyncio.to_thread(self._writer.thread.join)

    async def _call(self, work: Work[T], *, writes: bool) -> T:
        return cast(T, await self._writer.submit(work, writes=writes))
