"""``open_store(url)``: the backend for a store URL (the grammar is in `isekai.store.urls`)."""

from __future__ import annotations

from isekai.store.base import InvalidStoreURL, Store
from isekai.store.postgres import PostgresStore
from isekai.store.sqlite import SQLiteStore
from isekai.store.urls import parse_store_url

__all__ = ["open_store"]


def open_store(url: str) -> Store:
    """A ``Store`` for ``url`` (not yet opened: ``await store.open()`` or ``async with``).

    Raises ``InvalidStoreURL`` (a ``ConfigError`` and a ``ValueError``) for a URL that
    `isekai.store.urls.parse_store_url` refuses.
    """
    try:
        parsed = parse_store_url(url)
    except ValueError as exc:
        raise InvalidStoreURL(str(exc), path="store.url") from None
    if parsed.scheme == "sqlite":
        return SQLiteStore(parsed.path)
    return PostgresStore(parsed.dsn, schema=parsed.schema)
