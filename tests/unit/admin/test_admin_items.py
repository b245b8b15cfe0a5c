"""Routes and upstreams through the admin API: sources, validation, ETags, merge patch."""

from __future__ import annotations

import asyncio

import pytest
from admin_helpers import ROUTE, SECRET, UPSTREAM, admin, run

from isekai.admin.items import merge_patch, parse_if_match


def test_routes_list_shows_file_routes_read_only_and_api_routes(tmp_path):
    async def scenario():
        async with admin(tmp_path) as api:
            assert (await api.post("/api/routes", ROUTE)).status == 201
            reply = await api.get("/api/routes")
            assert reply.status == 200
            assert reply.body["success"] is True
            by_name = {item["name"]: item for item in reply.data}
            assert by_name["file-route"]["source"] == "file"
            assert by_name["file-route"]["version"] is None
            assert by_name["file-route"]["spec"] == {
                "name": "file-route",
                "match": {"path": "/file"},
                "upstream": "users",
            }
            assert by_name["api-route"]["source"] == "api"
            assert by_name["api-route"]["version"] == 1
            assert by_name["api-route"]["spec"] == ROUTE

    run(scenario())


def test_routes_create_stores_applies_and_sets_etag_and_location(tmp_path):
    async def scenario():
        async with admin(tmp_path) as api:
            reply = await api.post("/api/routes", ROUTE)
            assert reply.status == 201
            assert reply.headers["ETag"] == '"1"'
            assert reply.headers["Location"] == "/api/routes/api-route"
            assert reply.data["created_at"].endswith("Z")
            assert [r.name for r in api.applied[-1].routes] == ["file-route", "ping", "api-route"]
            assert api.ctx.current is api.applied[-1]
            stored = await api.ctx.store.get_item("route", "api-route")
            assert stored.doc == ROUTE
            reply = await api.get("/api/routes/api-route")
            assert reply.status == 200
            assert reply.headers["ETag"] == '"1"'
            assert reply.data["spec"] == ROUTE

    run(scenario())


def test_routes_get_file_route_has_no_etag_and_unknown_is_404(tmp_path):
    async def scenario():
        async with admin(tmp_path) as api:
            reply = await api.get("/api/routes/ping")
            assert reply.status == 200
            assert reply.data["source"] == "file"
            assert "ETag" not in reply.headers
            reply = await api.get("/api/routes/nope")
            assert reply.status == 404
            assert reply.body["success"] is False
            assert reply.error["code"] == "not_found"

    run(scenario())


@pytest.mark.parametrize("method", ["PUT", "PATCH", "DELETE"])
def test_routes_file_route_is_read_only(tmp_path, method):
    async def scenario():
        async with admin(tmp_path) as api:
            body = {"match": {"path": "/other"}, "upstream": "users"}
            reply = await api.request(method, "/api/routes/file-route", json_body=body)
            assert reply.status == 409
            assert reply.error["code"] == "read_only"
            assert api.applied == []

    run(scenario())


def test_routes_create_with_a_file_route_name_is_409(tmp_path):
    async def scenario():
        async with admin(tmp_path) as api:
            reply = await api.post("/api/routes", {**ROUTE, "name": "ping"})
            assert reply.status == 409
            assert reply.error["code"] == "conflict"
            assert await api.ctx.store.list_items("route") == []

    run(scenario())


def test_routes_create_twice_is_409(tmp_path):
    async def scenario():
        async with admin(tmp_path) as api:
            assert (await api.post("/api/routes", ROUTE)).status == 201
            reply = await api.post("/api/routes", ROUTE)
            assert reply.status == 409
            assert reply.error["code"] == "already_exists"

    run(scenario())


