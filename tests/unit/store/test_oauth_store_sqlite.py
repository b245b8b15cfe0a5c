"""The OAuth2 store contract on SQLite (a file shared by several stores and processes)."""

from __future__ import annotations

import pytest

from tests.unit.store import test_store_sqlite as sqlite_tests
from tests.unit.store.oauth_store_contract import OAuthStoreContract


@pytest.fixture
def backend(tmp_path):
    return sqlite_tests.SQLiteBackend(tmp_path / "state" / "isekai.db")


class TestSQLiteOAuthStore(OAuthStoreContract):
    """Every OAuth store contract test, against a SQLite file."""
