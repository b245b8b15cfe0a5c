"""Policies through the admin API: sources, validation, ETags, references from routes, roles,
and the running config (load, other writers' changes)."""

from __future__ import annotations

import pytest
from admin_helpers import ROUTE, SECRET, admin, run

from isekai.config.policies import CorsConfig, PolicySpec

POLICY_YAML = f"""
upstreams:
  users: {{targets: ["127.0.0.1:9001"]}}
policies:
  tag: {{type: headers, request: {{set: {{X-Gateway: isekai}}}}}}
listeners: [{{name: public, bind: "127.0.0.1:0", policies: [tag]}}]
routes:
  - name: file-route
    match: {{path: /file}}
    upstream: users
    policies: [tag]
admin:
  bind: "127.0.0.1:0"
  auth: {{jwt_secret: "{SECRET}", jwt_expiry: 1h}}
"""
CORS = {"name": "web_cors", "type": "cors", "origins": ["https://app.example.com"]}
SPEC = {key: value for key, value in CORS.items() if key != "name"}


def test_policies_crud_with_etags(tmp_path):
    async def scenario():
        async with admin(tmp_path, POLICY_YAML) as api:
            reply = await api.post("/api/policies", CORS)
            assert reply.status == 201, reply
            assert reply.headers["ETag"] == '"1"'
            assert reply.headers["Location"] == "/api/policies/web_cors"
            assert reply.data["spec"] == SPEC and reply.data["source"] == "api"
            assert (await api.ctx.store.get_item("policy", "web_cors")).doc == SPEC
            spec = api.applied[-1].policies["web_cors"]
            assert spec == PolicySpec("cors", CorsConfig(("https://app.example.com",)), "web_cors")
            listed = {item["name"]: item for item in (await api.get("/api/policies")).data}
            assert listed["tag"]["source"] == "file" and listed["tag"]["version"] is None
            assert listed["tag"]["spec"] == {
                "type": "headers",
                "request": {"set": {"X-Gateway": "isekai"}},
            }
            assert listed["web_cors"]["version"] == 1
            reply = await api.get("/api/policies/web_cors")
            assert reply.status == 200 and reply.headers["ETag"] == '"1"'
            assert "ETag" not in (await api.get("/api/policies/tag")).headers
            assert (await api.get("/api/policies/nope")).status == 404

            changed = {**SPEC, "credentials": True, "max_age": "10m"}
            reply = await api.put("/api/policies/web_cors", changed, headers={"If-Match": '"1"'})
            assert reply.status == 200 and reply.headers["ETag"] == '"2"'
            options = api.applied[-1].policies["web_cors"].options
            assert options.credentials is True and options.max_age == 600.0
            reply = await api.put("/api/policies/web_cors", SPEC, headers={"If-Match": '"1"'})
            assert reply.status == 412 and reply.error["current_version"] == 2
            reply = await api.patch("/api/policies/web_cors", {"max_age": None, "deadline": "2s"})
            assert reply.status == 200 and reply.headers["ETag"] == '"3"'
            assert reply.data["spec"] == {**SPEC, "credentials": True, "deadline": "2s"}
            assert api.applied[-1].policies["web_cors"].deadline == 2.0
            reply = await api.delete("/api/policies/web_cors", headers={"If-Match": '"3"'})
            assert reply.status == 200
            assert reply.body == {"success": True, "message": "policy 'web_cors' deleted"}
            assert list(api.applied[-1].policies) == ["tag"]
            assert (await api.delete("/api/policies/web_cors")).status == 404
            assert (await api.get("/api/status")).data["policies"] == 1

    run(scenario())


@pytest.mark.parametrize("method", ["PUT", "PATCH", "DELETE"])
def test_policies_file_policy_is_read_only(tmp_path, method):
    async def scenario():
        async with admin(tmp_path, POLICY_YAML) as api:
            body = {"type": "cors", "origins": ["*"]}
            reply = await api.request(method, "/api/policies/tag", json_body=body)
            assert reply.status == 409
            assert reply.error["code"] == "read_only"
            assert api.applied == []

    run(scenario())