INVALID_ROUTES = {
    "missing upstream": (
        {**ROUTE, "upstream": "nope"},
        "route.upstream",
        "no upstream named 'nope' (upstreams: users)",
    ),
    "unknown key": (
        {**ROUTE, "upstraem": "users"},
        "route.upstraem",
        "unknown key 'upstraem' (did you mean 'upstream'?)",
    ),
    "bad duration": ({**ROUTE, "timeout": "10 seconds"}, "route.timeout", "bad duration"),
    "zero duration": ({**ROUTE, "timeout": 0}, "route.timeout", "must be greater than 0"),
    "bad path": ({**ROUTE, "match": {"path": "users"}}, "route.match.path", "must start with '/'"),
    "missing match": (
        {"name": "x", "upstream": "users"},
        "route.match",
        "missing required key 'match'",
    ),
    "both upstream and respond": (
        {**ROUTE, "respond": {"body": "x"}},
        "route",
        "a route has 'upstream' or 'respond', not both",
    ),
    "conflict with a file route": (
        {**ROUTE, "match": {"path": "/file"}},
        "route.match",
        "same host, path and methods as routes[0] ('file-route')",
    ),
    "bad name": ({**ROUTE, "name": "-x"}, "route.name", "bad route name '-x'"),
    "methods not a list": (
        {**ROUTE, "match": {"path": "/x", "methods": "GET"}},
        "route.match.methods",
        "expected a list of methods",
    ),
    "not an object": (["x"], "route", "not of type 'object'"),
    "header value outside Latin-1": (
        {"name": "x", "match": {"path": "/x"}, "respond": {"headers": {"X-A": "a\u2603b"}}},
        "route.respond.headers.X-A",
        "header values may only hold visible ASCII, Latin-1, spaces and tabs; '☃'",
    ),
    "header value with CR": (
        {"name": "x", "match": {"path": "/x"}, "respond": {"headers": {"X-A": "a\rb"}}},
        "route.respond.headers.X-A",
        "header values must not contain CR, LF or NUL",
    ),
    "bad header name": (
        {"name": "x", "match": {"path": "/x"}, "respond": {"headers": {"X A": "b"}}},
        "route.respond.headers.X A",
        "bad header name 'X A'",
    ),
    "path with a space": (
        {**ROUTE, "match": {"path": "/a b"}},
        "route.match.path",
        "characters not allowed in a URL path",
    ),
    "host not RFC 1123": (
        {**ROUTE, "match": {"path": "/x", "host": "a_b.example.com"}},
        "route.match.host",
        "not a valid host name (RFC 1123",
    ),
    "rewrite with a control character": (
        {**ROUTE, "match": {"path": "/x"}, "rewrite": "/a\tb"},
        "route.rewrite",
        "characters not allowed in a URL path",
    ),
    "rewrite smuggling a second request": (
        {
            **ROUTE,
            "match": {"path": "/x"},
            "rewrite": "/a HTTP/1.1\r\nHost: internal\r\nX-Injected: yes\r\n\r\nGET /admin-only",
        },
        "route.rewrite",
        "characters not allowed in a URL path",
    ),
    "rewrite with an unknown parameter": (
        {**ROUTE, "match": {"path": "/u/{id}"}, "rewrite": "/v/{name}"},
        "route.rewrite",
        "{name} is not a parameter of match.path",
    ),
}


@pytest.mark.parametrize("case", INVALID_ROUTES, ids=list(INVALID_ROUTES))
def test_routes_create_invalid_is_422_with_the_path_and_the_loader_message(tmp_path, case):
    body, path, message = INVALID_ROUTES[case]

    async def scenario():
        async with admin(tmp_path) as api:
            reply = await api.post("/api/routes", body)
            assert reply.status == 422, reply
            assert reply.error["code"] == "invalid"
            assert reply.error["path"] == path
            assert message in reply.body["message"]
            assert reply.body["message"].startswith(f"{path}: ")
            assert await api.ctx.store.list_items("route") == []
            assert api.applied == []

    run(scenario())


def test_routes_422_names_the_config_path_and_the_item(tmp_path):
    async def scenario():
        async with admin(tmp_path) as api:
            reply = await api.post("/api/routes", {**ROUTE, "upstream": "nope"})
            assert reply.error["config_path"] == "routes[2].upstream"
            assert reply.error["item"] == {"kind": "route", "name": "api-route", "source": "api"}

    run(scenario())


def test_routes_env_references_in_api_documents_are_not_substituted(tmp_path, monkeypatch):
    monkeypatch.setenv("ISEKAI_TEST_SECRET", "hunter2")

    async def scenario():
        async with admin(tmp_path) as api:
            body = {
                "name": "leak",
                "match": {"path": "/leak"},
                "respond": {"body": "${ISEKAI_TEST_SECRET}"},
            }
            reply = await api.post("/api/routes", body)
            assert reply.status == 201
            route = api.applied[-1].routes[-1]
            assert route.respond.body == b"${ISEKAI_TEST_SECRET}"

    run(scenario())


