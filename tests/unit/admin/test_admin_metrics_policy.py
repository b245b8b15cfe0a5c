"""The metrics policy through the admin API: its keys validated like a file's, and a metric
name is declared once across the file's and the stored policies."""

from __future__ import annotations

from admin_helpers import SECRET, admin, run

YAML = f"""
upstreams:
  users: {{targets: ["127.0.0.1:9001"]}}
policies:
  per_tier: {{type: metrics, counters: [{{name: api_requests_total, labels: {{t: "ctx:tier"}}}}]}}
routes:
  - {{name: file-route, match: {{path: /file}}, upstream: users, policies: [per_tier]}}
admin:
  bind: "127.0.0.1:0"
  auth: {{jwt_secret: "{SECRET}", jwt_expiry: 1h}}
"""


def test_admin_metrics_policy_is_validated_and_names_stay_unique(tmp_path):
    async def scenario():
        async with admin(tmp_path, YAML) as api:
            bad = {"name": "p", "type": "metrics", "counters": [{"name": "isekai_mine"}]}
            reply = await api.post("/api/policies", bad)
            assert reply.status == 422, reply
            assert reply.error["path"] == "policy.counters[0].name"
            assert (
                "metric names starting with 'isekai_' are the gateway's own"
                in reply.body["message"]
            )
            twice = {
                "name": "latency",
                "type": "metrics",
                "histograms": [{"name": "api_seconds"}, {"name": "api_requests"}],
            }
            reply = await api.post("/api/policies", twice)
            assert reply.status == 422, reply
            assert reply.error["path"] == "policy.histograms[1].name"
            assert reply.body["message"].endswith(
                "metric 'api_requests' is already declared at policies.per_tier.counters[0]"
            )
            good = {**twice, "histograms": [{"name": "api_seconds", "buckets": [0.1, 1]}]}
            reply = await api.post("/api/policies", good)
            assert reply.status == 201, reply
            options = api.applied[-1].policies["latency"].options
            assert options.histograms[0].buckets == (0.1, 1.0)
            route = {
                "name": "api",
                "match": {"path": "/api"},
                "upstream": "users",
                "policies": [{"type": "metrics", "counters": [{"name": "api_seconds_total"}]}],
            }
            reply = await api.post("/api/routes", route)
            assert reply.status == 422, reply
            assert reply.error["path"] == "route.policies[0].counters[0].name"
            assert reply.body["message"].endswith(
                "metric 'api_seconds' is already declared at policies.latency.histograms[0]"
            )

    run(scenario())
