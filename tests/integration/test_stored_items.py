"""A stored item that no longer validates never stops the gateway: it is left out, logged with
its name and reason, shown in /api/status, and can be fixed or deleted through the API."""

from __future__ import annotations

import asyncio

import pytest

from isekai.store import open_store
from tests.integration.test_control_plane import Admin, gateway_yaml, get, start
from tests.support.gateway import wait_for

GOOD = {"name": "good", "match": {"path": "/good"}, "respond": {"body": "good"}}
# refers to an upstream that does not exist: stored by hand, as an older version or a file
# change could leave it
BAD = {"name": "bad", "match": {"path": "/bad"}, "upstream": "gone"}


async def _seed(url: str) -> None:
    async with open_store(url) as store:
        await store.create_item("route", "bad", BAD)
        await store.create_item("route", "good", GOOD)


@pytest.mark.parametrize("workers", [1, 2])
def test_stored_items_a_bad_one_is_left_out_and_the_rest_serves(tmp_path, upstream, workers):
    url = f"sqlite:///{tmp_path / 'store.db'}"
    asyncio.run(_seed(url))
    gw = start(tmp_path, gateway_yaml(upstream.port, url, workers))
    try:
        admin = Admin(gw)
        assert get(gw.port, "/file") == (200, b"from-file")
        assert wait_for(lambda: get(gw.port, "/good") == (200, b"good"), timeout=5)
        assert get(gw.port, "/bad")[0] == 404
        assert gw.wait_for_log(r"stored route 'bad' left out: .*no upstream named 'gone'")

        status, body = admin.call("GET", "/api/status")
        assert status == 200
        assert body["data"]["skipped_items"] == 1
        (skipped,) = body["data"]["skipped"]
        assert skipped["kind"] == "route" and skipped["name"] == "bad"
        assert "no upstream named 'gone'" in skipped["reason"]

        # other changes still apply while the bad item is stored
        new = {"name": "new", "match": {"path": "/new"}, "respond": {"body": "new"}}
        assert admin.call("POST", "/api/routes", new)[0] == 201
        assert wait_for(lambda: get(gw.port, "/new") == (200, b"new"), timeout=5)

        # fixing it through the API puts it back
        fixed = {**BAD, "upstream": "app"}
        status, body = admin.call("PUT", "/api/routes/bad", fixed)
        assert status == 200, body
        assert wait_for(lambda: get(gw.port, "/bad")[0] == 200, timeout=5)
        assert admin.call("GET", "/api/status")[1]["data"]["skipped_items"] == 0
    finally:
        gw.stop()