def test_routes_put_replaces_and_bumps_the_version(tmp_path):
    async def scenario():
        async with admin(tmp_path) as api:
            await api.post("/api/routes", ROUTE)
            body = {"match": {"path": "/renamed-path"}, "respond": {"status": 204}}
            reply = await api.put("/api/routes/api-route", body, headers={"If-Match": '"1"'})
            assert reply.status == 200, reply
            assert reply.headers["ETag"] == '"2"'
            assert reply.data["spec"] == {"name": "api-route", **body}
            assert api.applied[-1].routes[-1].respond.status == 204

    run(scenario())


def test_routes_put_with_a_stale_if_match_is_412_and_changes_nothing(tmp_path):
    async def scenario():
        async with admin(tmp_path) as api:
            await api.post("/api/routes", ROUTE)
            await api.put("/api/routes/api-route", ROUTE)
            applied = len(api.applied)
            reply = await api.put(
                "/api/routes/api-route", {**ROUTE, "timeout": "1s"}, headers={"If-Match": '"1"'}
            )
            assert reply.status == 412
            assert reply.error["code"] == "precondition_failed"
            assert reply.error["current_version"] == 2
            assert reply.headers["ETag"] == '"2"'
            assert len(api.applied) == applied
            assert (await api.ctx.store.get_item("route", "api-route")).doc == ROUTE

    run(scenario())


@pytest.mark.parametrize("if_match", ['W/"1"', '"x"', '"2", "3"', '""'])
def test_routes_if_match_compares_strongly(tmp_path, if_match):
    async def scenario():
        async with admin(tmp_path) as api:
            await api.post("/api/routes", ROUTE)
            reply = await api.put("/api/routes/api-route", ROUTE, headers={"If-Match": if_match})
            assert reply.status == 412

    run(scenario())


@pytest.mark.parametrize("if_match", ["*", '"1"', '"7", "1"'])
def test_routes_if_match_accepts_star_and_lists(tmp_path, if_match):
    async def scenario():
        async with admin(tmp_path) as api:
            await api.post("/api/routes", ROUTE)
            reply = await api.put("/api/routes/api-route", ROUTE, headers={"If-Match": if_match})
            assert reply.status == 200

    run(scenario())


def test_routes_concurrent_puts_with_the_same_if_match_exactly_one_wins(tmp_path):
    async def scenario():
        async with admin(tmp_path) as api:
            await api.post("/api/routes", ROUTE)
            bodies = [{**ROUTE, "timeout": f"{i + 1}s"} for i in range(8)]
            replies = await asyncio.gather(
                *(
                    api.put("/api/routes/api-route", body, headers={"If-Match": '"1"'})
                    for body in bodies
                )
            )
            statuses = sorted(reply.status for reply in replies)
            assert statuses == [200] + [412] * 7
            winner = next(r for r in replies if r.status == 200)
            stored = await api.ctx.store.get_item("route", "api-route")
            assert stored.version == 2
            assert stored.doc == winner.data["spec"]

    run(scenario())


def test_routes_concurrent_creates_that_conflict_store_only_one(tmp_path):
    async def scenario():
        async with admin(tmp_path) as api:
            bodies = [{**ROUTE, "name": f"r{i}", "match": {"path": "/same"}} for i in range(5)]
            replies = await asyncio.gather(*(api.post("/api/routes", b) for b in bodies))
            assert sorted(r.status for r in replies) == [201] + [422] * 4
            assert len(await api.ctx.store.list_items("route")) == 1

    run(scenario())


def test_routes_put_cannot_rename(tmp_path):
    async def scenario():
        async with admin(tmp_path) as api:
            await api.post("/api/routes", ROUTE)
            reply = await api.put("/api/routes/api-route", {**ROUTE, "name": "other"})
            assert reply.status == 422
            assert reply.error["path"] == "route.name"

    run(scenario())


def test_routes_put_unknown_is_404_and_invalid_is_422(tmp_path):
    async def scenario():
        async with admin(tmp_path) as api:
            assert (await api.put("/api/routes/nope", ROUTE | {"name": "nope"})).status == 404
            await api.post("/api/routes", ROUTE)
            reply = await api.put("/api/routes/api-route", {**ROUTE, "upstream": "nope"})
            assert reply.status == 422
            assert reply.error["path"] == "route.upstream"
            assert (await api.ctx.store.get_item("route", "api-route")).version == 1

    run(scenario())


