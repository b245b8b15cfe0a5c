"""open_store URL handling, RequestLogQuery validation and the shared row/doc helpers."""

from __future__ import annotations

import time

import pytest

from isekai.errors import ConfigError
from isekai.store import InvalidStoreURL, RequestLogQuery, Store, StoredItem, open_store
from isekai.store.base import LOG_KEYS, encode_doc, normalize_log_row
from isekai.store.postgres import PostgresStore
from isekai.store.sqlite import SQLiteStore


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("sqlite:///isekai.db", "isekai.db"),
        ("sqlite:///var/lib/isekai.db", "var/lib/isekai.db"),
        ("sqlite:////var/lib/isekai/store.db", "/var/lib/isekai/store.db"),
        ("sqlite:///:memory:", ":memory:"),
        ("SQLite:///x.db", "x.db"),
    ],
)
def test_open_store_sqlite_url_forms(url, path):
    store = open_store(url)
    assert isinstance(store, SQLiteStore) and isinstance(store, Store)
    assert store.path == path


@pytest.mark.parametrize(
    ("url", "dsn", "schema"),
    [
        ("postgresql://isekai@db:5432/isekai", "postgresql://isekai@db:5432/isekai", None),
        ("postgres://u:pw@db/isekai", "postgres://u:pw@db/isekai", None),
        ("postgresql://db/isekai?schema=gw_1", "postgresql://db/isekai", "gw_1"),
        (
            "postgresql://db/isekai?sslmode=require&schema=edge",
            "postgresql://db/isekai?sslmode=require",
            "edge",
        ),
    ],
)
def test_open_store_postgres_url_forms(url, dsn, schema):
    store = open_store(url)  # nothing connects before open()
    assert isinstance(store, PostgresStore)
    assert (store.dsn, store.schema) == (dsn, schema)


def test_open_store_postgres_url_hides_the_password():
    store = open_store("postgresql://isekai:s3cret@db/isekai")
    assert "s3cret" not in store.url and "s3cret" not in repr(store)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql://db/isekai", "unsupported store URL mysql://"),
        ("redis://localhost", "unsupported store URL redis://"),
        ("isekai.db", "unsupported store URL 'isekai.db'"),
        ("", "expected a store URL"),
        ("sqlite://", "bad SQLite URL"),
        ("sqlite:///", "bad SQLite URL"),
        ("sqlite://host/x.db", "bad SQLite URL"),
        ("sqlite:///x.db?mode=ro", "takes no query"),
        ("postgresql://db/isekai?schema=Bad-Name", "bad schema 'Bad-Name'"),
        ("postgresql://db/isekai?schema=1abc", "bad schema"),
    ],
)
def test_open_store_rejects_unknown_or_malformed_urls(url, message):
    with pytest.raises(InvalidStoreURL, match=message) as caught:
        open_store(url)
    assert isinstance(caught.value, ValueError) and isinstance(caught.value, ConfigError)
    assert caught.value.path == "store.url"


def test_open_store_error_does_not_show_a_password():
    with pytest.raises(ValueError) as caught:
        open_store("mysql://root:hunter2@db/isekai")
    assert "hunter2" not in str(caught.value)


def test_request_log_query_defaults_and_conditions():
    assert RequestLogQuery() == RequestLogQuery(None, None, None, None, None, 50, 0)
    assert RequestLogQuery().conditions() == []
    q = RequestLogQuery(route="users", status=404, status_class=4, since=1, until=2)
    assert q.conditions() == [
        ("route =", "users"),
        ("status =", 404),
        ("status >=", 400),
        ("status <", 500),
        ("ts >=", 1.0),
        ("ts <", 2.0),
    ]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"limit": 0},
        {"limit": 1001},
        {"offset": -1},
        {"status_class": 0},
        {"status_class": 6},
        {"status": 42},
    ],
)
def test_request_log_query_rejects_out_of_range_values(kwargs):
    with pytest.raises(ValueError):
        RequestLogQuery(**kwargs)


def test_request_log_query_is_frozen():
    with pytest.raises(AttributeError):
        RequestLogQuery().limit = 5  # type: ignore[misc]


def test_stored_item_is_frozen_and_compares_by_value():
    item = StoredItem("route", "r", {"name": "r"}, 1, 1.0, 1.0)
    assert item == StoredItem("route", "r", {"name": "r"}, 1, 1.0, 1.0)
    with pytest.raises(AttributeError):
        item.version = 2  # type: ignore[misc]


def test_normalize_log_row_coerces_orders_and_bounds():
    row = normalize_log_row(
        {
            "request_id": 7,
            "status": "503",
            "latency_ms": "2.5",
            "bytes_out": 10.0,
            "user_agent": "u" * 1000,
            "ts": float("nan"),
            "unknown": "ignored",
        }
    )
    assert len(row) == len(LOG_KEYS)
    values = dict(zip(LOG_KEYS, row, strict=True))
    assert values["status"] == 503 and values["latency_ms"] == 2.5 and values["bytes_out"] == 10
    assert values["request_id"] == "7" and len(values["user_agent"]) == 512
    assert abs(values["ts"] - time.time()) < 5  # NaN is no time: now instead
    assert values["route"] is None


def test_encode_doc_is_compact_json_and_checks_names():
    assert encode_doc("upstream", "app", {"targets": ["ä:1"]}) == '{"targets":["ä:1"]}'
    with pytest.raises(ValueError, match="non-empty"):
        encode_doc("route", "", {})
    with pytest.raises(ValueError, match="mapping"):
        encode_doc("route", "r", ["not", "a", "mapping"])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="JSON"):
        encode_doc("route", "r", {"timeout": float("inf")})
