"""A stored item that no longer validates never stops the gateway: it is left out, logged with
its name and reason, shown in /api/status, and can be fixed or deleted through the API."""

from __future__ import annotations

import asyncio
import http.client
import os
import signal

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


async def _seed_policy(url: str) -> None:
    async with open_store(url) as store:
        await store.create_item(
            "policy", "stamp", {"type": "headers", "response": {"set": {"X-Stamp": "stored"}}}
        )
        await store.create_item(
            "route",
            "stamped",
            {
                "name": "stamped",
                "match": {"path": "/stamped"},
                "respond": {"body": "s"},
                "policies": ["stamp"],
            },
        )


def _stamp(port: int) -> tuple[int, str | None]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/stamped")
        response = conn.getresponse()
        response.read()
        return response.status, response.getheader("x-stamp")
    finally:
        conn.close()


def test_stored_items_a_replaced_worker_gets_the_stored_policies(tmp_path, upstream):
    url = f"sqlite:///{tmp_path / 'store.db'}"
    asyncio.run(_seed_policy(url))
    gw = start(tmp_path, gateway_yaml(upstream.port, url, 2))
    try:
        assert wait_for(lambda: _stamp(gw.port) == (200, "stored"), timeout=5)
        before = gw.workers()
        os.kill(before[0], signal.SIGKILL)
        assert wait_for(
            lambda: len(gw.workers()) == 2 and before[0] not in gw.workers(), timeout=15
        )
        # new connections reach both workers (SO_REUSEPORT): every answer has the policy
        answers = {_stamp(gw.port) for _ in range(40)}
        assert answers == {(200, "stored")}
        assert not gw.wait_for_log(r"left out", timeout=0.5)
    finally:
        gw.stop()


def test_stored_items_never_override_the_files_items_of_another_gateway(tmp_path, upstream):
    # Gateway A's file defines policy `office`, upstream `app` and route `file-route`; B's file
    # does not. What B stores under those names must not replace A's read-only items.
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    base = gateway_yaml(upstream.port, url)
    guarded = base.replace(
        "routes:\n",
        "policies:\n  office: {type: ip_filter, deny: [127.0.0.0/8]}\nroutes:\n"
        "  - {name: secret, match: {path: /secret}, respond: {body: s}, policies: [office]}\n",
    )
    first = start(tmp_path, guarded, "a.yaml")
    second = start(
        tmp_path,
        base.replace(
            "  - {name: file-route, match: {path: /file}, respond: {body: from-file}}\n", ""
        ).replace("upstreams:\n  app:", "upstreams:\n  other:"),
        "b.yaml",
    )
    try:
        admin = Admin(second)
        assert get(first.port, "/secret")[0] == 403
        policy = {"name": "office", "type": "headers", "request": {"set": {"X-A": "1"}}}
        assert admin.call("POST", "/api/policies", policy)[0] == 201
        route = {"name": "file-route", "match": {"path": "/file"}, "respond": {"body": "b"}}
        assert admin.call("POST", "/api/routes", route)[0] == 201
        app = {"targets": ["127.0.0.1:1"]}
        assert admin.call("POST", "/api/upstreams", {"name": "app", **app})[0] == 201
        assert first.wait_for_log(r"stored policy 'office' left out: the config file defines")
        assert first.wait_for_log(r"stored route 'file-route' left out")
        assert first.wait_for_log(r"stored upstream 'app' left out")
        assert get(first.port, "/secret")[0] == 403
        assert get(first.port, "/file") == (200, b"from-file")
        status, body = Admin(first).call("GET", "/api/status")
        assert body["data"]["skipped_items"] == 3
    finally:
        first.stop()
        second.stop()