def test_routes_patch_is_a_json_merge_patch(tmp_path):
    async def scenario():
        async with admin(tmp_path) as api:
            await api.post("/api/routes", {**ROUTE, "timeout": "5s"})
            patch = {"timeout": None, "match": {"methods": ["GET"]}, "websocket": True}
            reply = await api.request(
                "PATCH",
                "/api/routes/api-route",
                json_body=patch,
                headers={"Content-Type": "application/merge-patch+json", "If-Match": '"1"'},
            )
            assert reply.status == 200, reply
            assert reply.headers["ETag"] == '"2"'
            assert reply.data["spec"] == {
                "name": "api-route",
                "match": {"path": "/api-route", "methods": ["GET"]},
                "upstream": "users",
                "websocket": True,
            }
            route = api.applied[-1].routes[-1]
            assert route.timeout is None and route.websocket and route.match.methods == ("GET",)

    run(scenario())


def test_routes_patch_failures(tmp_path):
    async def scenario():
        async with admin(tmp_path) as api:
            await api.post("/api/routes", ROUTE)
            reply = await api.patch("/api/routes/api-route", {"upstream": "nope"})
            assert reply.status == 422 and reply.error["path"] == "route.upstream"
            reply = await api.patch("/api/routes/api-route", ["not", "an", "object"])
            assert reply.status == 422
            reply = await api.patch("/api/routes/api-route", {"name": "other"})
            assert reply.status == 422 and reply.error["path"] == "route.name"
            reply = await api.patch("/api/routes/api-route", {}, headers={"If-Match": '"9"'})
            assert reply.status == 412
            reply = await api.patch("/api/routes/nope", {})
            assert reply.status == 404
            reply = await api.request(
                "PATCH", "/api/routes/api-route", data="{}", headers={"Content-Type": "text/plain"}
            )
            assert reply.status == 415
            assert reply.headers["Accept-Patch"] == "application/merge-patch+json"
            assert (await api.ctx.store.get_item("route", "api-route")).version == 1

    run(scenario())


def test_routes_delete(tmp_path):
    async def scenario():
        async with admin(tmp_path) as api:
            await api.post("/api/routes", ROUTE)
            reply = await api.delete("/api/routes/api-route", headers={"If-Match": '"2"'})
            assert reply.status == 412
            reply = await api.delete("/api/routes/api-route", headers={"If-Match": '"1"'})
            assert reply.status == 200
            assert reply.body == {"success": True, "message": "route 'api-route' deleted"}
            assert [r.name for r in api.applied[-1].routes] == ["file-route", "ping"]
            assert (await api.get("/api/routes/api-route")).status == 404
            assert (await api.delete("/api/routes/api-route")).status == 404

    run(scenario())


def test_upstreams_crud(tmp_path):
    async def scenario():
        async with admin(tmp_path) as api:
            reply = await api.post("/api/upstreams", UPSTREAM)
            assert reply.status == 201, reply
            assert reply.data["spec"] == {"targets": ["127.0.0.1:9002"]}
            assert (await api.ctx.store.get_item("upstream", "orders")).doc == reply.data["spec"]
            assert "orders" in api.applied[-1].upstreams
            listed = {
                item["name"]: item["source"] for item in (await api.get("/api/upstreams")).data
            }
            assert listed == {"users": "file", "orders": "api"}
            reply = await api.put(
                "/api/upstreams/orders",
                {"targets": ["127.0.0.1:9003"], "connect_timeout": "2s"},
                headers={"If-Match": '"1"'},
            )
            assert reply.status == 200 and reply.headers["ETag"] == '"2"'
            assert api.applied[-1].upstreams["orders"].connect_timeout == 2.0
            reply = await api.patch("/api/upstreams/orders", {"connect_timeout": None})
            assert reply.status == 200
            assert reply.data["spec"] == {"targets": ["127.0.0.1:9003"]}
            assert (await api.delete("/api/upstreams/orders")).status == 200
            assert "orders" not in api.applied[-1].upstreams

    run(scenario())


def test_upstreams_validation_and_conflicts(tmp_path):
    async def scenario():
        async with admin(tmp_path) as api:
            reply = await api.post("/api/upstreams", {"name": "users", "targets": ["a:1"]})
            assert reply.status == 409
            reply = await api.post("/api/upstreams", {"targets": ["a:1"]})
            assert reply.status == 422 and reply.error["path"] == "upstream.name"
            reply = await api.post("/api/upstreams", {"name": "x", "targets": ["a:99999"]})
            assert reply.status == 422
            assert reply.error["path"] == "upstream.targets[0]"
            assert "the port must be a number from 1 to 65535" in reply.body["message"]
            reply = await api.post("/api/upstreams", {"name": "x", "targets": []})
            assert reply.status == 422 and reply.error["path"] == "upstream.targets"
            reply = await api.post(
                "/api/upstreams",
                {
                    "name": "x",
                    "targets": ["a:1"],
                    "max_connections": 2,
                    "max_keepalive_connections": 5,
                },
            )
            assert reply.status == 422
            assert reply.error["path"] == "upstream.max_keepalive_connections"
            reply = await api.put("/api/upstreams/users", {"targets": ["a:1"]})
            assert reply.status == 409 and reply.error["code"] == "read_only"

    run(scenario())


