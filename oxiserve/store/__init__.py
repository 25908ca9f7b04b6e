"""Durable API objects: the store interface and its embedded SQLite implementation."""

from oxiserve.store.base import Kind, Order, Page, Record, Store, StoreError
from oxiserve.store.sqlite import SqliteStore, StoreStatistics

__all__ = [
    "Kind",
    "Order",
    "Page",
    "Record",
    "SqliteStore",
    "Store",
    "StoreError",
    "StoreStatistics",
]