def test_policies_create_with_a_file_name_or_twice_is_409(tmp_path):
    async def scenario():
        async with admin(tmp_path, POLICY_YAML) as api:
            reply = await api.post("/api/policies", {**CORS, "name": "tag"})
            assert reply.status == 409 and reply.error["code"] == "conflict"
            assert (await api.post("/api/policies", CORS)).status == 201
            reply = await api.post("/api/policies", CORS)
            assert reply.status == 409 and reply.error["code"] == "already_exists"

    run(scenario())


INVALID_POLICIES = {
    "unknown type": (
        {"name": "p", "type": "nope"},
        "policy.type",
        "unknown policy type 'nope' (known types: adaptive_concurrency, api_key, "
        "concurrency_limit, cors, fault, ",
    ),
    "missing type": ({"name": "p", "origins": ["*"]}, "policy.type", "missing required key"),
    "unknown key": (
        {**CORS, "origin": ["*"]},
        "policy.origin",
        "unknown key 'origin' (did you mean 'origins'?); allowed keys: type, deadline, origins",
    ),
    "bad origin": (
        {**CORS, "origins": ["https://a.example", "https://b.example/path"]},
        "policy.origins[1]",
        "an origin has no path",
    ),
    "star with credentials": (
        {**CORS, "origins": ["*"], "credentials": True},
        "policy.origins",
        "'*' cannot be used with credentials: true",
    ),
    "bad deadline": ({**CORS, "deadline": 0}, "policy.deadline", "must be greater than 0"),
    "managed header": (
        {"name": "p", "type": "headers", "request": {"set": {"X-Forwarded-For": "x"}}},
        "policy.request.set.X-Forwarded-For",
        "X-Forwarded-For is managed by the gateway",
    ),
    "bad placeholder": (
        {"name": "p", "type": "headers", "response": {"add": {"X-Id": "${params.id}"}}},
        "policy.response.add.X-Id",
        "unknown placeholder '${params.id}'",
    ),
    "bad cidr": (
        {"name": "p", "type": "ip_filter", "deny": ["10.0.0.0/33"]},
        "policy.deny[0]",
        "bad CIDR",
    ),
    "no fault": ({"name": "p", "type": "fault"}, "policy", "needs 'abort' or 'delay'"),
    "bad status": (
        {"name": "p", "type": "fault", "abort": {"status": 99}},
        "policy.abort.status",
        "must be from 200 to 599, got 99",
    ),
    "bad name": ({**CORS, "name": "no spaces"}, "policy", "bad policy name"),
}


@pytest.mark.parametrize("case", INVALID_POLICIES, ids=list(INVALID_POLICIES))
def test_policies_create_invalid_is_422_with_the_path(tmp_path, case):
    body, path, message = INVALID_POLICIES[case]

    async def scenario():
        async with admin(tmp_path, POLICY_YAML) as api:
            reply = await api.post("/api/policies", body)
            assert reply.status == 422, reply
            assert reply.error["code"] == "invalid"
            assert reply.error["path"] == path
            assert message in reply.body["message"]
            assert await api.ctx.store.list_items("policy") == []
            assert api.applied == []

    run(scenario())


def test_policies_json_values_are_literal(tmp_path, monkeypatch):
    monkeypatch.setenv("ISEKAI_TEST_SECRET", "hunter2")

    async def scenario():
        async with admin(tmp_path, POLICY_YAML) as api:
            edits = {"set": {"X-A": "${ISEKAI_TEST_SECRET}", "X-Client": "${client_ip}"}}
            body = {"name": "h", "type": "headers", "request": edits}
            assert (await api.post("/api/policies", body)).status == 201
            request = api.applied[-1].policies["h"].options.request
            assert request.set == (("X-A", "${ISEKAI_TEST_SECRET}"), ("X-Client", "${client_ip}"))

    run(scenario())


