"""Schema migrations: ordered, idempotent, transactional, upgrading older schemas."""

from __future__ import annotations

import logging
import sqlite3

import pytest

from isekai.store.migrations import (
    POSTGRES_MIGRATIONS,
    SQLITE_MIGRATIONS,
    apply_sqlite,
    latest_version,
    split_statements,
)


@pytest.fixture
def conn(tmp_path):
    conn = sqlite3.connect(tmp_path / "m.db", isolation_level=None)
    yield conn
    conn.close()


def _versions(conn) -> list[int]:
    return [v for (v,) in conn.execute("SELECT version FROM schema_migrations ORDER BY version")]


def _tables(conn) -> set[str]:
    rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
    return {name for (name,) in rows if not name.startswith("sqlite_")}


def test_migrations_are_increasing_and_the_same_for_both_backends():
    for migrations in (SQLITE_MIGRATIONS, POSTGRES_MIGRATIONS):
        versions = [version for version, _ in migrations]
        assert versions == sorted(set(versions)) and versions[0] == 1
    assert [v for v, _ in SQLITE_MIGRATIONS] == [v for v, _ in POSTGRES_MIGRATIONS]
    assert latest_version(SQLITE_MIGRATIONS) == SQLITE_MIGRATIONS[-1][0]


def test_apply_sqlite_creates_the_schema_and_is_idempotent(conn):
    everything = [version for version, _ in SQLITE_MIGRATIONS]
    assert apply_sqlite(conn) == everything
    assert apply_sqlite(conn) == []
    assert _versions(conn) == everything
    assert {"schema_migrations", "items", "store_state", "users", "request_logs"} <= _tables(conn)
    assert conn.execute("SELECT revision FROM store_state").fetchall() == [(0,)]


def test_apply_sqlite_upgrades_from_v1(conn):
    assert apply_sqlite(conn, target=1) == [1]
    assert "request_logs" not in _tables(conn)
    conn.execute("INSERT INTO items VALUES ('route', 'r', '{}', 1, 1.0, 1.0)")
    conn.execute("UPDATE store_state SET revision = 5")
    assert apply_sqlite(conn) == [version for version, _ in SQLITE_MIGRATIONS[1:]]
    assert "request_logs" in _tables(conn)
    assert conn.execute("SELECT name FROM items").fetchall() == [("r",)]
    assert conn.execute("SELECT revision FROM store_state").fetchall() == [(5,)]


def test_apply_sqlite_v3_allows_policies_and_keeps_items(conn):
    apply_sqlite(conn, target=2)
    conn.execute("INSERT INTO items VALUES ('upstream', 'u', '{}', 3, 1.0, 2.0)")
    with pytest.raises(sqlite3.IntegrityError):
        conn.execute("INSERT INTO items VALUES ('policy', 'p', '{}', 1, 1.0, 1.0)")
    assert apply_sqlite(conn, target=3) == [3]
    assert conn.execute("SELECT * FROM items").fetchall() == [("upstream", "u", "{}", 3, 1.0, 2.0)]
    conn.execute("INSERT INTO items VALUES ('policy', 'p', '{}', 1, 1.0, 1.0)")
    with pytest.raises(sqlite3.IntegrityError):
        conn.execute("INSERT INTO items VALUES ('consumer', 'c', '{}', 1, 1.0, 1.0)")
    with pytest.raises(sqlite3.IntegrityError):  # the primary key survived the copy
        conn.execute("INSERT INTO items VALUES ('policy', 'p', '{}', 1, 1.0, 1.0)")


def _log_columns(conn) -> list[str]:
    return [row[1] for row in conn.execute("PRAGMA table_info(request_logs)")]


def test_apply_sqlite_v4_allows_consumers_and_logs_them(conn):
    apply_sqlite(conn, target=3)
    conn.execute("INSERT INTO items VALUES ('policy', 'p', '{}', 2, 1.0, 2.0)")
    conn.execute("INSERT INTO request_logs (ts, route, status) VALUES (1.0, 'r', 200)")
    with pytest.raises(sqlite3.IntegrityError):
        conn.execute("INSERT INTO items VALUES ('consumer', 'c', '{}', 1, 1.0, 1.0)")
    assert "consumer" not in _log_columns(conn)
    assert apply_sqlite(conn, target=4) == [4]
    assert conn.execute("SELECT * FROM items").fetchall() == [("policy", "p", "{}", 2, 1.0, 2.0)]
    conn.execute("INSERT INTO items VALUES ('consumer', 'c', '{\"name\":\"c\"}', 1, 1.0, 1.0)")
    with pytest.raises(sqlite3.IntegrityError):  # the primary key survived the copy
        conn.execute("INSERT INTO items VALUES ('consumer', 'c', '{}', 1, 1.0, 1.0)")
    with pytest.raises(sqlite3.IntegrityError):  # still a closed list of kinds
        conn.execute("INSERT INTO items VALUES ('key', 'k', '{}', 1, 1.0, 1.0)")
    assert _log_columns(conn)[-1] == "consumer"
    # rows logged before the upgrade have no consumer; new ones may
    assert conn.execute("SELECT route, consumer FROM request_logs").fetchall() == [("r", None)]
    conn.execute("INSERT INTO request_logs (ts, route, consumer) VALUES (2.0, 'r', 'acme')")
    assert conn.execute("SELECT consumer FROM request_logs WHERE consumer = 'acme'").fetchall() == [
        ("acme",)
    ]


def test_apply_sqlite_rolls_back_a_failing_migration(conn):
    broken = [
        *SQLITE_MIGRATIONS,
        (99, "CREATE TABLE half (x INTEGER); INSERT INTO nope VALUES (1);"),
    ]
    apply_sqlite(conn, target=1)
    with pytest.raises(sqlite3.OperationalError, match="nope"):
        apply_sqlite(conn, broken)
    assert _versions(conn) == [1]  # v2 was in the same transaction: rolled back too
    assert "half" not in _tables(conn) and "request_logs" not in _tables(conn)
    assert not conn.in_transaction


def test_apply_sqlite_uses_a_newer_schema_as_is_with_a_warning(conn, caplog):
    apply_sqlite(conn)
    conn.execute("INSERT INTO schema_migrations VALUES (1000, 0)")
    with caplog.at_level(logging.WARNING, logger="isekai.store"):
        assert apply_sqlite(conn) == []
    assert "newer than this Isekai knows" in caplog.text


def test_apply_sqlite_refuses_unordered_migrations(conn):
    with pytest.raises(RuntimeError, match="increasing"):
        apply_sqlite(conn, [(2, "SELECT 1;"), (1, "SELECT 1;")])


def test_split_statements_keeps_semicolons_inside_literals():
    sql = "INSERT INTO t VALUES ('a;b');\nCREATE TABLE x (y TEXT DEFAULT ';');\n"
    assert split_statements(sql) == [
        "INSERT INTO t VALUES ('a;b');",
        "CREATE TABLE x (y TEXT DEFAULT ';');",
    ]
    with pytest.raises(ValueError, match="incomplete"):
        split_statements("SELECT 1")