def test_upstreams_delete_in_use_is_422_naming_the_route(tmp_path):
    async def scenario():
        async with admin(tmp_path) as api:
            await api.post("/api/upstreams", UPSTREAM)
            await api.post("/api/routes", {**ROUTE, "upstream": "orders"})
            reply = await api.delete("/api/upstreams/orders")
            assert reply.status == 422
            assert reply.error["item"] == {"kind": "route", "name": "api-route", "source": "api"}
            assert reply.error["path"] == "routes[2].upstream"
            assert "no upstream named 'orders'" in reply.body["message"]
            assert await api.ctx.store.get_item("upstream", "orders") is not None

    run(scenario())


def test_routes_a_route_may_use_an_api_upstream(tmp_path):
    async def scenario():
        async with admin(tmp_path) as api:
            await api.post("/api/upstreams", UPSTREAM)
            reply = await api.post("/api/routes", {**ROUTE, "upstream": "orders"})
            assert reply.status == 201
            assert api.applied[-1].routes[-1].upstream == "orders"

    run(scenario())


def test_routes_apply_failure_is_a_500_envelope(tmp_path):
    def boom(config):
        raise RuntimeError("workers unreachable")

    async def scenario():
        async with admin(tmp_path, apply=boom) as api:
            reply = await api.post("/api/routes", ROUTE)
            assert reply.status == 500
            assert reply.error["code"] == "apply_failed"
            assert "workers unreachable" in reply.body["message"]

    run(scenario())


def test_context_load_includes_stored_items_and_reload_takes_a_new_file(tmp_path):
    async def scenario():
        async with admin(tmp_path) as api:
            await api.post("/api/upstreams", UPSTREAM)
            await api.post("/api/routes", {**ROUTE, "upstream": "orders"})
            config = await api.ctx.load()
            assert [r.name for r in config.routes] == ["file-route", "ping", "api-route"]
            text = (
                "routes:\n  - {name: only, match: {path: /only}, respond: {}}\n"
                f"admin: {{auth: {{jwt_secret: {SECRET}}}}}\n"
            )
            from isekai.config.loader import load_config_text

            merged = await api.ctx.reload(load_config_text(text, "new.yaml"), text)
            assert [r.name for r in merged.routes] == ["only", "api-route"]
            assert (await api.get("/api/routes/ping")).status == 404
            assert (await api.get("/api/routes/only")).data["source"] == "file"

    run(scenario())


def test_merge_patch_follows_rfc_7396():
    # the examples of RFC 7396 appendix A
    cases = [
        ({"a": "b"}, {"a": "c"}, {"a": "c"}),
        ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
        ({"a": "b"}, {"a": None}, {}),
        ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
        ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
        ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
        ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
        ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
        (["a", "b"], ["c", "d"], ["c", "d"]),
        ({"a": "b"}, ["c"], ["c"]),
        ({"a": "foo"}, None, None),
        ({"a": "foo"}, "bar", "bar"),
        ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
        ([1, 2], {"a": "b", "c": None}, {"a": "b"}),
        ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
    ]
    for target, patch, expected in cases:
        assert merge_patch(target, patch) == expected


def test_parse_if_match():
    assert parse_if_match(None) is None
    assert parse_if_match(" * ") is None
    assert parse_if_match('"3"') == [3]
    assert parse_if_match('"3", "4"') == [3, 4]
    assert parse_if_match('W/"3"') == []
    for bad in ("3", '"3', '"3",', '*, "3"', "", '"a b"'):
        with pytest.raises(ValueError):
            parse_if_match(bad)


@pytest.mark.parametrize("if_match", ["3", '"3', "abc", ""])
def test_routes_malformed_if_match_is_400(tmp_path, if_match):
    async def scenario():
        async with admin(tmp_path) as api:
            await api.post("/api/routes", ROUTE)
            reply = await api.put("/api/routes/api-route", ROUTE, headers={"If-Match": if_match})
            assert reply.status == 400
            assert reply.error["code"] == "bad_request"

    run(scenario())
