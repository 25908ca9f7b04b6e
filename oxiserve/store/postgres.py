"""The store on PostgreSQL (``--db postgresql://...``, the ``[postgres]`` extra): psycopg 3's
async connections from a pool, the same one table and the same semantics as SQLite's.

Every call is one transaction on a pooled connection; a body is ``bytea`` holding the same
orjson the SQLite store keeps (the server never queries inside one).  Migrations are
versioned in ``oxiserve_schema``, run once under an advisory lock, so replicas starting
together do not race.

    store = await PostgresStore.open("postgresql://oxiserve@127.0.0.1:5432/oxiserve")
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any, cast

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

MIGRATIONS: tuple[str, ...] = (first_schema("BIGSERIAL PRIMARY KEY", "BYTEA"),)
_LOCK = 0x6F78697365727665  # pg_advisory_xact_lock key of the migrations ("oxiserve")
POOL_MAX = 8

_UPSERT = upsert_sql("%s")
_SCOPE = "kind = %s AND owner = %s"
Body = dict[str, Any]


def _module() -> tuple[Any, Any]:
    try:
        import psycopg
        import psycopg_pool
    except ImportError:
        raise StoreError(
            "a postgresql:// store needs the [postgres] extra: pip install 'oxiserve[postgres]'"
        ) from None
    return psycopg, psycopg_pool


def _body(raw: Any) -> Body:
    return cast(Body, orjson.loads(bytes(raw)))


class PostgresStore:
    """:class:`~oxiserve.store.base.Store` on PostgreSQL (see the module docstring)."""

    def __init__(self, pool: Any, failures: tuple[type[BaseException], ...], url: str) -> None:
        self._pool = pool
        self._failures = failures  # the database's errors, and no connection free in time
        self._url = url
        self._closed = False

    @classmethod
    async def open(cls, url: str) -> PostgresStore:
        psycopg, psycopg_pool = _module()
        try:  # one connection first: its error says what is wrong (a pool only times out)
            async with await psycopg.AsyncConnection.connect(url, connect_timeout=5) as conn:
                await _migrate(conn, url)
        except psycopg.Error as exc:
            raise StoreError(f"{_safe(url)}: cannot open the store: {_line(exc)}") from None
        pool = psycopg_pool.AsyncConnectionPool(url, min_size=1, max_size=POOL_MAX, open=False)
        try:
            await pool.open(wait=True, timeout=10.0)
        except BaseException as exc:
            await pool.close()
            if isinstance(exc, KeyboardInterrupt | SystemExit):
                raise
            raise StoreError(f"{_safe(url)}: cannot open the store: {_line(exc)}") from None
        return cls(pool, (psycopg.Error, psycopg_pool.PoolTimeout), url)

    async def _run(self, work: Any) -> Any:
        """``work(conn)`` in one transaction; a database failure is a StoreError."""
        if self._closed:
            raise StoreError(f"{_safe(self._url)}: the store is closed")
        try:
            async with self._pool.connection() as conn, conn.transaction():
                return await work(conn)
        except self._failures as exc:
            error = StoreError(f"the operation failed: {exc}")
            error.__cause__ = exc
            raise error from None

    async def put(self, *records: Record) -> None:
        if not records:
            return
        rows = [encode(record) for record in records]  # now: the caller may change its dicts

        async def put(conn: Any) -> None:
            async with conn.cursor() as cursor:
                await cursor.executemany(_UPSERT, rows)

        await self._run(put)

    async def get(self, kind: Kind, object_id: str, *, owner: str = "") -> Body | None:
        async def get(conn: Any) -> Body | None:
            sql = f"SELECT body FROM objects WHERE id = %s AND {_SCOPE}"
            row = await (await conn.execute(sql, (object_id, kind, owner))).fetchone()
            return None if row is None else _body(row[0])

        return cast(Body | None, await self._run(get))

    async def delete(self, kind: Kind, object_id: str, *, owner: str = "") -> bool:
        async def delete(conn: Any) -> bool:
            sql = f"DELETE FROM objects WHERE id = %s AND {_SCOPE}"
            if (await conn.execute(sql, (object_id, kind, owner))).rowcount == 0:
                return False
            sql = "DELETE FROM objects WHERE thread_id = %s OR parent = %s"
            await conn.execute(sql, (object_id, object_id))
            return True

        return bool(await self._run(delete))

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

        async def page(conn: Any) -> Page:
            bounds = []
            for cursor, later in query.cursors():
                found = await conn.execute(cursor_sql("%s"), query.cursor_args(cursor))
                row = await found.fetchone()
                if row is None:
                    return Page([], has_more=False)
                bounds.append((row[0], later))
            sql, args = query.sql("%s", bounds)
            rows = await (await conn.execute(sql, args)).fetchall()
            return query.page([bytes(body) for (body,) in rows])

        return cast(Page, await self._run(page))

    async def find(
        self, kind: Kind, statuses: Collection[str], *, limit: int = 1000, job: str | None = None
    ) -> Sequence[Body]:
        check_limit(limit)
        wanted = [*statuses]
        if not wanted:
            return []

        async def find(conn: Any) -> list[Body]:
            of_job, args = (
                ("", ()) if job is None else (" AND (id = %s OR run_id = %s)", (job,) * 2)
            )
            sql = (f"SELECT body FROM objects WHERE kind = %s AND status = ANY(%s){of_job} "
                   "ORDER BY seq LIMIT %s")  # fmt: skip
            rows = await (await conn.execute(sql, (kind, wanted, *args, limit))).fetchall()
            return [_body(body) for (body,) in rows]

        return cast(list[Body], await self._run(find))

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._pool.close()


async def _migrate(conn: Any, url: str) -> None:
    """The schema up to date, under a lock replicas starting together share."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK,))
        await conn.execute("CREATE TABLE IF NOT EXISTS oxiserve_schema (version INTEGER)")
        row = await (await conn.execute("SELECT max(version) FROM oxiserve_schema")).fetchone()
        version = row[0] or 0
        if version > len(MIGRATIONS):
            raise StoreError(
                f"{_safe(url)}: schema version {version} is newer than this oxiserve knows "
                f"({len(MIGRATIONS)}); use a newer oxiserve or another database"
            )
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            await conn.execute(script)
            await conn.execute("INSERT INTO oxiserve_schema VALUES (%s)", (number,))


def _line(exc: BaseException) -> str:
    return " ".join(str(exc).split())  # psycopg's messages span lines


def _safe(url: str) -> str:
    """The URL without its password, for messages."""
    scheme, sep, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    if not at or ":" not in credentials:
        return url
    return f"{scheme}{sep}{credentials.split(':', 1)[0]}:***@{host}"
