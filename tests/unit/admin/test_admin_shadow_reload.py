"""``admin.api_routes.may_shadow_yaml: false`` and a file that changes: a stored route that
takes requests from a route the new file adds stays (documented: the check runs on API
changes), but the load names it in a warning, so the operator learns the file route does
not get all its requests."""

from __future__ import annotations

import logging

from isekai.config.loader import load_config_text
from tests.unit.admin.admin_helpers import BASE_YAML, admin, run

API_ROUTE = {"name": "special", "match": {"path": "/orders/special"}, "upstream": "users"}
WITH_ORDERS = BASE_YAML.replace(
    "routes:\n",
    "routes:\n  - name: orders\n    match: {path: /orders/*}\n    upstream: users\n",
)


async def _reload(api, text: str):
    async with api.ctx.lock, api.ctx.store.exclusive():
        return await api.ctx.reload(load_config_text(text, "gw.yaml"), text)


def test_a_stored_route_shadowing_a_new_file_route_is_named_at_reload(tmp_path, caplog):
    async def scenario():
        async with admin(tmp_path, role="editor") as api:
            reply = await api.post("/api/routes", API_ROUTE)
            assert reply.status == 201, reply  # no file route has /orders/* yet
            with caplog.at_level(logging.WARNING, logger="isekai.admin"):
                merged = await _reload(api, WITH_ORDERS)
            assert {"orders", "special"} <= {route.name for route in merged.routes}
            warned = [r.getMessage() for r in caplog.records if "may_shadow_yaml" in r.getMessage()]
            assert len(warned) == 1
            assert "'special'" in warned[0] and "'orders'" in warned[0]
            # the API still refuses a new route of the same kind
            reply = await api.post(
                "/api/routes", {**API_ROUTE, "name": "more", "match": {"path": "/orders/more"}}
            )
            assert reply.status == 409 and reply.error["route"] == "orders"

    run(scenario())


def test_may_shadow_yaml_true_warns_of_nothing(tmp_path, caplog):
    allowing = BASE_YAML + "  api_routes: {may_shadow_yaml: true}\n"
    new_text = WITH_ORDERS + "  api_routes: {may_shadow_yaml: true}\n"

    async def scenario():
        async with admin(tmp_path, allowing, role="editor") as api:
            assert (await api.post("/api/routes", API_ROUTE)).status == 201
            with caplog.at_level(logging.WARNING, logger="isekai.admin"):
                merged = await _reload(api, new_text)
            assert "special" in [route.name for route in merged.routes]
            assert not [r for r in caplog.records if "may_shadow_yaml" in r.getMessage()]

    run(scenario())
