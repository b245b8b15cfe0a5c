"""The behaviour every store backend must have, as a base class of test classes.

A backend's test module subclasses ``StoreContract`` and provides a ``backend`` fixture: an
object with ``url`` (a fresh, empty database for this test, same one on every open),
``async migrate_to(version)`` (apply migrations up to ``version`` only), ``async
seed_v1_route(name, doc)`` (insert a route with plain SQL into a v1 schema) and ``async
applied_versions()`` (what ``schema_migrations`` holds). Tests are plain functions run with
``asyncio.run`` (the project does not use pytest-asyncio).
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from isekai.store import (
    AlreadyExists,
    AuditQuery,
    AuditRecord,
    LastAdmin,
    NotFound,
    RequestLogQuery,
    StoredItem,
    StoreError,
    VersionMismatch,
    open_store,
)
from isekai.store.base import LOG_KEYS

TEST_TIMEOUT = 30.0
# A waiter waits up to WAIT seconds; one woken by a change (not its timeout, not a 60 s poll) must
# return within PROMPT: half of WAIT, generous for a loaded 2-core machine, yet it cannot be met
# by a waiter that slept through to its timeout.
WAIT = 10.0
PROMPT = WAIT / 2


def async_test(fn: Callable[..., Awaitable[None]]) -> Callable[..., None]:
    """Run an ``async def`` test in a fresh event loop (fixtures are passed through)."""

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> None:
        asyncio.run(asyncio.wait_for(fn(*args, **kwargs), TEST_TIMEOUT))

    return run


def log_row(ts: float, route: str = "users", status: int = 200, **extra: Any) -> dict[str, Any]:
    row = {
        "ts": ts,
        "route": route,
        "method": "GET",
        "path": f"/api/{route}/{int(ts)}",
        "status": status,
        "upstream": "app",
        "latency_ms": 1.5,
        "bytes_in": 0,
        "bytes_out": 123,
        "client_ip": "10.0.0.1",
        "user_agent": "curl/8.0",
        "request_id": f"req-{ts}",
        "consumer": None,
    }
    row.update(extra)
    return row


ROUTE = {
    "name": "users",
    "match": {"path": "/api/users/{id}", "methods": ["GET"]},
    "upstream": "app",
}
UPSTREAM = {"targets": ["10.0.0.5:9000", "10.0.0.6:9000"], "connect_timeout": "2s"}


class StoreContract:
    """Shared tests; subclasses supply the ``backend`` fixture (see the module docstring)."""

    # -- lifecycle and migrations -----------------------------------------------------------

    @async_test
    async def test_open_applies_every_migration_once(self, backend):
        for _ in range(2):
            async with open_store(backend.url) as store:
                assert await store.revision() == 0
        assert await backend.applied_versions() == backend.all_versions

    @async_test
    async def test_open_upgrades_a_v1_schema_keeping_its_data(self, backend):
        await backend.migrate_to(1)
        assert await backend.applied_versions() == [1]
        await backend.seed_v1_route("legacy", {"name": "legacy", "match": {"path": "/old"}})
        async with open_store(backend.url) as store:
            item = await store.get_item("route", "legacy")
            assert item is not None and item.doc == {"name": "legacy", "match": {"path": "/old"}}
            await store.insert_request_logs([log_row(1000.0)])  # a table v2 added
            assert (await store.query_request_logs(RequestLogQuery()))[1] == 1
            await store.create_item("policy", "p", {"type": "fault"})  # a kind v3 added
            await store.create_item("consumer", "c", {"name": "c"})  # a kind v4 added
        assert await backend.applied_versions() == backend.all_versions

    @async_test
    async def test_open_is_idempotent_and_close_twice_is_harmless(self, backend):
        store = open_store(backend.url)
        await store.open()
        await store.open()
        await store.create_item("route", "users", ROUTE)
        await store.close()
        await store.close()

    @async_test
    async def test_store_raises_store_error_when_not_open(self, backend):
        store = open_store(backend.url)
        with pytest.raises(StoreError, match="not open"):
            await store.list_items("route")
        await store.open()
        await store.close()
        with pytest.raises(StoreError, match="not open"):
            await store.revision()

    @async_test
    async def test_store_can_be_reopened_after_close(self, backend):
        store = open_store(backend.url)
        await store.open()
        await store.create_item("upstream", "app", UPSTREAM)
        await store.close()
        await store.open()
        try:
            assert (await store.get_item("upstream", "app")).doc == UPSTREAM
        finally:
            await store.close()

    # -- items ------------------------------------------------------------------------------

    @async_test
    async def test_create_item_starts_at_version_one(self, backend):
        async with open_store(backend.url) as store:
            before = time.time()
            item = await store.create_item("route", "users", ROUTE)
            assert isinstance(item, StoredItem)
            assert (item.kind, item.name, item.doc, item.version) == ("route", "users", ROUTE, 1)
            assert before - 1 <= item.created_at == item.updated_at <= time.time() + 1
            assert await store.get_item("route", "users") == item

    @async_test
    async def test_create_item_refuses_an_existing_name(self, backend):
        async with open_store(backend.url) as store:
            await store.create_item("route", "users", ROUTE)
            with pytest.raises(AlreadyExists) as caught:
                await store.create_item("route", "users", ROUTE)
            assert (caught.value.kind, caught.value.name) == ("route", "users")
            assert isinstance(caught.value, StoreError)

    @async_test
    async def test_create_item_kinds_have_separate_names(self, backend):
        async with open_store(backend.url) as store:
            await store.create_item("route", "app", {**ROUTE, "name": "app"})
            await store.create_item("upstream", "app", UPSTREAM)
            assert (await store.get_item("upstream", "app")).doc == UPSTREAM
            assert (await store.get_item("route", "app")).doc["name"] == "app"

    @async_test
    async def test_policies_are_a_kind_of_their_own(self, backend):
        policy = {"type": "cors", "origins": ["https://a.example"], "max_age": "10m"}
        async with open_store(backend.url) as store:
            await store.create_item("upstream", "app", UPSTREAM)
            created = await store.create_item("policy", "app", policy)
            assert created.version == 1 and created.kind == "policy"
            assert (await store.get_item("policy", "app")).doc == policy
            assert [item.name for item in await store.list_items("policy")] == ["app"]
            changed = await store.replace_item("policy", "app", {**policy, "credentials": True})
            assert changed.version == 2
            assert await store.list_versions("policy") == {"app": 2}
            await store.delete_item("policy", "app", if_version=2)
            assert await store.get_item("policy", "app") is None
            assert (await store.get_item("upstream", "app")).doc == UPSTREAM

    @async_test
    async def test_consumers_are_a_kind_of_their_own(self, backend):
        consumer = {"name": "acme", "tier": "premium", "tags": ["partner"]}
        async with open_store(backend.url) as store:
            await store.create_item("policy", "acme", {"type": "fault"})
            created = await store.create_item("consumer", "acme", consumer)
            assert created.version == 1 and created.kind == "consumer"
            assert (await store.get_item("consumer", "acme")).doc == consumer
            assert [item.name for item in await store.list_items("consumer")] == ["acme"]
            keys = [{"id": "k1", "hash": "ab" * 32, "prefix": "isk_ab12"}]
            changed = await store.replace_item("consumer", "acme", {**consumer, "keys": keys})
            assert changed.version == 2 and changed.doc["keys"] == keys
            assert await store.list_versions("consumer") == {"acme": 2}
            with pytest.raises(ValueError, match="stored as"):
                await store.create_item("consumer", "other", consumer)
            await store.delete_item("consumer", "acme", if_version=2)
            assert await store.get_item("consumer", "acme") is None
            assert (await store.get_item("policy", "acme")).doc == {"type": "fault"}
            assert await store.revision() == 4

    @async_test
    async def test_create_item_round_trips_nested_json(self, backend):
        doc = {
            "name": "ünïcode-✓",
            "match": {"path": "/ä/{id}", "methods": ["GET", "POST"], "host": None},
            "respond": {"status": 200, "json": {"n": 1.5, "ok": True, "list": [1, "two", None]}},
        }
        async with open_store(backend.url) as store:
            await store.create_item("route", "ünïcode-✓", doc)
            assert (await store.get_item("route", "ünïcode-✓")).doc == doc

    @async_test
    async def test_create_item_rejects_bad_kind_name_or_doc(self, backend):
        async with open_store(backend.url) as store:
            with pytest.raises(ValueError, match="kind"):
                await store.create_item("consumers", "x", {})
            with pytest.raises(ValueError, match="stored as"):
                await store.create_item("route", "users", {**ROUTE, "name": "other"})
            with pytest.raises(ValueError, match="no 'name' key"):
                await store.create_item("upstream", "app", {"name": "app", **UPSTREAM})
            with pytest.raises(ValueError, match="JSON"):
                await store.create_item("upstream", "app", {"targets": {1, 2}})
            with pytest.raises(ValueError, match="kind"):
                await store.list_items("routes")
            assert await store.revision() == 0

    @async_test
    async def test_get_item_returns_none_when_missing(self, backend):
        async with open_store(backend.url) as store:
            assert await store.get_item("route", "nope") is None

    @async_test
    async def test_list_items_sorted_by_name_and_filtered_by_kind(self, backend):
        names = ["b", "B", "a-1", "a", "z_9", "ä", "A"]
        async with open_store(backend.url) as store:
            for name in names:
                await store.create_item("route", name, {"name": name, "match": {"path": "/"}})
            await store.create_item("upstream", "app", UPSTREAM)
            routes = await store.list_items("route")
            assert [item.name for item in routes] == sorted(names)
            assert all(item.kind == "route" for item in routes)
            assert [item.name for item in await store.list_items("upstream")] == ["app"]

    @async_test
    async def test_replace_item_bumps_version_and_keeps_created_at(self, backend):
        async with open_store(backend.url) as store:
            first = await store.create_item("upstream", "app", UPSTREAM)
            changed = {"targets": ["10.0.0.7:9000"]}
            second = await store.replace_item("upstream", "app", changed)
            assert (second.version, second.doc, second.created_at) == (2, changed, first.created_at)
            assert second.updated_at >= first.updated_at
            third = await store.replace_item("upstream", "app", UPSTREAM, if_version=2)
            assert third.version == 3
            assert await store.get_item("upstream", "app") == third

    @async_test
    async def test_replace_item_raises_not_found(self, backend):
        async with open_store(backend.url) as store:
            with pytest.raises(NotFound) as caught:
                await store.replace_item("route", "users", ROUTE)
            assert (caught.value.kind, caught.value.name) == ("route", "users")
            with pytest.raises(NotFound):  # NotFound wins over a version check
                await store.replace_item("route", "users", ROUTE, if_version=1)

    @async_test
    async def test_replace_item_raises_version_mismatch_with_current_version(self, backend):
        async with open_store(backend.url) as store:
            await store.create_item("route", "users", ROUTE)
            await store.replace_item("route", "users", ROUTE)
            with pytest.raises(VersionMismatch) as caught:
                await store.replace_item("route", "users", {**ROUTE, "upstream": "b"}, if_version=1)
            assert caught.value.current_version == 2
            assert caught.value.expected == 1
            item = await store.get_item("route", "users")
            assert (item.version, item.doc) == (2, ROUTE)

    @async_test
    async def test_delete_item_removes_it(self, backend):
        async with open_store(backend.url) as store:
            await store.create_item("route", "users", ROUTE)
            await store.delete_item("route", "users")
            assert await store.get_item("route", "users") is None
            assert await store.list_items("route") == []
            again = await store.create_item("route", "users", ROUTE)
            assert again.version == 1

    @async_test
    async def test_delete_item_raises_not_found_and_version_mismatch(self, backend):
        async with open_store(backend.url) as store:
            with pytest.raises(NotFound):
                await store.delete_item("upstream", "app")
            await store.create_item("upstream", "app", UPSTREAM)
            with pytest.raises(VersionMismatch) as caught:
                await store.delete_item("upstream", "app", if_version=7)
            assert caught.value.current_version == 1
            await store.delete_item("upstream", "app", if_version=1)
            assert await store.get_item("upstream", "app") is None

    # -- revision and change notification -----------------------------------------------------

    @async_test
    async def test_revision_counts_successful_changes_only(self, backend):
        async with open_store(backend.url) as store:
            assert await store.revision() == 0
            await store.create_item("route", "users", ROUTE)
            assert await store.revision() == 1
            with pytest.raises(AlreadyExists):
                await store.create_item("route", "users", ROUTE)
            with pytest.raises(VersionMismatch):
                await store.replace_item("route", "users", ROUTE, if_version=5)
            with pytest.raises(NotFound):
                await store.delete_item("route", "nope")
            assert await store.revision() == 1
            await store.replace_item("route", "users", ROUTE)
            await store.delete_item("route", "users")
            assert await store.revision() == 3
            await store.set_user("admin", "hash", "admin")  # users are not routing config
            await store.insert_request_logs([log_row(1.0)])
            assert await store.revision() == 3

    @async_test
    async def test_revision_persists_across_reopen(self, backend):
        async with open_store(backend.url) as store:
            await store.create_item("route", "users", ROUTE)
            await store.create_item("upstream", "app", UPSTREAM)
        async with open_store(backend.url) as store:
            assert await store.revision() == 2

    @async_test
    async def test_wait_for_change_returns_at_once_when_already_newer(self, backend):
        async with open_store(backend.url) as store:
            await store.create_item("route", "users", ROUTE)
            started = time.monotonic()
            assert await store.wait_for_change(0, timeout=WAIT) == 1
            assert time.monotonic() - started < PROMPT

    @async_test
    async def test_wait_for_change_returns_current_revision_after_timeout(self, backend):
        async with open_store(backend.url) as store:
            await store.create_item("route", "users", ROUTE)
            started = time.monotonic()
            assert await store.wait_for_change(1, timeout=0.3) == 1
            assert 0.25 <= time.monotonic() - started < PROMPT
            assert await store.wait_for_change(1, timeout=0) == 1

    @async_test
    async def test_wait_for_change_wakes_on_own_change(self, backend):
        async with open_store(backend.url) as store:
            waiter = asyncio.create_task(store.wait_for_change(0, timeout=WAIT))
            await asyncio.sleep(0.05)
            started = time.monotonic()
            await store.create_item("route", "users", ROUTE)
            assert await waiter == 1
            assert time.monotonic() - started < PROMPT

    @async_test
    async def test_wait_for_change_sees_another_instance_promptly(self, backend):
        async with open_store(backend.url) as watcher, open_store(backend.url) as writer:
            since = await watcher.revision()
            waiter = asyncio.create_task(watcher.wait_for_change(since, timeout=WAIT))
            await asyncio.sleep(0.1)
            started = time.monotonic()
            await writer.create_item("upstream", "app", UPSTREAM)
            assert await waiter == since + 1
            assert time.monotonic() - started < PROMPT
            assert (await watcher.get_item("upstream", "app")).doc == UPSTREAM
            # and the other way round, with a replace and a delete
            waiter = asyncio.create_task(writer.wait_for_change(since + 1, timeout=WAIT))
            await asyncio.sleep(0.1)
            started = time.monotonic()
            await watcher.replace_item("upstream", "app", {"targets": ["h:1"]})
            assert await waiter == since + 2
            assert time.monotonic() - started < PROMPT

    @async_test
    async def test_open_concurrently_migrates_once(self, backend):
        stores = [open_store(backend.url) for _ in range(3)]
        await asyncio.gather(*(store.open() for store in stores))
        try:
            assert await backend.applied_versions() == backend.all_versions
        finally:
            await asyncio.gather(*(store.close() for store in stores))

    @async_test
    async def test_replace_item_concurrent_if_version_lets_one_win(self, backend):
        async with open_store(backend.url) as one, open_store(backend.url) as two:
            await one.create_item("upstream", "app", UPSTREAM)
            results = await asyncio.gather(
                one.replace_item("upstream", "app", {"targets": ["a:1"]}, if_version=1),
                two.replace_item("upstream", "app", {"targets": ["b:1"]}, if_version=1),
                return_exceptions=True,
            )
            winners = [r for r in results if isinstance(r, StoredItem)]
            losers = [r for r in results if isinstance(r, VersionMismatch)]
            assert len(winners) == 1 and len(losers) == 1, results
            assert losers[0].current_version == 2
            assert (await two.get_item("upstream", "app")).doc == winners[0].doc
            assert await one.revision() == 2

    # -- users ------------------------------------------------------------------------------

    @async_test
    async def test_user_create_get_and_count(self, backend):
        async with open_store(backend.url) as store:
            assert await store.count_users() == 0
            assert await store.get_user("admin") is None
            before = time.time()
            await store.create_user("admin", "$argon2id$hash", "admin")
            user = await store.get_user("admin")
            assert set(user) == {
                "username",
                "password_hash",
                "role",
                "created_at",
                "token_version",
            }
            assert user["token_version"] == 0
            assert (user["username"], user["password_hash"], user["role"]) == (
                "admin",
                "$argon2id$hash",
                "admin",
            )
            assert before - 1 <= user["created_at"] <= time.time() + 1
            with pytest.raises(AlreadyExists) as caught:
                await store.create_user("admin", "other", "viewer")
            assert caught.value.kind == "user"
            assert (await store.get_user("admin"))["password_hash"] == "$argon2id$hash"
            await store.create_user("viewer", "h2", "viewer")
            assert await store.count_users() == 2

    @async_test
    async def test_user_set_inserts_or_updates_keeping_created_at(self, backend):
        async with open_store(backend.url) as store:
            await store.set_user("ops", "h1", "viewer")
            first = await store.get_user("ops")
            await store.set_user("ops", "h2", "admin")
            second = await store.get_user("ops")
            assert (second["password_hash"], second["role"]) == ("h2", "admin")
            assert second["created_at"] == first["created_at"]
            assert await store.count_users() == 1
            with pytest.raises(ValueError, match="username"):
                await store.set_user("", "h", "admin")

    @async_test
    async def test_user_set_keeps_what_it_is_not_given(self, backend):
        async with open_store(backend.url) as store:
            await store.create_user("root", "h0", "admin")
            await store.set_user("ops", "h1", "admin")
            await store.set_user("ops", None, "viewer")  # the stored hash stays
            assert (await store.get_user("ops"))["password_hash"] == "h1"
            await store.set_user("ops", "h2", None)  # the stored role stays
            user = await store.get_user("ops")
            kept = (user["password_hash"], user["role"], user["token_version"])
            assert kept == ("h2", "viewer", 2)
            await store.set_user("ops", None, None)  # nothing changed: no bump
            assert (await store.get_user("ops"))["token_version"] == 2
            with pytest.raises(ValueError, match="password_hash"):
                await store.set_user("newcomer", None, "viewer")  # a new user needs both
            assert await store.get_user("newcomer") is None
            with pytest.raises(LastAdmin):
                await store.set_user("root", None, "viewer")

    # -- request logs -----------------------------------------------------------------------

    @async_test
    async def test_request_logs_query_returns_newest_first_with_total(self, backend):
        async with open_store(backend.url) as store:
            await store.insert_request_logs([log_row(1000.0 + i) for i in range(5)])
            rows, total = await store.query_request_logs(RequestLogQuery())
            assert total == 5
            assert [row["ts"] for row in rows] == [1004.0, 1003.0, 1002.0, 1001.0, 1000.0]
            assert rows[0] == log_row(1004.0)
            assert tuple(rows[0]) == LOG_KEYS

    @async_test
    async def test_request_logs_query_filters(self, backend):
        rows = [
            log_row(1000.0, "users", 200),
            log_row(1001.0, "users", 201),
            log_row(1002.0, "users", 404),
            log_row(1003.0, "orders", 200),
            log_row(1004.0, "orders", 503),
            log_row(1005.0, "orders", 500),
            log_row(1006.0, "users", 302),
        ]
        async with open_store(backend.url) as store:
            await store.insert_request_logs(rows)

            async def ts(**query: Any) -> tuple[list[float], int]:
                found, total = await store.query_request_logs(RequestLogQuery(**query))
                return [row["ts"] for row in found], total

            assert await ts(route="orders") == ([1005.0, 1004.0, 1003.0], 3)
            assert await ts(status=200) == ([1003.0, 1000.0], 2)
            assert await ts(status_class=2) == ([1003.0, 1001.0, 1000.0], 3)
            assert await ts(status_class=5) == ([1005.0, 1004.0], 2)
            assert await ts(status_class=3) == ([1006.0], 1)
            assert await ts(since=1002.0, until=1005.0) == ([1004.0, 1003.0, 1002.0], 3)
            assert await ts(since=1005.0) == ([1006.0, 1005.0], 2)
            assert await ts(until=1001.0) == ([1000.0], 1)
            assert await ts(route="users", status_class=2, since=1000.5) == ([1001.0], 1)
            assert await ts(route="nope") == ([], 0)

    @async_test
    async def test_request_logs_record_and_filter_the_consumer(self, backend):
        rows = [
            log_row(1000.0, consumer="acme"),
            log_row(1001.0, consumer="globex"),
            log_row(1002.0),  # no consumer resolved
            log_row(1003.0, "orders", consumer="acme"),
        ]
        async with open_store(backend.url) as store:
            await store.insert_request_logs(rows)

            async def ts(**query: Any) -> tuple[list[float], int]:
                found, total = await store.query_request_logs(RequestLogQuery(**query))
                return [row["ts"] for row in found], total

            assert await ts(consumer="acme") == ([1003.0, 1000.0], 2)
            assert await ts(consumer="acme", route="users") == ([1000.0], 1)
            assert await ts(consumer="") == ([1002.0], 1)  # the anonymous ones
            assert await ts(consumer="nobody") == ([], 0)
            found, _ = await store.query_request_logs(RequestLogQuery(consumer="globex"))
            assert found == [log_row(1001.0, consumer="globex")]

    @async_test
    async def test_request_logs_query_paginates_with_total(self, backend):
        async with open_store(backend.url) as store:
            await store.insert_request_logs([log_row(2000.0 + i) for i in range(10)])
            pages = []
            for offset in range(0, 12, 4):
                found, total = await store.query_request_logs(
                    RequestLogQuery(limit=4, offset=offset)
                )
                assert total == 10
                pages.append([row["ts"] for row in found])
            assert pages == [
                [2009.0, 2008.0, 2007.0, 2006.0],
                [2005.0, 2004.0, 2003.0, 2002.0],
                [2001.0, 2000.0],
            ]
            found, total = await store.query_request_logs(RequestLogQuery(offset=50))
            assert (found, total) == ([], 10)

    @async_test
    async def test_request_logs_insert_fills_missing_keys_and_bounds_text(self, backend):
        async with open_store(backend.url) as store:
            await store.insert_request_logs([])  # nothing to do
            before = time.time()
            await store.insert_request_logs(
                [{"route": "r", "status": "200", "path": "/" + "x" * 5000, "extra": 1}]
            )
            (row,), total = await store.query_request_logs(RequestLogQuery())
            assert total == 1
            assert row["route"] == "r" and row["status"] == 200
            assert len(row["path"]) == 2048
            assert row["method"] is None and row["latency_ms"] is None
            assert before - 1 <= row["ts"] <= time.time() + 1
            with pytest.raises(ValueError, match="status"):
                await store.insert_request_logs([{"status": "teapot"}])

    @async_test
    async def test_request_logs_purge_deletes_older_rows_and_counts(self, backend):
        async with open_store(backend.url) as store:
            await store.insert_request_logs([log_row(3000.0 + i) for i in range(10)])
            assert await store.purge_request_logs(3004.0) == 4
            assert await store.purge_request_logs(3004.0) == 0
            found, total = await store.query_request_logs(RequestLogQuery())
            assert total == 6 and min(row["ts"] for row in found) == 3004.0
            assert await store.purge_request_logs(time.time()) == 6

    # -- the writer lock --------------------------------------------------------------------

    @async_test
    async def test_exclusive_keeps_out_another_instance_until_released(self, backend):
        async with open_store(backend.url) as one, open_store(backend.url) as two:
            async with one.exclusive():
                with pytest.raises(StoreError, match="another writer"):
                    async with two.exclusive(timeout=0.2):
                        pass
            async with two.exclusive(timeout=5):
                await two.create_item("route", "users", ROUTE)
            async with one.exclusive(timeout=5):  # released on exit, also after an error
                assert await one.revision() == 1

    @async_test
    async def test_exclusive_serialises_read_check_write_across_instances(self, backend):
        # each writer reads the revision, yields, and writes only if nothing changed meanwhile:
        # without the lock both would see revision 0 and one of the checks would fail
        seen: list[tuple[str, int, int]] = []

        async def writer(store: Any, name: str) -> None:
            async with store.exclusive(timeout=10):
                before = await store.revision()
                await asyncio.sleep(0.05)
                await store.create_item("upstream", name, UPSTREAM)
                seen.append((name, before, await store.revision()))

        async with open_store(backend.url) as one, open_store(backend.url) as two:
            await asyncio.gather(writer(one, "a"), writer(two, "b"), writer(one, "c"))
        assert sorted(after - before for _, before, after in seen) == [1, 1, 1]
        assert sorted(before for _, before, _ in seen) == [0, 1, 2]

    @async_test
    async def test_users_are_found_and_unique_whatever_the_case(self, backend):
        async with open_store(backend.url) as store:
            await store.create_user("admin", "hash-1", "admin")
            for other in ("Admin", "ADMIN"):
                with pytest.raises(AlreadyExists):
                    await store.create_user(other, "hash-2", "viewer")
            found = await store.get_user("ADMIN")
            assert found is not None and found["username"] == "admin"
            await store.create_user("root", "hash-0", "admin")
            await store.set_user("aDmIn", "hash-3", "editor")  # updates the one user
            assert await store.count_users() == 2
            found = await store.get_user("admin")
            assert (found["username"], found["password_hash"], found["role"]) == (
                "admin",
                "hash-3",
                "editor",
            )

    @async_test
    async def test_users_concurrent_creates_of_two_spellings_make_one_user(self, backend):
        async with open_store(backend.url) as one, open_store(backend.url) as two:
            results = await asyncio.gather(
                *(
                    store.create_user(name, "hash", "viewer")
                    for store, name in ((one, "Ops"), (two, "ops"), (one, "OPS"), (two, "oPs"))
                ),
                return_exceptions=True,
            )
            assert sum(r is None for r in results) == 1
            assert all(isinstance(r, AlreadyExists) for r in results if r is not None)
            assert await one.count_users() == 1

    @async_test
    async def test_list_versions_names_every_item_with_its_version(self, backend):
        async with open_store(backend.url) as store:
            assert await store.list_versions("route") == {}
            await store.create_item("route", "users", ROUTE)
            await store.create_item("upstream", "app", UPSTREAM)
            await store.replace_item("route", "users", {**ROUTE, "upstream": "other"})
            assert await store.list_versions("route") == {"users": 2}
            assert await store.list_versions("upstream") == {"app": 1}
            with pytest.raises(ValueError):
                await store.list_versions("user")

    # -- admin hardening: token versions, the last admin, the audit log, login attempts -----

    @async_test
    async def test_user_token_version_moves_with_password_and_role_changes(self, backend):
        async with open_store(backend.url) as store:
            await store.create_user("root", "h0", "admin")
            await store.create_user("ops", "h1", "viewer")
            await store.set_user("ops", "h1", "viewer")  # nothing changed: no bump
            assert (await store.get_user("ops"))["token_version"] == 0
            await store.set_user("ops", "h2", "viewer")
            assert (await store.get_user("ops"))["token_version"] == 1
            await store.set_user("OPS", "h2", "editor")
            assert (await store.get_user("ops"))["token_version"] == 2
            assert await store.bump_token_version("Ops") == 3
            assert (await store.get_user("ops"))["token_version"] == 3
            with pytest.raises(NotFound):
                await store.bump_token_version("nobody")
            listed = await store.list_users()
            assert [u["username"] for u in listed] == ["ops", "root"]
            assert all("password_hash" not in u for u in listed)

    @async_test
    async def test_last_admin_cannot_be_demoted_or_deleted(self, backend):
        async with open_store(backend.url) as store:
            await store.create_user("root", "h0", "admin")
            await store.create_user("ops", "h1", "viewer")
            with pytest.raises(LastAdmin):
                await store.set_user("root", "h0", "editor")
            with pytest.raises(LastAdmin):
                await store.delete_user("ROOT")
            assert (await store.get_user("root"))["role"] == "admin"
            await store.delete_user("ops")
            assert await store.get_user("ops") is None
            with pytest.raises(NotFound):
                await store.delete_user("ops")
            await store.create_user("second", "h2", "admin")
            await store.delete_user("root")  # another admin is left
            assert [u["username"] for u in await store.list_users()] == ["second"]

    @async_test
    async def test_concurrent_demotions_of_the_last_two_admins_leave_one(self, backend):
        async with open_store(backend.url) as one, open_store(backend.url) as two:
            await one.create_user("a", "ha", "admin")
            await one.create_user("b", "hb", "admin")
            for _ in range(3):
                results = await asyncio.gather(
                    one.set_user("a", "ha", "viewer"),
                    two.delete_user("b"),
                    return_exceptions=True,
                )
                assert sum(r is None for r in results) == 1, results
                assert all(isinstance(r, LastAdmin) for r in results if r is not None)
                admins = [u for u in await one.list_users() if u["role"] == "admin"]
                assert len(admins) == 1
                # make two admins again for the next round
                if await one.get_user("b") is None:
                    await one.create_user("b", "hb", "admin")
                await one.set_user("a", "ha", "admin")
                await one.set_user("b", "hb", "admin")

    @async_test
    async def test_user_changes_write_their_audit_record_in_the_same_transaction(self, backend):
        async with open_store(backend.url) as store:
            record = AuditRecord(time.time(), "root", "created", "user", "ops", None, {"a": 1})
            await store.create_user("ops", "h1", "viewer", audit=record)
            with pytest.raises(AlreadyExists):
                await store.create_user("ops", "h1", "viewer", audit=record)
            with pytest.raises(NotFound):
                await store.delete_user("ghost", audit=record)
            items, total = await store.query_audit(AuditQuery())
            assert total == 1 and items[0].name == "ops" and items[0].after == {"a": 1}

    @async_test
    async def test_audit_records_newest_first_filtered_and_paged(self, backend):
        async with open_store(backend.url) as store:
            base = time.time() - 100
            for i in range(12):
                await store.record_audit(
                    AuditRecord(
                        base + i,
                        "alice" if i % 2 else "bob",
                        "replaced",
                        "route" if i % 3 else "upstream",
                        f"item{i % 4}",
                        {"v": i},
                        {"v": i + 1, "nested": ["x", {"y": None}]},
                        "127.0.0.1",
                        f"req{i}",
                    )
                )
            items, total = await store.query_audit(AuditQuery(limit=5))
            assert total == 12 and [r.request_id for r in items] == [
                f"req{i}" for i in range(11, 6, -1)
            ]
            assert items[0].id is not None and items[0].after["nested"] == ["x", {"y": None}]
            items, total = await store.query_audit(AuditQuery(limit=5, offset=10))
            assert [r.request_id for r in items] == ["req1", "req0"]
            items, total = await store.query_audit(AuditQuery(actor="alice", kind="route"))
            assert total == sum(1 for i in range(12) if i % 2 and i % 3)
            assert all(r.actor == "alice" and r.kind == "route" for r in items)
            items, total = await store.query_audit(AuditQuery(name="item1", since=base + 5))
            assert [r.request_id for r in items] == ["req9", "req5"]
            with pytest.raises(ValueError):
                AuditQuery(limit=0)

    @async_test
    async def test_login_attempts_are_counted_per_key_across_stores(self, backend):
        async with open_store(backend.url) as one, open_store(backend.url) as two:
            limits = [("user:alice", 3), ("ip:10.0.0.1", 5)]
            for store in (one, two, one):
                assert await store.take_login_attempt(limits, 60.0) is None
            wait = await two.take_login_attempt(limits, 60.0)
            assert wait is not None and 0 < wait <= 60.0
            # the address has 2 attempts left: another user from it is counted
            assert await one.take_login_attempt([("user:bob", 3), ("ip:10.0.0.1", 5)], 60) is None
            await one.login_succeeded(["user:alice"], ["ip:10.0.0.1"])
            assert await two.take_login_attempt(limits, 60.0) is None
            # a short window ends, and the count with it
            assert await one.take_login_attempt([("user:carol", 1)], 0.2) is None
            assert await one.take_login_attempt([("user:carol", 1)], 0.2) is not None
            await asyncio.sleep(0.3)
            assert await one.take_login_attempt([("user:carol", 1)], 0.2) is None

    @async_test
    async def test_concurrent_login_attempts_never_exceed_the_limit(self, backend):
        async with open_store(backend.url) as one, open_store(backend.url) as two:
            limits = [("user:x", 4), ("ip:1", 100)]
            results = await asyncio.gather(
                *((one, two)[i % 2].take_login_attempt(limits, 60.0) for i in range(12))
            )
            assert sum(r is None for r in results) == 4
