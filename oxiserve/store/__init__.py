"""Durable API objects: the store interface, its embedded SQLite implementation and the
PostgreSQL one (``--db postgresql://...``, the ``[postgres]`` extra)."""

from oxiserve.store.base import Kind, Order, Page, Record, Store, StoreError
from oxiserve.store.sqlite import SqliteStore, StoreStatistics


async def open_store(db: str) -> Store:
    """The store ``--db`` names: a PostgreSQL URL, else an SQLite file (or ":memory:")."""
    if db.startswith(("postgresql://", "postgres://")):
        from oxiserve.store.postgres import PostgresStore

        return await PostgresStore.open(db)
    return await SqliteStore.open(db)


__all__ = [
    "Kind",
    "Order",
    "Page",
    "Record",
    "SqliteStore",
    "Store",
    "StoreError",
    "StoreStatistics",
    "open_store",
]
