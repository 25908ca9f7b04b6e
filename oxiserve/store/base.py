"""The store's narrow interface: durable API objects kept as JSON documents.

Assistants, threads, messages, runs and run steps (later responses, conversations and their
items) are stored as the OpenAI objects the API returns, each with the few columns that lists,
cascades and restart recovery need.  Nothing here knows HTTP or OpenAI's rules; ``api/`` and
``runs/`` decide what goes in.  Implementations: :mod:`oxiserve.store.sqlite` (the embedded
default); PostgreSQL later, behind the same protocol.

    store = await SqliteStore.open("oxiserve.db")
    await store.put(Record(Kind.THREAD, "thread_1", thread),
                    Record(Kind.MESSAGE, "msg_1", message, thread_id="thread_1",
                           parent="thread_1"))           # one transaction
    page = await store.list(Kind.MESSAGE, "thread_1", limit=20, order="desc")
    await store.delete(Kind.THREAD, "thread_1")          # and its messages, runs and steps
    await store.close()

Every method is a coroutine: the implementation does its I/O off the event loop.  A record's
body is encoded when ``put`` is called, so the caller may change its dict afterwards.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

Order = Literal["asc", "desc"]


class Kind(enum.StrEnum):
    ASSISTANT = "assistant"
    THREAD = "thread"
    MESSAGE = "message"
    RUN = "run"
    STEP = "step"
    RESPONSE = "response"
    CONVERSATION = "conversation"
    ITEM = "item"  # an input item of a response, or an item of a conversation (its parent)


@dataclass(frozen=True, slots=True)
class Record:
    """One object to store.

    ``thread_id``: the thread a message, run or step belongs to (deleting the thread deletes
    it).  ``parent``: what its list groups by (a message's or run's thread, a step's run; empty
    for assistants and threads, which are listed as a whole).  ``run_id``: the run that made a
    message (messages are filtered by it).  ``status``: a run's or message's status (restart
    recovery finds the unfinished ones).  ``owner``: the API key fingerprint that created it
    ("" without keys); every read and delete is scoped to its owner.
    """

    kind: Kind
    id: str
    body: Mapping[str, Any]
    thread_id: str = ""
    parent: str = ""
    run_id: str = ""
    status: str = ""
    owner: str = ""


@dataclass(frozen=True, slots=True)
class Page:
    data: list[dict[str, Any]]
    has_more: bool


class StoreError(Exception):
    """The store could not do what was asked (the database failed, or is not ours)."""


class Store(Protocol):
    async def put(self, *records: Record) -> None:
        """Insert or replace the records, all in one transaction.  A replaced record keeps its
        place in list order (the order of its first insert)."""
        ...

    async def get(self, kind: Kind, object_id: str, *, owner: str = "") -> dict[str, Any] | None:
        """The body of the record, or None if there is none of that kind, id and owner."""
        ...

    async def delete(self, kind: Kind, object_id: str, *, owner: str = "") -> bool:
        """Delete the record and every record whose ``thread_id`` or ``parent`` is its id, in
        one transaction; False if there was no such record."""
        ...

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
        """Records of ``kind`` under ``parent`` in insert order (``desc``: newest first), at most
        ``limit``, strictly after the record ``after`` and strictly before ``before`` in that
        order (a cursor id that is not in this list gives an empty page)."""
        ...

    async def find(
        self, kind: Kind, statuses: Collection[str], *, limit: int = 1000, job: str | None = None
    ) -> Sequence[dict[str, Any]]:
        """Bodies of records of ``kind`` whose status is one of ``statuses`` (any owner), in
        insert order, at most ``limit``: restart recovery's query.  ``job``: only the record
        of that id and those whose run is it (one run or response being failed)."""
        ...

    async def close(self) -> None:
        """Finish every write already asked for, then release the database."""
        ...