def test_policies_routes_refer_to_them_and_a_used_policy_cannot_be_deleted(tmp_path):
    async def scenario():
        async with admin(tmp_path, POLICY_YAML) as api:
            reply = await api.post("/api/routes", {**ROUTE, "policies": ["tag", "web_cors"]})
            assert reply.status == 422
            assert reply.error["path"] == "route.policies[1]"
            assert reply.error["config_path"] == "routes[1].policies[1]"
            assert "no policy named 'web_cors' (policies: tag)" in reply.body["message"]
            assert (await api.post("/api/policies", CORS)).status == 201
            inline = {"type": "fault", "abort": {"status": 503, "percent": 1.5}}
            body = {**ROUTE, "policies": ["web_cors", inline], "preserve_host": True}
            reply = await api.post("/api/routes", body)
            assert reply.status == 201, reply
            route = api.applied[-1].routes[-1]
            assert route.policies[0] == "web_cors" and route.preserve_host is True
            assert route.policies[1].type == "fault" and route.policies[1].name is None
            assert route.policies[1].options.abort.percent == 1.5

            reply = await api.delete("/api/policies/web_cors")
            assert reply.status == 422
            assert reply.error["item"] == {"kind": "route", "name": "api-route", "source": "api"}
            assert reply.error["path"] == "routes[1].policies[0]"
            assert "no policy named 'web_cors' (policies: tag)" in reply.body["message"]
            assert await api.ctx.store.get_item("policy", "web_cors") is not None

            reply = await api.patch("/api/routes/api-route", {"policies": [{"type": "nope"}]})
            assert reply.status == 422 and reply.error["path"] == "route.policies[0].type"
            assert (await api.patch("/api/routes/api-route", {"policies": None})).status == 200
            assert (await api.delete("/api/policies/web_cors")).status == 200

    run(scenario())


def test_policies_roles(tmp_path):
    async def scenario():
        async with admin(tmp_path, POLICY_YAML) as api:
            viewer = api.as_role("viewer")
            assert (await viewer.get("/api/policies")).status == 200
            assert (await viewer.get("/api/policies/tag")).status == 200
            assert (await viewer.post("/api/policies", CORS)).status == 403
            assert (await api.as_role(None).get("/api/policies")).status == 401
            editor = api.as_role("editor")
            assert (await editor.post("/api/policies", CORS)).status == 201
            assert (await viewer.patch("/api/policies/web_cors", {"max_age": 5})).status == 403
            assert (await viewer.delete("/api/policies/web_cors")).status == 403
            assert (await editor.delete("/api/policies/web_cors")).status == 200

    run(scenario())


def test_policies_stored_ones_are_loaded_and_bad_ones_left_out_with_their_routes(tmp_path):
    async def scenario():
        async with admin(tmp_path, POLICY_YAML) as api:
            store = api.ctx.store
            await store.create_item("policy", "good", SPEC)
            await store.create_item("policy", "gone", {"type": "uninstalled_plugin"})
            await store.create_item("route", "uses-good", {**ROUTE, "name": "uses-good"})
            await store.replace_item(
                "route", "uses-good", {**ROUTE, "name": "uses-good", "policies": ["good"]}
            )
            bad_route = {"name": "uses-gone", "match": {"path": "/gone"}, "respond": {}}
            await store.create_item("route", "uses-gone", {**bad_route, "policies": ["gone"]})
            config = await api.ctx.load()
            assert list(config.policies) == ["tag", "good"]
            assert [r.name for r in config.routes] == ["file-route", "uses-good"]
            skipped = {(item.kind, item.name): item.reason for item in api.ctx.skipped}
            assert set(skipped) == {("policy", "gone"), ("route", "uses-gone")}
            assert "unknown policy type 'uninstalled_plugin'" in skipped["policy", "gone"]
            assert "no policy named 'gone'" in skipped["route", "uses-gone"]

    run(scenario())


def test_policies_other_writers_changes_are_applied_in_order(tmp_path):
    async def scenario():
        async with admin(tmp_path, POLICY_YAML) as api:
            store, ctx = api.ctx.store, api.ctx
            # another gateway stores a policy and a route using it
            await store.create_item("route", "r", {**ROUTE, "name": "r", "policies": ["p"]})
            await store.create_item("policy", "p", SPEC)
            async with ctx.lock, store.exclusive():
                changes = await ctx.catch_up()
            assert [(c.kind, c.name) for c in changes] == [("policy", "p"), ("route", "r")]
            assert ctx.current.routes[-1].policies == ("p",)
            assert ctx.current.policies["p"].name == "p"
            # ... then deletes both: the route goes first
            await store.delete_item("policy", "p")
            await store.delete_item("route", "r")
            async with ctx.lock, store.exclusive():
                changes = await ctx.catch_up()
            assert [(c.kind, c.name, c.item) for c in changes] == [
                ("route", "r", None),
                ("policy", "p", None),
            ]
            assert list(ctx.current.policies) == ["tag"]
            assert await ctx.stored_policies() == {}

    run(scenario())
