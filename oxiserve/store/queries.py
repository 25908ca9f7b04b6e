"""What both SQL stores ask of their one table: rows from records, and a list page's SQL.

The SQLite and PostgreSQL stores differ in how they run a statement (a thread and ``?``
marks, or asyncio and ``%s``), not in what they run: it is written once here.

    query = PageQuery(Kind.MESSAGE, "thread_1", "", 20, "desc", None, None, None)
    for cursor, later in query.cursors(): ...        # look each cursor's seq up (CURSOR_SQL)
    sql, args = query.sql("?", bounds)               # then read the page
    page = query.page(bodies)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from oxiserve.store.base import Kind, Order, Page, Record


def first_schema(seq: str, body: str) -> str:
    """Migration 1: the one table (with each database's types for ``seq`` and ``body``) and
    the indexes the queries below use."""
    return f"""
    CREATE TABLE objects (
        seq {seq},
        id TEXT NOT NULL UNIQUE,
        kind TEXT NOT NULL,
        owner TEXT NOT NULL,
        thread_id TEXT NOT NULL,
        parent TEXT NOT NULL,
        run_id TEXT NOT NULL,
        status TEXT NOT NULL,
        body {body} NOT NULL
    );
    CREATE INDEX objects_list ON objects (kind, owner, parent, seq);
    CREATE INDEX objects_run ON objects (kind, owner, parent, run_id, seq);
    CREATE INDEX objects_status ON objects (kind, status, seq);
    CREATE INDEX objects_thread ON objects (thread_id);
    CREATE INDEX objects_parent ON objects (parent);
    """


def upsert_sql(mark: str) -> str:
    """Insert a row (as ``encode`` makes it), or replace all but its kind, owner and place."""
    marks = ", ".join([mark] * 8)
    return f"""
    INSERT INTO objects (id, kind, owner, thread_id, parent, run_id, status, body)
    VALUES ({marks})
    ON CONFLICT (id) DO UPDATE SET
        thread_id = excluded.thread_id,
        parent = excluded.parent, run_id = excluded.run_id, status = excluded.status,
        body = excluded.body
    """


def encode(record: Record) -> tuple[Any, ...]:
    """The row of ``record``: id, kind, owner, thread_id, parent, run_id, status, body."""
    body = record.body if isinstance(record.body, dict) else dict(record.body)
    fields = (record.kind, record.owner, record.thread_id, record.parent, record.run_id)
    return (record.id, *fields, record.status, orjson.dumps(body))


def check_limit(limit: int) -> None:
    if limit < 1:
        raise ValueError(f"limit must be at least 1, not {limit}")


def cursor_sql(mark: str) -> str:
    """The seq of a cursor record (id, kind, owner, parent)."""
    return (f"SELECT seq FROM objects WHERE id = {mark} AND kind = {mark} AND owner = {mark} "
            f"AND parent = {mark}")  # fmt: skip


@dataclass(frozen=True, slots=True)
class PageQuery:
    """One ``Store.list`` call: ``after`` and ``before`` bound the page; with ``before``
    alone the page is the ``limit`` records just before it (read towards the start of the
    list, then turned round), and ``has_more`` says whether more lie beyond it."""

    kind: Kind
    parent: str
    owner: str
    limit: int
    order: Order
    after: str | None
    before: str | None
    run_id: str | None

    def __post_init__(self) -> None:
        check_limit(self.limit)
        if self.order not in ("asc", "desc"):
            raise ValueError(f"order must be 'asc' or 'desc', not {self.order!r}")

    def cursors(self) -> list[tuple[str, bool]]:
        """The cursor ids to look up, each with whether the page lies after it (seq >)."""
        ascending = self.order == "asc"
        pairs = ((self.after, ascending), (self.before, not ascending))
        return [(cursor, later) for cursor, later in pairs if cursor is not None]

    def cursor_args(self, cursor: str) -> tuple[str, ...]:
        return (cursor, self.kind, self.owner, self.parent)

    @property
    def backwards(self) -> bool:
        return self.before is not None and self.after is None

    def sql(self, mark: str, bounds: Sequence[tuple[int, bool]]) -> tuple[str, list[Any]]:
        """The page's statement and arguments; ``bounds``: each cursor's seq, and whether the
        page lies after it."""
        where = [f"kind = {mark}", f"owner = {mark}", f"parent = {mark}"]
        args: list[Any] = [self.kind, self.owner, self.parent]
        if self.run_id is not None:
            where.append(f"run_id = {mark}")
            args.append(self.run_id)
        for seq, later in bounds:
            where.append(f"seq > {mark}" if later else f"seq < {mark}")
            args.append(seq)
        direction = "ASC" if (self.order == "asc") != self.backwards else "DESC"
        sql = f"SELECT body FROM objects WHERE {' AND '.join(where)} ORDER BY seq {direction} "
        return sql + f"LIMIT {mark}", [*args, self.limit + 1]

    def page(self, bodies: Sequence[bytes]) -> Page:
        """The page from the bodies the statement read (one more than ``limit``, if any)."""
        data = [orjson.loads(body) for body in bodies[: self.limit]]
        if self.backwards:
            data.reverse()
        return Page(data, has_more=len(bodies) > self.limit)
