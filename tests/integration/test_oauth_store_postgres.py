"""The OAuth2 store contract on PostgreSQL (``ISEKAI_TEST_POSTGRES_DSN``: skipped when it is
unreachable, a failure under ``CI=true``); each test in its own schema, dropped afterwards."""

from __future__ import annotations

import asyncio

import pytest

from tests.integration import test_store_postgres as postgres_tests
from tests.unit.store.oauth_store_contract import OAuthStoreContract


@pytest.fixture
def backend(require_service):
    backend = postgres_tests.PostgresBackend(require_service("postgres"))
    yield backend
    asyncio.run(backend.drop())


class TestPostgresOAuthStore(OAuthStoreContract):
    """Every OAuth store contract test, against PostgreSQL."""
